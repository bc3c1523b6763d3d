"""The scale phase (issue 18): N keys (default 1M) in etcd and metastore, every figure side by side.

    python -m benchmarks.run --scale [--scale-keys 1000000] [--targets etcd,metastore]

Each target gets a fresh server (fsync on, quota 8 GiB so etcd's 2 GiB default never stops a
load). The store is filled through the wire (8-byte keys, 256-byte values) by Puts at 256 in
flight, or with `--scale-fill N` by Txns of N puts at 8 in flight, and at each step every target
does the same thing before the next step starts:

1. N/100 keys: put@64 of new keys (the bulk-load rate while small).
2. N/10 keys: stop (SIGTERM), restart, time from spawn to the first answered Range.
3. N keys: RSS and disk; put@64 again (the rate at N, against step 1); restart; RSS again.
4. One Range over all N keys, then 4 at once: each one's time, the server's peak RSS above what
   it held before (VmHWM, reset through /proc/<pid>/clear_refs), Health Check latency every
   10 ms while they run.
5. Snapshot of the N-key store: save over the wire (`metastore snapshot save`, `etcdctl snapshot
   save`), verify (`metastore snapshot verify`, `etcdctl snapshot status`) and restore into a
   new data dir: time and the tool's peak RSS (getrusage of the child), the server's peak RSS
   while it streams.
6. Every key written again (N revisions of history), then put@64 (and get@4) for a baseline
   window, during a physical Compact of the N old revisions, and during a Defragment: p50, p99
   and the longest put and get, and how long each took.
7. 2N keys: RSS, disk, restart, RSS again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import procfs
from benchmarks.servers import Target, clean_env

QUOTA = str(8 << 30)
RESTART_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 300.0
FIGURES_AFTER_START_S = 2.0  # RSS after a restart is read this long after the first answer (and warm-up)

Log = Any  # (str) -> None


WARMED = "value cache warmed"  # metastore's log line once a start from its index checkpoint holds every value


def _count(log: Path, text: str) -> int:
    try:
        return log.read_text(errors="replace").count(text)
    except FileNotFoundError:
        return 0


def _warm_up(log: Path, before: int, timeout: float = 300.0) -> float:
    """Seconds until metastore logs that its values are held again after a start from the index
    checkpoint (0 after a scan, which holds them as it loads): RSS is read after that."""
    t0 = time.monotonic()
    text = log.read_text(errors="replace")
    last_load = text[text.rfind("store loaded from") :]
    if not last_load.startswith("store loaded from index checkpoint"):
        return 0.0
    while _count(log, WARMED) <= before and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return time.monotonic() - t0


def rss_mib(pid: int) -> float:
    return procfs.status_kib(pid, "VmRSS") / 1024


def reset_peak(pid: int) -> None:
    """Start VmHWM over from the current RSS (Linux: clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_mib(pid: int) -> float:
    return procfs.status_kib(pid, "VmHWM") / 1024


def run_tool(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 1800) -> dict[str, Any]:
    """Run a CLI to its end: wall seconds, its peak RSS (getrusage of the child), exit code."""
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read()  # the tools print little; reading to EOF waits for the end
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    res: dict[str, Any] = {
        "seconds": time.monotonic() - t0,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rc": proc.returncode,
    }
    if proc.returncode:
        res["output"] = out.decode(errors="replace")[-2000:]
    return res


class Scale:
    """One scale run over a set of started targets, step by step."""

    def __init__(
        self, client: Any, targets: list[Target], keys: int, s: Any, work: Path, log: Log, batch: int = 1
    ) -> None:
        self.client = client
        self.batch = batch  # keys per write while filling: 1 (Put) or a Txn of that many
        self.targets = targets
        self.n = keys
        self.s = s  # run.Settings: repeats, warm-up and window of the put@64 runs
        self.work = work
        self.log = log
        self.filled = {t.name: 0 for t in targets}
        self.res: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
        self.seq = 1

    def ask(self, cmd: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
        out: dict[str, Any] = self.client.ask(cmd, timeout)
        if "error" in out:
            raise RuntimeError(f"{cmd.get('op') or cmd.get('workload')}: {out['error']}")
        return out

    # ------------------------------------------------------------ steps
    def fill_to(self, t: Target, keys: int, *, again: bool = False) -> dict[str, Any]:
        start = 0 if again else self.filled[t.name]
        out = self.ask(
            {
                "op": "fill",
                "endpoint": t.endpoint,
                "start": start,
                "count": keys - start,
                "other_value": again,
                "batch": self.batch,
            }
        )
        if not again:
            self.filled[t.name] = keys
        what = "rewrote" if again else "filled to"
        self.log(f"  {t.name:12} {what} {keys:,} keys: {out['rate']:,.0f} keys/s")
        return out

    def put_rate(self, t: Target) -> dict[str, Any]:
        """put@64 of new keys: median rate and p99 over the repeats."""
        runs = []
        for _ in range(self.s.repeats):
            self.seq += 1
            out = self.ask(
                {
                    "workload": "put",
                    "concurrency": 64,
                    "endpoint": t.endpoint,
                    "server_pid": t.pid,
                    "warmup": self.s.warmup,
                    "duration": self.s.duration,
                    "channels": 4,
                    "seq": self.seq,
                    "pool": 0,
                }
            )
            runs.append(out)
        rates = sorted(r["rate"] for r in runs)
        self.log(
            f"  {t.name:12} put@64 at {self.filled[t.name]:,} keys: " + ", ".join(f"{r:,.0f}" for r in rates)
        )
        p99 = sorted(r["p99_ms"] for r in runs)
        cpu = sorted(r["server_cpu_s"] / r["ops"] * 1e6 for r in runs if r["ops"])
        return {
            "rate": rates[len(rates) // 2],
            "rates": rates,
            "p99_ms": p99[len(p99) // 2],
            "cpu_us": cpu[len(cpu) // 2] if cpu else 0.0,
        }

    def sizes(self, t: Target) -> dict[str, float]:
        assert t.data_dir is not None
        return {"rss_mib": rss_mib(t.pid), "disk_mib": procfs.dir_bytes(str(t.data_dir)) / 2**20}

    def restart(self, t: Target) -> dict[str, float]:
        t0 = time.monotonic()
        t.stop(timeout=STOP_TIMEOUT_S)
        stop_s = time.monotonic() - t0
        log = t.workdir / f"{t.name.replace('/', '_')}.log"
        warmed_before = _count(log, WARMED)
        start_s = t.start(timeout=RESTART_TIMEOUT_S)
        t1 = time.monotonic()
        warm_s = _warm_up(log, warmed_before) if t.kind == "metastore" else 0.0
        time.sleep(FIGURES_AFTER_START_S)
        out = {"stop_s": stop_s, "restart_s": start_s, "rss_after_restart_mib": rss_mib(t.pid)}
        if t.kind == "metastore":
            out["warm_s"] = warm_s
        rss = out["rss_after_restart_mib"]
        self.log(
            f"  {t.name:12} stop {stop_s:.2f} s, restart {start_s:.2f} s, values warm after "
            f"{warm_s:.1f} s more, RSS {rss:.0f} MiB (waited {time.monotonic() - t1:.1f} s)"
        )
        return out

    def range_all(self, t: Target, concurrent: int) -> dict[str, Any]:
        before = rss_mib(t.pid)
        reset_peak(t.pid)
        out = self.ask({"op": "range_all", "endpoint": t.endpoint, "concurrent": concurrent})
        out["rss_before_mib"] = before
        out["peak_above_mib"] = peak_mib(t.pid) - before
        self.log(
            f"  {t.name:12} range x{concurrent} over {out['keys']:,} keys: {max(out['seconds']):.2f} s, "
            f"{out['reply_bytes'] / 2**20:.0f} MiB reply, peak +{out['peak_above_mib']:.0f} MiB, "
            f"health p99 {out['health_during']['p99_ms']:.1f} ms max {out['health_during']['max_ms']:.1f} ms"
        )
        return out

    def snapshot(self, t: Target) -> dict[str, Any]:
        snap = self.work / f"{t.name}.snap"
        restored = self.work / f"{t.name}-restored"
        for p in (snap, restored):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        env = clean_env(t.src)
        if t.kind == "etcd":
            ctl = [shutil.which("etcdctl") or "etcdctl"]
            env["ETCDCTL_API"] = "3"
            save = [*ctl, "--endpoints", t.endpoint, "--command-timeout", "1800s", "snapshot", "save"]
            save.append(str(snap))
            verify = [*ctl, "snapshot", "status", str(snap)]
            restore = [*ctl, "snapshot", "restore", str(snap), "--data-dir", str(restored)]
        else:
            cli = [sys.executable, "-m", "metastore_cli", "snapshot"]
            save = [*cli, "save", str(snap), "--endpoints", t.endpoint]
            verify = [*cli, "verify", str(snap)]
            restore = [*cli, "restore", str(snap), "--data-dir", str(restored)]
        before = rss_mib(t.pid)
        reset_peak(t.pid)
        out: dict[str, Any] = {"save": run_tool(save, t.src, env)}
        out["save"]["server_peak_above_mib"] = peak_mib(t.pid) - before
        out["bytes"] = snap.stat().st_size if snap.exists() else 0
        out["verify"] = run_tool(verify, t.src, env)
        out["restore"] = run_tool(restore, t.src, env)
        for p in (snap, restored):
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        sv, vf, rs = out["save"], out["verify"], out["restore"]
        failed = "".join(
            f" {k} FAILED rc={v['rc']}" for k, v in out.items() if isinstance(v, dict) and v["rc"]
        )
        self.log(
            f"  {t.name:12} snapshot {out['bytes'] / 2**20:.0f} MiB: save {sv['seconds']:.1f} s "
            f"(tool {sv['peak_rss_mib']:.0f} MiB, server +{sv['server_peak_above_mib']:.0f} MiB), "
            f"verify {vf['seconds']:.1f} s ({vf['peak_rss_mib']:.0f} MiB), "
            f"restore {rs['seconds']:.1f} s ({rs['peak_rss_mib']:.0f} MiB){failed}"
        )
        return out

    def around(self, t: Target, action: str, revision: int = 0) -> dict[str, Any]:
        self.seq += 1
        window = self.s.duration * self.s.repeats
        out = self.ask(
            {
                "op": "put_during",
                "endpoint": t.endpoint,
                "action": action,
                "revision": revision,
                "duration": window,
                "seq": self.seq,
                "loaded": self.n,
                "warmup": 1.0,
            }
        )
        err = f" ({out['action_error']})" if out["action_error"] else ""
        self.log(
            f"  {t.name:12} put@64 {action:8} {out['action_s']:6.2f} s{err}: put p50/p99/max "
            f"{out['put']['p50_ms']:.0f}/{out['put']['p99_ms']:.0f}/{out['put']['max_ms']:.0f} ms "
            f"{out['put_rate']:,.0f}/s, get p99/max {out['get']['p99_ms']:.0f}/{out['get']['max_ms']:.0f} ms"
        )
        return out

    def head(self, t: Target) -> int:
        return int(self.ask({"op": "head_revision", "endpoint": t.endpoint})["revision"])

    # ------------------------------------------------------------ the run
    def each(self, step: str, fn: Any) -> None:
        for t in self.targets:
            self.res[t.name][step] = fn(t)

    def run(self) -> dict[str, dict[str, Any]]:
        n = self.n
        small, tenth = max(n // 100, 100), max(n // 10, 1000)
        self.log(f"scale: {n:,} keys; steps at {small:,}, {tenth:,}, {n:,} and {2 * n:,}")
        self.each("fill_small", lambda t: self.fill_to(t, small))
        self.each("put_small", self.put_rate)
        self.each("fill_tenth", lambda t: self.fill_to(t, tenth))
        self.each("restart_tenth", self.restart)
        self.each("fill_n", lambda t: self.fill_to(t, n))
        self.each("sizes_n", self.sizes)
        self.each("put_n", self.put_rate)
        self.each("restart_n", self.restart)
        self.each("range_1", lambda t: self.range_all(t, 1))
        self.each("range_4", lambda t: self.range_all(t, 4))
        self.each("snapshot", self.snapshot)
        self.each("rewrite", lambda t: self.fill_to(t, n, again=True))
        self.each("baseline", lambda t: self.around(t, "none"))
        revisions = {t.name: self.head(t) for t in self.targets}
        self.each("compact", lambda t: self.around(t, "compact", revisions[t.name]))
        self.each("defrag", lambda t: self.around(t, "defrag"))
        self.each("fill_2n", lambda t: self.fill_to(t, 2 * n))
        self.each("sizes_2n", self.sizes)
        self.each("restart_2n", self.restart)
        return self.res


def server_flags(kind: str) -> tuple[str, ...]:
    if kind == "metastore":  # info: its load and warm-up lines (_warm_up reads them)
        return ("--quota-backend-bytes", QUOTA, "--log-level", "info")
    return ("--quota-backend-bytes", QUOTA) if kind == "etcd" else ()


# ---------------------------------------------------------------- report
def _cell(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def rows(res: dict[str, dict[str, Any]], n: int) -> list[tuple[str, list[float | None], str]]:
    """(figure, a value per target, format) in the order the table prints them."""

    def get(path: str, fn: Any = None) -> list[float | None]:
        out: list[float | None] = []
        for r in res.values():
            v: Any = r
            try:
                for part in path.split("."):
                    v = v[part]
                out.append(fn(v) if fn else float(v))
            except (KeyError, TypeError, IndexError, ValueError):
                out.append(None)
        return out

    small, tenth = max(n // 100, 100), max(n // 10, 1000)
    ratio = []
    for r in res.values():
        try:
            ratio.append(r["put_n"]["rate"] / r["put_small"]["rate"])
        except (KeyError, ZeroDivisionError):
            ratio.append(None)
    return [
        (f"restart to first answer at {tenth:,} keys, s", get("restart_tenth.restart_s"), ".2f"),
        (f"restart at {n:,} keys, s", get("restart_n.restart_s"), ".2f"),
        (f"restart at {2 * n:,} keys, s", get("restart_2n.restart_s"), ".2f"),
        (
            f"... values held again after it (from the index checkpoint) at {n:,} / {2 * n:,}, s",
            get("restart_n.warm_s"),
            ".1f",
        ),
        ("", get("restart_2n.warm_s"), ".1f"),
        (f"stop (SIGTERM to exit) at {n:,} / {2 * n:,} keys, s", get("restart_n.stop_s"), ".2f"),
        ("", get("restart_2n.stop_s"), ".2f"),
        (f"RSS after load at {n:,} keys, MiB", get("sizes_n.rss_mib"), ".0f"),
        (f"RSS after restart at {n:,} keys, MiB", get("restart_n.rss_after_restart_mib"), ".0f"),
        (f"RSS after load at {2 * n:,} keys, MiB", get("sizes_2n.rss_mib"), ".0f"),
        (f"RSS after restart at {2 * n:,} keys, MiB", get("restart_2n.rss_after_restart_mib"), ".0f"),
        (f"disk at {n:,} / {2 * n:,} keys, MiB", get("sizes_n.disk_mib"), ".0f"),
        ("", get("sizes_2n.disk_mib"), ".0f"),
        (f"Range over {n:,} keys, s", get("range_1.seconds", max), ".2f"),
        ("... reply, MiB", get("range_1.reply_bytes", lambda b: b / 2**20), ".0f"),
        ("... server peak RSS above before, MiB", get("range_1.peak_above_mib"), ".0f"),
        ("... Health p99 / max while it runs, ms", get("range_1.health_during.p99_ms"), ".1f"),
        ("", get("range_1.health_during.max_ms"), ".1f"),
        ("4 such Ranges at once, slowest, s", get("range_4.seconds", max), ".2f"),
        ("... server peak RSS above before, MiB", get("range_4.peak_above_mib"), ".0f"),
        ("... Health p99 / max, ms", get("range_4.health_during.p99_ms"), ".1f"),
        ("", get("range_4.health_during.max_ms"), ".1f"),
        (f"put@64 at {small:,} keys, ops/s", get("put_small.rate"), ",.0f"),
        (f"put@64 at {n:,} keys, ops/s", get("put_n.rate"), ",.0f"),
        ("... rate at N / rate small", ratio, ".2f"),
        (f"fill (Txn of 100 puts, 8 in flight) to {n:,}, keys/s", get("fill_n.rate"), ",.0f"),
        ("put@64 p99 / max, no maintenance, ms", get("baseline.put.p99_ms"), ".0f"),
        ("", get("baseline.put.max_ms"), ".0f"),
        (f"compaction of {n:,} revisions, s", get("compact.action_s"), ".2f"),
        ("... put@64 p99 / max during, ms", get("compact.put.p99_ms"), ".0f"),
        ("", get("compact.put.max_ms"), ".0f"),
        ("... get@4 p99 / max during, ms", get("compact.get.p99_ms"), ".0f"),
        ("", get("compact.get.max_ms"), ".0f"),
        ("defragment after it, s", get("defrag.action_s"), ".2f"),
        ("... put@64 p99 / max during, ms", get("defrag.put.p99_ms"), ".0f"),
        ("", get("defrag.put.max_ms"), ".0f"),
        ("... get@4 p99 / max during, ms", get("defrag.get.p99_ms"), ".0f"),
        ("", get("defrag.get.max_ms"), ".0f"),
        (f"snapshot of {n:,} keys, MiB", get("snapshot.bytes", lambda b: b / 2**20), ".0f"),
        ("... save, s / tool peak MiB", get("snapshot.save.seconds"), ".1f"),
        ("", get("snapshot.save.peak_rss_mib"), ".0f"),
        ("... server peak RSS above before, MiB", get("snapshot.save.server_peak_above_mib"), ".0f"),
        ("... verify (etcdctl: snapshot status), s / peak MiB", get("snapshot.verify.seconds"), ".1f"),
        ("", get("snapshot.verify.peak_rss_mib"), ".0f"),
        ("... restore, s / peak MiB", get("snapshot.restore.seconds"), ".1f"),
        ("", get("snapshot.restore.peak_rss_mib"), ".0f"),
    ]


def markdown(result: dict[str, Any]) -> str:
    meta, res = result["meta"], result["targets"]
    names = list(res)
    fill = "Puts" if meta.get("fill", 1) == 1 else f"Txns of {meta['fill']} puts"
    out = [
        f"### Scale, {meta['date']} — {meta['machine']}",
        "",
        f"`{meta['command']}` · {meta['keys']:,} keys, filled by {fill} · put@64 windows {meta['repeats']} x "
        f"{meta['duration']} s · load average before {meta['load_before']}, after {meta['load_after']} · "
        f"etcd {meta['etcd_version']} · metastore {meta['git']} · {meta['minutes']:.0f} min",
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    table = rows(res, meta["keys"])
    i = 0
    while i < len(table):
        label, values, fmt = table[i]
        cells = [_cell(v, fmt) for v in values]
        # a row with an empty label is the second half of the row above it ("a / b")
        while i + 1 < len(table) and table[i + 1][0] == "":
            i += 1
            cells = [f"{a} / {_cell(b, table[i][2])}" for a, b in zip(cells, table[i][1], strict=True)]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
        i += 1
    failures = [
        f"{name} {step}: {v.get('output', '')[-300:]!r}"
        for name, r in res.items()
        for step in ("snapshot",)
        for v in (r.get(step) or {}).values()
        if isinstance(v, dict) and v.get("rc")
    ]
    if failures:
        out += ["", "Failed tools: " + "; ".join(failures)]
    return "\n".join(out) + "\n"


def write(result: dict[str, Any], where: Path) -> str:
    md = markdown(result)
    where.mkdir(parents=True, exist_ok=True)
    (where / "scale-latest.json").write_text(json.dumps(result, indent=1) + "\n")
    (where / "scale-latest.md").write_text(md)
    return md


def stop_all(targets: list[Target]) -> None:
    for t in targets:
        t.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S)
