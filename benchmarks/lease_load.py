"""Lease load: metastore and etcd in the same run, one fresh server of each.

    python benchmarks/lease_load.py                 # full (~3 min)
    python benchmarks/lease_load.py --quick         # smoke (~40 s)
    python benchmarks/lease_load.py --targets metastore

Three measurements per server:
1. cycles: LeaseGrant + one LeaseKeepAlive round trip (on the client's open stream) +
   LeaseRevoke, closed loop at 64 concurrent clients over 4 channels; cycles/s and the
   p50/p99 latency of one cycle.
2. live: 10,000 leases granted (TTL 120 s), then renewed continuously by 100 KeepAlive
   streams (100 leases each, 1 request in flight per stream); renewals/s, p50/p99 round trip,
   server RSS, and a check that all 10,000 are still alive at the end.
3. expiry: 1,000 leases with TTL 3-5 s, one key each, a watch on the prefix; lateness =
   (DELETE event seen) - (grant answered + TTL), which includes the watch delivery; "early"
   counts DELETEs seen before (grant sent + TTL), which would be a lease expiring early.
   Run at idle and again while 10,000 leases are renewed at 2,000 keep-alives/s ("loaded":
   each lease every 5 s, a busy but sustainable load; saturating load measures queueing).

The client is this process (grpc.aio); its CPU shows in the output. Results also go to
benchmarks/results/lease_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import procfs
from benchmarks.servers import Target
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

CHANNELS = 4
LIVE_TTL = 120  # long enough that granting 10,000 never outlasts the first ones


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


class Client:
    """A few channels to one server (distinct args: one TCP connection each)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.channels = [
            grpc.aio.insecure_channel(endpoint, options=[("bench.channel", i)]) for i in range(CHANNELS)
        ]
        self.lease = [rpc_pb2_grpc.LeaseStub(c) for c in self.channels]
        self.kv = [rpc_pb2_grpc.KVStub(c) for c in self.channels]
        self.watch = rpc_pb2_grpc.WatchStub(self.channels[0])

    async def close(self) -> None:
        for c in self.channels:
            await c.close()


# ---------------------------------------------------------------- 1. cycles
async def cycles(cl: Client, clients: int, warmup: float, duration: float) -> dict[str, Any]:
    lat: list[float] = []
    count = 0
    errors = 0
    phase = 0  # 0 warm-up, 1 measure, 2 stop

    async def worker(i: int) -> None:
        nonlocal count, errors
        stub = cl.lease[i % CHANNELS]
        stream = stub.LeaseKeepAlive()
        while phase < 2:
            t0 = time.perf_counter()
            try:
                g = await stub.LeaseGrant(pb.LeaseGrantRequest(TTL=60))
                await stream.write(pb.LeaseKeepAliveRequest(ID=g.ID))
                r = await stream.read()
                assert r.TTL == 60, r
                await stub.LeaseRevoke(pb.LeaseRevokeRequest(ID=g.ID))
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            if phase == 1:
                count += 1
                lat.append(time.perf_counter() - t0)
        await stream.done_writing()

    tasks = [asyncio.create_task(worker(i)) for i in range(clients)]
    await asyncio.sleep(warmup)
    phase = 1
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(duration)
    phase = 2
    elapsed, ccpu = time.perf_counter() - t0, time.process_time() - c0
    measured = count
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "cycles_per_s": measured / elapsed,
        "p50_ms": pct(lat, 0.5) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "errors": errors,
        "client_cpu": ccpu / elapsed,
    }


# ---------------------------------------------------------------- 2. live leases
async def grant_many(cl: Client, n: int, ttl: int, conc: int = 64) -> tuple[list[int], float]:
    ids: list[int] = []
    todo = iter(range(n))
    t0 = time.perf_counter()

    async def worker(i: int) -> None:
        stub = cl.lease[i % CHANNELS]
        for _ in todo:  # shared iterator: each grant is taken by exactly one worker
            ids.append((await stub.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl))).ID)

    await asyncio.gather(*(worker(i) for i in range(conc)))
    return ids, time.perf_counter() - t0


class KeepAliveLoad:
    """Streams that renew their share of the leases in turn, one request in flight each."""

    def __init__(self, cl: Client, ids: list[int], streams: int, rate: float = 0.0) -> None:
        self.cl, self.ids, self.streams = cl, ids, streams
        self.interval = streams / rate if rate else 0.0  # per stream; 0 = as fast as possible
        self.count = 0
        self.lat: list[float] = []
        self.zero = 0  # answers with TTL 0: a lease was lost
        self.stop = False
        self.measure = False

    async def _stream(self, s: int) -> None:
        mine = self.ids[s :: self.streams]
        call = self.cl.lease[s % CHANNELS].LeaseKeepAlive()
        i = 0
        next_at = time.perf_counter()
        while not self.stop:
            if self.interval:
                next_at += self.interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            t0 = time.perf_counter()
            await call.write(pb.LeaseKeepAliveRequest(ID=mine[i % len(mine)]))
            r = await call.read()
            if r.TTL <= 0:
                self.zero += 1
            if self.measure:
                self.count += 1
                self.lat.append(time.perf_counter() - t0)
            i += 1
        await call.done_writing()

    def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._stream(s)) for s in range(self.streams)]


