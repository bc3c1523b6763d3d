"""Health-check latency while one client runs the heaviest things it can ask (issue 13).

    python -m benchmarks.loop_latency                        # 1,000,000 keys, ~3-6 min
    python -m benchmarks.loop_latency --keys 200000 --compare-rev b1c5fda

A fresh daemon (memory backend unless --backend leveldb) gets --keys keys, then, one at a
time, while a probe process sends a health Check every 10 ms:
- range:  a Range over every key (the reply is ~40 bytes a key);
- txn:    a read-only Txn of 128 count-only scans of every key, cut by --request-timeout;
- flood:  200 watch streams that never read on a prefix, then 3,000 puts to it.
Prints health p50/p99/max per scenario and what the heavy request got. The same clients as
tests/integration/test_loop_latency.py (tests/loopprobe.py), which runs this at 200k keys.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.servers import Target, clean_env, export_rev
from tests.loopprobe import result, spawn


def _client(mode: str, endpoint: str, *args: object) -> subprocess.Popen[str]:
    return spawn(mode, endpoint, *args, env=clean_env())


def _result(p: subprocess.Popen[str]) -> dict[str, Any]:
    return result(p)


def _pct(ms: list[float], q: float) -> float:
    return ms[min(len(ms) - 1, int(len(ms) * q))] if ms else float("nan")


def scenario(endpoint: str, name: str) -> dict[str, Any]:
    probe = _client("probe", endpoint, 0.01)
    assert probe.stdout is not None and probe.stdout.readline().strip() == "READY"
    staller = None
    try:
        if name == "range":
            got = _result(_client("range", endpoint, "big/", "big0"))
        elif name == "txn":
            got = _result(_client("txn", endpoint, 128))
        else:
            staller = _client("stall", endpoint, 200, "flood/")
            assert staller.stdout is not None and staller.stdout.readline().strip() == "READY"
            got = _result(_client("put", endpoint, 3000, "flood/"))
    finally:
        if staller is not None:
            staller.kill()
            staller.wait()
    probed = _result(probe)
    ms = sorted(probed["ms"])
    return {
        "heavy": {k: v for k, v in got.items() if k != "details"},
        "checks": len(ms),
        "failed": probed["failed"],
        "p50_ms": _pct(ms, 0.5),
        "p99_ms": _pct(ms, 0.99),
        "max_ms": ms[-1] if ms else float("nan"),
    }


def run(target: Target, keys: int) -> dict[str, Any]:
    target.start()
    try:
        loaded = _result(_client("load", target.endpoint, keys, "big/"))
        out: dict[str, Any] = {"load_s": loaded["s"]}
        for name in ("range", "txn", "flood"):
            out[name] = scenario(target.endpoint, name)
            print(f"  {target.name} {name}: {json.dumps(out[name])}", flush=True)
        return out
    finally:
        target.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--backend", default="memory", choices=("memory", "leveldb"))
    ap.add_argument("--request-timeout", type=float, default=10.0)
    ap.add_argument("--compare-rev", default="", help="also run metastore from this git revision")
    a = ap.parse_args()
    extra = ["--backend", a.backend, "--request-timeout", str(a.request_timeout)]
    with tempfile.TemporaryDirectory(prefix="loop-latency-") as tmp:
        work = Path(tmp)
        targets = [Target("metastore", "metastore", work, extra=extra)]
        if a.compare_rev:
            short = export_rev(a.compare_rev, work / "rev")
            targets.append(Target(f"metastore@{short}", "metastore", work, extra=extra, src=work / "rev"))
        results = {t.name: run(t, a.keys) for t in targets}
    print(f"\nhealth Check latency (ms) while one client runs each, {a.keys:,} keys, {a.backend}")
    for name, r in results.items():
        for s in ("range", "txn", "flood"):
            x = r[s]
            h = x["heavy"]
            print(
                f"  {name:22} {s:6} p50 {x['p50_ms']:7.1f}  p99 {x['p99_ms']:7.1f}  max {x['max_ms']:7.1f}  "
                f"checks {x['checks']:5} failed {x['failed']:3}  "
                f"heavy {h.get('code')} in {h.get('s', 0):.2f} s"
            )


if __name__ == "__main__":
    main()
