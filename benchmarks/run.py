"""metastore vs etcd vs the floor, side by side, in one command.

    python -m benchmarks.run            # full run: 3 repeats, ~15 min on 2 cores
    python -m benchmarks.run --quick    # smoke: 1 repeat, short windows, 2k-key load

Starts a fresh etcd (loopback, temp data dir), a fresh metastore (LevelDB, fsync on) and the
floor servicers (benchmarks/floor_server.py), then runs every workload against each of them
with the same load client (a separate process, benchmarks/client.py), interleaved: for each
workload and concurrency, repeat r runs all targets in a rotated order, so drift in machine
load spreads over all of them. Prints medians, min-max, ratios, server CPU per operation (from
/proc/<pid>/stat) and peak RSS (VmHWM); writes JSON and Markdown to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import procfs
from benchmarks.servers import ROOT, Target, clean_env, export_rev

RESULTS = Path(__file__).resolve().parent / "results"

# (workload, concurrencies): 8-byte keys, 256-byte values.
WORKLOADS: list[tuple[str, list[int]]] = [
    ("put", [1, 64, 256]),
    ("put-same", [1, 64]),
    ("get", [1, 64]),
    ("get-serializable", [1, 64]),
    ("range-100", [1, 64]),
    ("txn-cas", [1, 64]),
    ("delete", [1, 64]),
    ("watch", [1, 64]),
    ("lease", [1, 64]),
]
WHAT = {
    "put": "Put of a new key",
    "put-same": "Put of one key, over and over",
    "get": "Range of one key, linearizable",
    "get-serializable": "Range of one key, serializable",
    "range-100": "Range over a 100-key prefix",
    "txn-cas": "Txn: value compare, then put (each slot its own key, always succeeds)",
    "delete": "DeleteRange of one existing key",
    "watch": "64 watch streams on one key; ops = events delivered; c = puts in flight",
    "lease": "LeaseGrant + one LeaseKeepAlive round trip + LeaseRevoke (one op = the cycle)",
}
TARGETS = {
    "etcd": ("etcd", []),
    "metastore": ("metastore", []),
    "metastore-uvloop": ("metastore", ["--uvloop"]),
    "metastore-no-layers": ("metastore", ["--no-layers"]),
    "floor": ("floor", ["--shape", "threads", "--workers", "2"]),
    "floor-aio": ("floor", ["--shape", "aio"]),
    # For taking a write apart (benchmarks/README.md, "Where a put's time goes"):
    "floor-aio-uvloop": ("floor", ["--shape", "aio", "--uvloop"]),
    "floor-aio-hop": ("floor", ["--shape", "aio", "--uvloop", "--hop"]),
    "metastore-memory": ("metastore", ["--backend", "memory"]),
    "metastore-no-fsync": ("metastore", ["--unsafe-no-fsync"]),
    # Auth on, loaded by a non-root user whose role covers every key (servers.enable_auth).
    "metastore-auth": ("metastore", ["--bench-auth"]),
    # gRPC and the JSON gateway on one port: gRPC connections relayed by the front listener.
    "metastore-one-port": ("metastore", ["--gateway-on-client-urls"]),
    # A bounded value cache (--value-cache-bytes): get works on 1000 keys of ~283 serialized
    # bytes (~280 kB), range-100 on 100 (~28 kB); 128k holds about half of get's, 16k about half
    # of range-100's, 0 none (every read goes to LevelDB).
    "metastore-values-128k": ("metastore", ["--value-cache-bytes", str(128 << 10)]),
    "metastore-values-16k": ("metastore", ["--value-cache-bytes", str(16 << 10)]),
    "metastore-values-0": ("metastore", ["--value-cache-bytes", "0"]),
}
DEFAULT_TARGETS = ["etcd", "metastore", "floor", "floor-aio"]
RELIABILITY_WORKLOADS = [("put", 1), ("put", 64), ("get", 64)]


@dataclass
class Settings:
    repeats: int
    warmup: float
    duration: float
    load_keys: int
    channels: int


class Client:
    """The load-client child process (benchmarks/client.py), one JSON line per command."""

    def __init__(self, uvloop: bool, module: str = "benchmarks.client") -> None:
        args = [sys.executable, "-m", module, *(["--uvloop"] if uvloop else [])]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=clean_env()
        )

    def ask(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        p = self.proc
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write((json.dumps(cmd) + "\n").encode())
        p.stdin.flush()
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        if not ready:
            what = cmd.get("workload") or cmd.get("op")
            raise TimeoutError(f"client gave no answer in {timeout:.0f}s to {what}")
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"client exited with {p.wait()}")
        out: dict[str, Any] = json.loads(line)
        return out

    def close(self) -> None:
        p = self.proc
        if p.poll() is None:
            try:
                assert p.stdin is not None
                p.stdin.write(b'{"op": "quit"}\n')
                p.stdin.flush()
                p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
                p.wait()


def delete_pool(c: int, s: Settings) -> int:
    """Keys to preload for the delete workload: more than the fastest server deletes in the run."""
    per_s = 2500 if c == 1 else 14000
    return max(500, int(per_s * (s.warmup + s.duration)))


def run_matrix(
    client: Client, targets: list[Target], s: Settings, selected: list[tuple[str, int]], log: Any
) -> list[dict[str, Any]]:
    seq = 0
    rows: list[dict[str, Any]] = []
    for name, c in selected:
        runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        skipped: dict[str, str] = {}
        for rep in range(s.repeats):
            order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
            for t in order:
                if t.name in skipped:
                    continue
                seq += 1
                cmd = {
                    "workload": name,
                    "concurrency": c,
                    "endpoint": t.endpoint,
                    "server_pid": t.pid,
                    "warmup": s.warmup,
                    "duration": s.duration,
                    "channels": s.channels,
                    "seq": seq,
                    "pool": delete_pool(c, s),
                    "token": t.token,
                }
                out = client.ask(cmd, timeout=s.warmup + s.duration + 180)
                if "skipped" in out:
                    skipped[t.name] = out["skipped"]
                    log(f"  {name:17} c={c:<3} {t.name:10} skipped: {out['skipped']}")
                    continue
                if "error" in out:
                    skipped[t.name] = "failed: " + out["error"]
                    log(f"  {name:17} c={c:<3} {t.name:10} FAILED: {out['error']}")
                    continue
                runs[t.name].append(out)
                cpu_us = out["server_cpu_s"] / out["ops"] * 1e6 if out["ops"] else 0.0
                busy = out["client_cpu_s"] / out["seconds"] * 100 if out["seconds"] else 0.0
                sys_pct = out["server_sys_s"] / out["server_cpu_s"] * 100 if out["server_cpu_s"] else 0.0
                err = f" errors={out['errors']} ({out['first_error']})" if out["errors"] else ""
                log(
                    f"  {name:17} c={c:<3} {t.name:10} {out['rate']:9.0f} ops/s  p50 {out['p50_ms']:6.2f} ms"
                    f"  p99 {out['p99_ms']:6.2f} ms  cpu {cpu_us:6.0f} us/op ({sys_pct:2.0f}% sys)"
                    f"  client {busy:3.0f}% cpu{err}"
                )
        rows.append(summarize(name, c, runs, skipped))
    return rows


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(
    name: str, c: int, runs: dict[str, list[dict[str, Any]]], skipped: dict[str, str]
) -> dict[str, Any]:
    row: dict[str, Any] = {"workload": name, "concurrency": c, "targets": {}}
    for tname, rs in runs.items():
        if tname in skipped or not rs:
            row["targets"][tname] = {"skipped": skipped.get(tname, "no runs")}
            continue
        row["targets"][tname] = {
            "rate": _stats([r["rate"] for r in rs]),
            "p50_ms": _stats([r["p50_ms"] for r in rs]),
            "p99_ms": _stats([r["p99_ms"] for r in rs]),
            "server_cpu_us": _stats([r["server_cpu_s"] / r["ops"] * 1e6 for r in rs if r["ops"]] or [0.0]),
            "server_sys_us": _stats([r["server_sys_s"] / r["ops"] * 1e6 for r in rs if r["ops"]] or [0.0]),
            "client_cpu_us": _stats([r["client_cpu_s"] / r["ops"] * 1e6 for r in rs if r["ops"]] or [0.0]),
            "errors": sum(r["errors"] for r in rs),
            "runs": rs,
        }
    return row


def load_and_restart(client: Client, t: Target, keys: int, log: Any) -> dict[str, Any]:
    """Put `keys` new keys at 256 in flight, then RSS, disk size, and time to restart."""
    cmd = {
        "workload": "load",
        "concurrency": 256,
        "endpoint": t.endpoint,
        "server_pid": t.pid,
        "warmup": 0.0,
        "duration": 3600.0,
        "channels": 4,
        "seq": 0,
        "pool": keys,
    }
    out = client.ask(cmd, timeout=900)
    if "error" in out:
        return {"error": out["error"]}
    res: dict[str, Any] = {
        "keys": keys,
        "load_rate": out["rate"],
        "load_errors": out["errors"],
        "rss_mib": procfs.status_kib(t.pid, "VmRSS") / 1024,
        "peak_rss_mib": procfs.status_kib(t.pid, "VmHWM") / 1024,
    }
    t.stop()
    assert t.data_dir is not None
    res["disk_mib"] = procfs.dir_bytes(str(t.data_dir)) / 2**20
    res["restart_s"] = t.start()
    res["rss_after_restart_mib"] = procfs.status_kib(t.pid, "VmRSS") / 1024
    log(
        f"  load {keys} keys {t.name:10} {res['load_rate']:7.0f} puts/s  RSS {res['rss_mib']:6.1f} MiB"
        f"  disk {res['disk_mib']:6.1f} MiB  restart {res['restart_s']:.2f} s"
        f"  RSS after restart {res['rss_after_restart_mib']:6.1f} MiB"
    )
    return res


# ---------------------------------------------------------------- report
def _fmt_rate(st: dict[str, float]) -> str:
    return f"{st['median']:,.0f} ({st['min']:,.0f}-{st['max']:,.0f})"


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str = "rate") -> str:
    if "skipped" in a or "skipped" in b:
        return "-"
    bm = b[key]["median"]
    return f"{a[key]['median'] / bm:.2f}" if bm else "-"


def floor_for(row: dict[str, Any]) -> dict[str, Any]:
    """The best floor that ran this workload (the thread pool serves KV only)."""
    ts = row["targets"]
    cands = [ts[n] for n in ("floor", "floor-aio") if n in ts and "skipped" not in ts[n]]
    if not cands:
        return {"skipped": "no floor"}
    return max(cands, key=lambda t: t["rate"]["median"])


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    names = meta["targets"]
    lines = [
        f"### Benchmarks, {meta['date']} — {meta['machine']}",
        "",
        f"`{meta['command']}` · {meta['repeats']} repeat(s) x {meta['duration']} s windows "
        f"(+{meta['warmup']} s warm-up) · load average before {meta['load_before']}, after "
        f"{meta['load_after']} · synced LevelDB put (the disk's fsync) before {meta['fsync_before']}, "
        f"after {meta['fsync_after']} · etcd {meta['etcd_version']} · metastore {meta['git']} · "
        f"client: {meta['client']}",
        "",
        "Throughput, ops/s: median (min-max). ms/etcd and ms/floor are ratios of medians "
        "(higher is better for metastore); floor = the faster of the thread-pool (2 workers) and "
        "grpc.aio floor servicers that served the workload.",
        "",
        "| workload | c | " + " | ".join(names) + " | ms/etcd | ms/floor |",
        "|---|---:|" + "---:|" * len(names) + "---:|---:|",
    ]
    for row in result["rows"]:
        ts = row["targets"]
        cells = []
        for n in names:
            t = ts.get(n, {"skipped": "not run"})
            cells.append("-" if "skipped" in t else _fmt_rate(t["rate"]))
        ms = ts.get("metastore", {"skipped": ""})
        et = ts.get("etcd", {"skipped": ""})
        lines.append(
            f"| {row['workload']} | {row['concurrency']} | "
            + " | ".join(cells)
            + f" | {_ratio(ms, et)} | {_ratio(ms, floor_for(row))} |"
        )
    lines += [
        "",
        "Server CPU per operation, µs (median; from /proc/<pid>/stat utime+stime over the window; "
        "sys = the kernel's share: syscalls, fsync, thread wake-ups), "
        "latency p50/p99 in ms, and the client's own CPU per op (one Python process). "
        "cpu ms/floor is metastore's CPU per op over the floor's (target ≤ 1.25).",
        "",
        "| workload | c | "
        + " | ".join(f"{n} µs/op" for n in names)
        + " | cpu ms/floor | "
        + " | ".join(f"{n} p50/p99 ms" for n in names)
        + " | client µs/op |",
        "|---|---:|" + "---:|" * (2 * len(names) + 2),
    ]
    for row in result["rows"]:
        ts = row["targets"]
        cpu, lat = [], []
        client_cpu = []
        for n in names:
            t = ts.get(n, {"skipped": ""})
            if "skipped" in t:
                cpu.append("-")
                lat.append("-")
                continue
            cpu_med = t["server_cpu_us"]["median"]
            sys_share = t.get("server_sys_us", {"median": 0.0})["median"] / cpu_med * 100 if cpu_med else 0.0
            cpu.append(f"{cpu_med:.0f} ({sys_share:.0f}% sys)")
            lat.append(f"{t['p50_ms']['median']:.2f} / {t['p99_ms']['median']:.2f}")
            client_cpu.append(f"{t['client_cpu_us']['median']:.0f}")
        ms = ts.get("metastore", {"skipped": ""})
        fl = floor_for(row)
        cpu_ratio = "-"
        if "skipped" not in ms and "skipped" not in fl and fl["server_cpu_us"]["median"]:
            cpu_ratio = f"{ms['server_cpu_us']['median'] / fl['server_cpu_us']['median']:.2f}"
        lines.append(
            f"| {row['workload']} | {row['concurrency']} | "
            + " | ".join(cpu)
            + f" | {cpu_ratio} | "
            + " | ".join(lat)
            + f" | {'/'.join(client_cpu) or '-'} |"
        )
    for n in names:
        t_meta = meta["peak_rss_mib"].get(n)
        if t_meta is not None:
            lines.append("")
            break
    lines.append(
        "Peak RSS over the run (VmHWM, MiB): "
        + ", ".join(f"{n} {v:.0f}" for n, v in meta["peak_rss_mib"].items())
        + "."
    )
    if result.get("skips"):
        lines += ["", "Skipped: " + "; ".join(result["skips"]) + "."]
    load = result.get("load")
    if load:
        lines += [
            "",
            f"Load {load['keys']:,} new keys (Put, 256 in flight), then stop (SIGTERM) and restart:",
            "",
            "| server | load puts/s | RSS after load MiB | peak RSS MiB | on disk MiB | restart s "
            "(spawn → first Range) | RSS after restart MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for n, r in load["servers"].items():
            if "error" in r:
                lines.append(f"| {n} | failed: {r['error']} | | | | | |")
                continue
            lines.append(
                f"| {n} | {r['load_rate']:,.0f} | {r['rss_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                f"{r['disk_mib']:.1f} | {r['restart_s']:.2f} | {r['rss_after_restart_mib']:.0f} |"
            )
    lines += [
        "",
        "Reliability layer (recovery, limits, auth, metrics) on vs off, two fresh metastores "
        "in the same run (spec budget: < 1 % throughput, < 20 µs per request):",
        "",
    ]
    rel = result["reliability"]
    if isinstance(rel, str):
        lines.append(rel)
    else:
        lines += [
            "| workload | c | on ops/s | off ops/s | on/off | on µs/op | off µs/op | cost µs/op |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rel:
            on, off = row["targets"]["layers-on"], row["targets"]["layers-off"]
            if "skipped" in on or "skipped" in off:
                lines.append(f"| {row['workload']} | {row['concurrency']} | - | - | - | - | - | - |")
                continue
            con, coff = on["server_cpu_us"]["median"], off["server_cpu_us"]["median"]
            lines.append(
                f"| {row['workload']} | {row['concurrency']} | {_fmt_rate(on['rate'])} | "
                f"{_fmt_rate(off['rate'])} | {_ratio(on, off)} | {con:.0f} | {coff:.0f} | {con - coff:+.0f} |"
            )
    lines += ["", "Workloads: " + "; ".join(f"**{k}** {v}" for k, v in WHAT.items()) + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main
def run_scale(a: argparse.Namespace, names: list[str], s: Settings, log: Any) -> int:
    """The scale phase (benchmarks/scale.py) over the etcd and metastore targets named."""
    from benchmarks import scale

    names = [n for n in names if TARGETS.get(n, ("metastore", []))[0] in ("etcd", "metastore")]
    work = Path(tempfile.mkdtemp(prefix="metastore-scale-"))
    started, load_before = time.monotonic(), procfs.loadavg()
    log(f"scale: workdir {work}; load average {load_before}")
    targets: list[Target] = []
    client: Client | None = None
    try:
        src, label = metastore_source(a, work)
        for n in names:
            t = make_target(n, work, a, src, scale.server_flags(TARGETS.get(n, ("metastore", []))[0]))
            t.start()
            targets.append(t)
            log(f"scale: {n} pid {t.pid} on {t.endpoint}")
        client = Client(a.uvloop_client, "benchmarks.scale_client")
        res = scale.Scale(client, targets, a.scale_keys, s, work, log, a.scale_fill).run()
    finally:
        if client is not None:
            client.close()
        scale.stop_all(targets)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    cmd = "python -m benchmarks.run" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "command": cmd,
        "keys": a.scale_keys,
        "fill": a.scale_fill,
        "repeats": s.repeats,
        "duration": s.duration,
        "load_before": load_before,
        "load_after": procfs.loadavg(),
        "etcd_version": etcd_version(),
        "git": label,
        "minutes": (time.monotonic() - started) / 60,
    }
    print(scale.write({"meta": meta, "targets": res}, a.out))
    log(f"scale: wrote {a.out / 'scale-latest.json'} and {a.out / 'scale-latest.md'}")
    return 0


def fsync_ms(where: Path, n: int = 200) -> str:
    """p50/p90 of a synced 256-byte LevelDB put in where: the disk's fsync floor right now."""
    import plyvel

    path = Path(tempfile.mkdtemp(prefix="fsync-probe-", dir=where))
    db = plyvel.DB(str(path), create_if_missing=True)
    lat = []
    try:
        for i in range(n):
            t = time.perf_counter()
            db.put(b"k%d" % i, bytes(256), sync=True)
            lat.append(time.perf_counter() - t)
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)
    lat.sort()
    return f"p50 {lat[n // 2] * 1e3:.2f} ms, p90 {lat[n * 9 // 10] * 1e3:.2f} ms"


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    system = f"{platform.system()} {platform.machine()}"
    return f"{os.cpu_count()} cores {model}, {system}, Python {platform.python_version()}"