async def live(cl: Client, n: int, duration: float, pid: int) -> dict[str, Any]:
    rss0 = procfs.status_kib(pid, "VmRSS")
    ids, grant_s = await grant_many(cl, n, LIVE_TTL)
    rss1 = procfs.status_kib(pid, "VmRSS")
    load = KeepAliveLoad(cl, ids, 100)
    tasks = load.start()
    await asyncio.sleep(1.0)
    load.measure = True
    c0, s0, t0 = time.process_time(), procfs.cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(duration)
    load.measure = False
    elapsed = time.perf_counter() - t0
    ccpu, scpu = time.process_time() - c0, procfs.cpu_seconds(pid) - s0
    rate = load.count / elapsed
    load.stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    alive = len((await cl.lease[0].LeaseLeases(pb.LeaseLeasesRequest())).leases)
    # Clean up so the next phase starts from nothing.
    for i in range(0, len(ids), 500):
        await asyncio.gather(
            *(
                cl.lease[j % CHANNELS].LeaseRevoke(pb.LeaseRevokeRequest(ID=x))
                for j, x in enumerate(ids[i : i + 500])
            ),
            return_exceptions=True,  # a lease lost under load is already gone
        )
    return {
        "leases": n,
        "grant_per_s": n / grant_s,
        "renewals_per_s": rate,
        "p50_ms": pct(load.lat, 0.5) * 1e3,
        "p99_ms": pct(load.lat, 0.99) * 1e3,
        "lost": load.zero,
        "alive_at_end": alive,
        "rss_mib_for_leases": (rss1 - rss0) / 1024,
        "server_cpu": scpu / elapsed,
        "client_cpu": ccpu / elapsed,
    }


# ---------------------------------------------------------------- 3. expiry accuracy
async def expiry(
    cl: Client, n: int, prefix: bytes, background: list[int] | None = None, rate: float = 0.0
) -> dict[str, Any]:
    """Lateness of expiry, seen by a watcher; with background ids, under keep-alive load.

    The keep-alive load runs in a child process, so this client stays idle and the
    lateness measured is the server's (expiry plus watch delivery), not our own queueing.
    """
    worker = None
    if background:
        ids_file = Path(tempfile.mkstemp(prefix="lease-ids-")[1])
        ids_file.write_text("\n".join(map(str, background)))
        stats = ids_file.with_suffix(".stats")
        worker = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--keepalive-worker",
                cl.endpoint,
                str(ids_file),
                str(rate),
                str(stats),
            ]
        )
        await asyncio.sleep(1.5)
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    queue: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
    await queue.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=prefix, range_end=end)))

    async def requests() -> Any:
        while (item := await queue.get()) is not None:
            yield item

    watch = cl.watch.Watch(requests())
    created = await watch.read()
    assert created.created
    due: dict[bytes, float] = {}
    earliest: dict[bytes, float] = {}
    missed: list[bytes] = []
    seen: dict[bytes, float] = {}

    gate = asyncio.Semaphore(8)  # few grants in flight, so t_ack - t_sent stays small

    async def one(i: int) -> None:
        ttl = 3 + (i % 3)
        key = prefix + b"%05d" % i
        async with gate:
            t_sent = time.monotonic()
            g = await cl.lease[i % CHANNELS].LeaseGrant(pb.LeaseGrantRequest(TTL=ttl))
            t_ack = time.monotonic()  # the server started the TTL between t_sent and t_ack
        try:
            await cl.kv[i % CHANNELS].Put(pb.PutRequest(key=key, value=b"x", lease=g.ID))
        except grpc.aio.AioRpcError:
            missed.append(key)  # the lease was gone before the Put got through (heavy load)
            return
        earliest[key], due[key] = t_sent + ttl, t_ack + ttl

    await asyncio.gather(*(one(i) for i in range(n)))

    async def reader() -> None:
        while len(seen) < len(due):
            r = await watch.read()
            now = time.monotonic()
            for ev in r.events:
                if ev.type == ev.DELETE:
                    seen[ev.kv.key] = now

    await asyncio.wait_for(reader(), 30)
    await queue.put(None)
    watch.cancel()
    renewals = 0.0
    if worker is not None:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        renewals = float(stats.read_text() or 0)
        ids_file.unlink()
        stats.unlink()
    late = [seen[k] - due[k] for k in due]
    return {
        "leases": len(due),
        "put_too_late": len(missed),
        "late_p50_ms": pct(late, 0.5) * 1e3,
        "late_p99_ms": pct(late, 0.99) * 1e3,
        "late_max_ms": max(late) * 1e3,
        "late_min_ms": min(late) * 1e3,
        "grant_rtt_p99_ms": pct([due[k] - earliest[k] for k in due], 0.99) * 1e3,
        "early": sum(1 for k in due if seen[k] < earliest[k]),
        "renewals_per_s": renewals,
    }


