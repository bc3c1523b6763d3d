"""Write throughput with stalled watchers: 0 vs N watch streams that never read.

    python -m benchmarks.stalled_watchers                       # 0 and 200 stalled, 3 repeats
    python -m benchmarks.stalled_watchers --stalled 0,50,200 --seconds 5 --repeats 5
    python -m benchmarks.stalled_watchers --compare-rev b1c5fda  # the same against another tree

Each stalled stream watches the prefix every put writes to, reads its `created` reply and then
nothing more: once the client's flow-control window is full the server's sends block, the
watcher's buffer fills and it falls behind (a "victim" that replays from the store once its
client reads again). The put load is one client process (grpc.aio, 16 in flight, 256-byte
values): first `--fill` puts, which every stalled watcher must absorb before it can fall
behind, then the measured window. The issue-13 target: puts/s with 200 stalled watchers within
10 % of none, once they have fallen behind.

How much a stalled stream absorbs before it falls behind is the client's window: the staller
turns grpc's BDP probing off, so its window stays at HTTP/2's 64 KiB (~200 events of this
size, plus the server's 1,024-event buffer). With probing on, grpc grows it to ~4.5 MiB and
each stalled stream takes ~14,000 events first, costing the server ~30 us of gRPC send work
each: that fill cost is per stalled stream and bounded, but not small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks import procfs
from benchmarks.servers import ROOT, Target, clean_env, export_rev
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

PREFIX = b"stall/"


async def _stall(endpoint: str, streams: int) -> None:
    """Open `streams` watch streams on PREFIX (one channel each), print READY, never read again."""
    end = PREFIX[:-1] + bytes([PREFIX[-1] + 1])
    channels = [
        grpc.aio.insecure_channel(endpoint, options=[("stall", i), ("grpc.http2.bdp_probe", 0)])
        for i in range(streams)
    ]
    calls = []
    for ch in channels:
        call = rpc_pb2_grpc.WatchStub(ch).Watch()
        await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=PREFIX, range_end=end)))
        assert (await call.read()).created
        calls.append(call)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _put(endpoint: str, seconds: float, conc: int, fill: int) -> None:
    """`fill` puts, then puts for `seconds`, `conc` in flight; print {"puts_per_s", "fill_s"}."""
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        value = b"v" * 256
        n = 0

        async def worker(i: int, stop: float, count: int) -> int:
            nonlocal n
            done = 0
            while time.monotonic() < stop and done < count:
                n += 1
                await kv.Put(pb.PutRequest(key=PREFIX + b"%d" % n, value=value))
                done += 1
            return done

        t0 = time.monotonic()
        await asyncio.gather(*(worker(i, t0 + 600, fill // conc) for i in range(conc)))
        fill_s = time.monotonic() - t0
        print("FILLED", flush=True)  # the parent reads the server's CPU here and at the end
        t0 = time.monotonic()
        done = sum(await asyncio.gather(*(worker(i, t0 + seconds, 1 << 62) for i in range(conc))))
        rate = done / (time.monotonic() - t0)
        print(json.dumps({"puts_per_s": rate, "fill_s": fill_s, "puts": done}), flush=True)


def _child(mode: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.stalled_watchers", mode, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=clean_env(),
    )


def measure(target: Target, stalled: int, seconds: float, conc: int, fill: int) -> tuple[float, float, float]:
    """(puts/s, server CPU us per put, fill seconds) on a fresh server with `stalled` streams."""
    target.data_dir = None
    target.port = 0
    target.start()
    staller = None
    try:
        if stalled:
            staller = _child("--stall", target.endpoint, str(stalled))
            assert staller.stdout is not None
            if staller.stdout.readline().strip() != "READY":
                raise RuntimeError("the stalled watchers did not open")
        load = _child("--put", target.endpoint, str(seconds), str(conc), str(fill))
        assert load.stdout is not None
        if load.stdout.readline().strip() != "FILLED":
            raise RuntimeError("the put load failed during the fill")
        cpu0 = procfs.cpu_seconds(target.pid)
        result = json.loads(load.stdout.readline())
        cpu = procfs.cpu_seconds(target.pid) - cpu0
        load.wait(60)
        return float(result["puts_per_s"]), 1e6 * cpu / result["puts"], float(result["fill_s"])
    finally:
        if staller is not None:
            staller.kill()
            staller.wait()
        target.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stalled", default="0,200", help="comma-separated stalled stream counts")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--fill", type=int, default=3000, help="puts before the measured window")
    ap.add_argument("--compare-rev", default="", help="also run metastore from this git revision")
    a = ap.parse_args()
    counts = [int(x) for x in a.stalled.split(",")]
    with tempfile.TemporaryDirectory(prefix="stalled-") as tmp:
        work = Path(tmp)
        targets = {"metastore": Target("metastore", "metastore", work)}
        if a.compare_rev:
            src = work / "rev"
            short = export_rev(a.compare_rev, src)
            targets[f"metastore@{short}"] = Target(f"metastore@{short}", "metastore", work, src=src)
        results: dict[str, dict[int, list[float]]] = {n: {c: [] for c in counts} for n in targets}
        cpus: dict[str, dict[int, list[float]]] = {n: {c: [] for c in counts} for n in targets}
        for r in range(a.repeats):
            for name, t in targets.items():
                for c in counts if r % 2 == 0 else reversed(counts):
                    rate, cpu, fill_s = measure(t, c, a.seconds, a.concurrency, a.fill)
                    results[name][c].append(rate)
                    cpus[name][c].append(cpu)
                    print(
                        f"  {name} stalled={c} repeat {r + 1}: {rate:,.0f} puts/s, {cpu:,.0f} us "
                        f"server CPU/put (the {a.fill:,} fill puts took {fill_s:.1f} s)",
                        flush=True,
                    )
    print(
        f"\nputs/s after {a.fill:,} fill puts, median of {a.repeats} "
        f"({a.concurrency} in flight, {a.seconds:g} s windows)"
    )
    for name, by in results.items():
        base = statistics.median(by[counts[0]])
        base_cpu = statistics.median(cpus[name][counts[0]])
        row = ", ".join(
            f"{c} stalled {statistics.median(v):,.0f} ({statistics.median(v) / base:.2f}x, "
            f"{statistics.median(cpus[name][c]):,.0f} us CPU/put = "
            f"{statistics.median(cpus[name][c]) / base_cpu:.2f}x)"
            for c, v in by.items()
        )
        print(f"  {name}: {row}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--stall":
        asyncio.run(_stall(sys.argv[2], int(sys.argv[3])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--put":
        asyncio.run(_put(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
    else:
        main()