def etcd_version() -> str:
    exe = shutil.which("etcd")
    if not exe:
        return "missing"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return "?"


def git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def git_dirty() -> str:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "metastore_core", "metastore_cli"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return " (with uncommitted changes)" if out.strip() else ""


def select_workloads(spec: str | None) -> list[tuple[str, int]]:
    """All (workload, c) pairs, or those named: 'put,get' or 'put@64,get@1'."""
    pairs = [(n, c) for n, cs in WORKLOADS for c in cs]
    if not spec:
        return pairs
    out = []
    for item in spec.split(","):
        name, _, conc = item.strip().partition("@")
        if name not in WHAT:
            raise SystemExit(f"unknown workload {name!r}; known: {', '.join(WHAT)}")
        out += [(n, c) for n, c in pairs if n == name and (not conc or c == int(conc))]
        if conc and int(conc) not in dict(WORKLOADS)[name]:
            out.append((name, int(conc)))
    return out


def metastore_source(a: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """(the tree target `metastore` runs from, how to name it): --metastore-rev or this one."""
    if a.metastore_rev and Path(a.metastore_rev).is_dir():
        src = Path(a.metastore_rev).resolve()
        return src, f"tree at {src}"
    if a.metastore_rev:
        return work / "src", export_rev(a.metastore_rev, work / "src")
    return ROOT, f"{git_rev()} working tree{git_dirty()}"


def make_target(
    name: str, work: Path, a: argparse.Namespace, metastore_src: Path, extra: tuple[str, ...] = ()
) -> Target:
    """The target called name (TARGETS, or metastore@REV: a git revision or a saved tree)."""
    kind, flags = TARGETS.get(name, ("metastore", []))
    flags = flags + (a.metastore_arg if kind == "metastore" else []) + list(extra)
    src = metastore_src if kind == "metastore" else ROOT
    if name.startswith("metastore@"):
        rev = name.partition("@")[2]
        if Path(rev).is_dir():  # a saved copy of a tree, e.g. before an uncommitted change
            src = Path(rev).resolve()
        else:
            src = work / "src-compare"
            export_rev(rev, src)
    return Target(name, kind, work, flags, src=src)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat, short windows, small load (smoke)")
    ap.add_argument("--repeats", type=int, help="runs per workload and target [3]")
    ap.add_argument("--duration", type=float, help="measured seconds per run [2.0]")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run [0.5]")
    ap.add_argument(
        "--targets", default=",".join(DEFAULT_TARGETS), help="comma list of " + ", ".join(TARGETS)
    )
    ap.add_argument("--workloads", help="comma list, e.g. put,get@64 [all]")
    ap.add_argument("--load-keys", type=int, help="keys for the load/restart test [100000]; 0 skips it")
    ap.add_argument(
        "--metastore-rev",
        help="run metastore from this git revision (exported to the temp dir) or source directory "
        "instead of the working tree",
    )
    ap.add_argument(
        "--compare-rev",
        help="also run metastore from this git revision, as target metastore@REV (before/after)",
    )
    ap.add_argument("--metastore-arg", action="append", default=[], help="extra `metastore serve` flag")
    ap.add_argument("--no-reliability", action="store_true", help="skip the layer on/off comparison")
    ap.add_argument("--channels", type=int, default=4, help="client channels (TCP connections) [4]")
    ap.add_argument("--uvloop-client", action="store_true", help="run the load client on uvloop")
    ap.add_argument(
        "--out",
        type=Path,
        help="where to write latest.json/latest.md [benchmarks/results; results/quick with --quick]",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data dirs, server logs)")
    ap.add_argument("--scale", action="store_true", help="run the scale phase instead (benchmarks/scale.py)")
    ap.add_argument("--scale-keys", type=int, default=1_000_000, help="keys of the scale phase [1000000]")
    ap.add_argument(
        "--scale-fill",
        type=int,
        default=1,
        metavar="N",
        help="keys per write while filling: 1 = Puts, 256 in flight (as clients write; etcd's WAL and "
        "raft log then look as in use) [1]; more = Txns of N puts, 8 in flight (faster, for development)",
    )
    a = ap.parse_args(argv)
    s = Settings(
        repeats=a.repeats or (1 if a.quick else 3),
        warmup=a.warmup if a.warmup is not None else (0.2 if a.quick else 0.5),
        duration=a.duration or (0.5 if a.quick else 2.0),
        load_keys=a.load_keys if a.load_keys is not None else (2000 if a.quick else 100_000),
        channels=a.channels,
    )
    if a.out is None:  # a smoke run never replaces the committed full results
        a.out = RESULTS / "quick" if a.quick else RESULTS
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    if a.compare_rev:
        names.insert(
            names.index("metastore") + 1 if "metastore" in names else 0, f"metastore@{a.compare_rev}"
        )
    for n in names:
        if n not in TARGETS and not n.startswith("metastore@"):
            raise SystemExit(f"unknown target {n!r}; known: {', '.join(TARGETS)}")
    if "etcd" in names and not shutil.which("etcd"):
        raise SystemExit(
            "etcd not found on PATH (Debian: apt-get install etcd-server), or drop it with --targets"
        )
    selected = select_workloads(a.workloads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if a.scale:
        return run_scale(a, names, s, log)

    work = Path(tempfile.mkdtemp(prefix="metastore-bench-"))
    targets: list[Target] = []
    client: Client | None = None
    load_before = procfs.loadavg()
    fsync_before = fsync_ms(work)
    log(f"bench: workdir {work}; load average {load_before}")
    try:
        metastore_src, metastore_label = metastore_source(a, work)
        for n in names:
            t = make_target(n, work, a, metastore_src)
            t.start()
            targets.append(t)
            log(f"bench: {n} pid {t.pid} on {t.endpoint}")
        client = Client(a.uvloop_client)
        rows = run_matrix(client, targets, s, selected, log)
        peak = {t.name: procfs.status_kib(t.pid, "VmHWM") / 1024 for t in targets}
        reliability: list[dict[str, Any]] | str = "not run (needs the metastore target; --no-reliability)"
        if "metastore" in names and not a.no_reliability:
            pair = []
            for n, extra in (("layers-on", []), ("layers-off", ["--no-layers"])):
                t = Target(n, "metastore", work, extra + a.metastore_arg, src=metastore_src)
                t.start()
                targets.append(t)
                pair.append(t)
            log("bench: reliability layer on vs off")
            reliability = run_matrix(client, pair, s, RELIABILITY_WORKLOADS, log)
            for t in pair:
                t.stop()
        load: dict[str, Any] | None = None
        if s.load_keys:
            load = {"keys": s.load_keys, "servers": {}}
            for t in list(targets[: len(names)]):  # the matrix's servers, not the layer pair
                if t.kind in ("etcd", "metastore"):
                    # A fresh server each: the matrix above left data behind.
                    t.stop()
                    fresh = Target(
                        t.name,
                        t.kind,
                        work,
                        t.extra,
                        data_dir=work / (t.name.replace("/", "_") + "-load"),
                        src=t.src,
                    )
                    fresh.start()
                    targets.append(fresh)
                    load["servers"][t.name] = load_and_restart(client, fresh, s.load_keys, log)
    finally:
        if client is not None:
            client.close()
        for t in targets:
            t.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    skips = sorted(
        {
            f"{row['workload']} on {n}: {t['skipped']}"
            for row in rows
            for n, t in row["targets"].items()
            if "skipped" in t
        }
    )
    cmd = "python -m benchmarks.run" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    result = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
            "command": cmd,
            "repeats": s.repeats,
            "duration": s.duration,
            "warmup": s.warmup,
            "load_before": load_before,
            "load_after": procfs.loadavg(),
            "fsync_before": fsync_before,
            "fsync_after": fsync_ms(Path(tempfile.gettempdir())),
            "etcd_version": etcd_version(),
            "git": metastore_label,
            "targets": names,
            "client": f"1 process, grpc.aio{' on uvloop' if a.uvloop_client else ''}, "
            f"{s.channels} channels, pre-serialized requests",
            "peak_rss_mib": peak,
        },
        "rows": rows,
        "skips": skips,
        "load": load,
        "reliability": reliability,
    }
    md = markdown(result)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    (a.out / "latest.md").write_text(md)
    print(md)
    log(f"bench: wrote {a.out / 'latest.json'} and {a.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