# ---------------------------------------------------------------- driver
async def bench(t: Target, a: argparse.Namespace) -> dict[str, Any]:
    cl = Client(t.endpoint)
    out: dict[str, Any] = {}
    phases = set(a.phases.split(","))
    try:
        if "cycles" in phases:
            out["cycles"] = await cycles(cl, 64, a.warmup, a.duration)
            print(f"  {t.name} cycles: {out['cycles']}", flush=True)
        if "live" in phases:
            out["live"] = await live(cl, a.leases, a.duration, t.pid)
            print(f"  {t.name} live: {out['live']}", flush=True)
        if "expiry" in phases:
            out["expiry_idle"] = await expiry(cl, a.expiry_leases, b"exp/idle/")
            print(f"  {t.name} expiry idle: {out['expiry_idle']}", flush=True)
        if "loaded" in phases:
            bg, _ = await grant_many(cl, a.leases, LIVE_TTL)
            out["expiry_loaded"] = await expiry(
                cl, a.expiry_leases, b"exp/load/", background=bg, rate=a.loaded_rate
            )
            print(f"  {t.name} expiry loaded: {out['expiry_loaded']}", flush=True)
        out["peak_rss_mib"] = procfs.status_kib(t.pid, "VmHWM") / 1024
    finally:
        await cl.close()
    return out


def report(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        ("grant+keep-alive+revoke cycles/s @64", "cycles", "cycles_per_s", "{:,.0f}"),
        ("cycle p50 / p99 ms", "cycles", ("p50_ms", "p99_ms"), "{:.1f}"),
        ("grants/s (all live leases @64)", "live", "grant_per_s", "{:,.0f}"),
        ("renewals/s, all live leases, 100 streams", "live", "renewals_per_s", "{:,.0f}"),
        ("renewal p50 / p99 ms", "live", ("p50_ms", "p99_ms"), "{:.1f}"),
        ("leases lost during keep-alive", "live", "lost", "{}"),
        ("server CPU (cores) during renewals", "live", "server_cpu", "{:.2f}"),
        ("RSS for the live leases, MiB", "live", "rss_mib_for_leases", "{:.1f}"),
        ("expiry lateness p50 / p99 ms, idle", "expiry_idle", ("late_p50_ms", "late_p99_ms"), "{:.0f}"),
        ("expiry lateness max ms / early count, idle", "expiry_idle", ("late_max_ms", "early"), "{:.0f}"),
        ("keep-alives/s meanwhile, from another process", "expiry_loaded", "renewals_per_s", "{:,.0f}"),
        ("expiry lateness p50 / p99 ms, loaded", "expiry_loaded", ("late_p50_ms", "late_p99_ms"), "{:.0f}"),
        ("expiry lateness max ms / early count, loaded", "expiry_loaded", ("late_max_ms", "early"), "{:.0f}"),
    ]
    names = list(results)
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, part, key, fmt in rows:
        cells = []
        for n in names:
            d = results[n].get(part, {})
            keys = key if isinstance(key, tuple) else (key,)
            cells.append(" / ".join(fmt.format(d[k]) for k in keys) if all(k in d for k in keys) else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def keepalive_worker(endpoint: str, ids_file: str, rate: float, stats: str) -> None:
    """Child process: renew the given leases at `rate` until SIGTERM; write the achieved rate."""
    ids = [int(x) for x in Path(ids_file).read_text().split()]

    async def run() -> None:
        cl = Client(endpoint)
        load = KeepAliveLoad(cl, ids, 100, rate)
        tasks = load.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await asyncio.sleep(1.0)
        load.measure = True
        t0 = time.perf_counter()
        await stop.wait()
        Path(stats).write_text(str(load.count / (time.perf_counter() - t0)))
        load.stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await cl.close()

    asyncio.run(run())


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--keepalive-worker":
        keepalive_worker(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="etcd,metastore")
    ap.add_argument("--quick", action="store_true", help="short windows, fewer leases")
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--leases", type=int, default=None)
    ap.add_argument("--expiry-leases", type=int, default=1000)
    ap.add_argument("--phases", default="cycles,live,expiry,loaded", help="which measurements to run")
    ap.add_argument("--loaded-rate", type=float, default=2000.0, help="keep-alives/s during 'loaded' expiry")
    ap.add_argument("--metastore-arg", action="append", default=[])
    ap.add_argument("--workdir", help="keep data dirs and server logs here (default: a temp dir)")
    a = ap.parse_args()
    a.duration = a.duration or (2.0 if a.quick else 8.0)
    a.leases = a.leases or (2000 if a.quick else 10_000)
    if a.quick:
        a.expiry_leases = min(a.expiry_leases, 300)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lease-load-") as tmp_default:
        tmp = a.workdir or tmp_default
        Path(tmp).mkdir(parents=True, exist_ok=True)
        for name in a.targets.split(","):
            t = Target(name, name, Path(tmp), extra=a.metastore_arg if name == "metastore" else [])
            print(f"{name}: starting", flush=True)
            t.start()
            try:
                results[name] = asyncio.run(bench(t, a))
            finally:
                t.stop()
    table = report(results)
    print()
    print(
        f"lease load, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores, load {procfs.loadavg()}"
    )
    print(table)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "lease_load.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=2))


if __name__ == "__main__":
    main()
