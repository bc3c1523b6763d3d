"""Worst request latency while the daemon compacts a long history (issue 6).

    python -m benchmarks.compaction_latency [--revisions 1000000] [--keys 10000]

1. Builds a data dir with N revisions (keys x N/keys overwrites) straight through the MVCC
   store, without the server (minutes of gRPC puts otherwise).
2. Starts `metastore serve` on it, runs probe clients (Range and Put, one in flight each) and
   records every latency: a baseline window, then during a `Compact(physical=True)` that drops
   almost all of the history, then after.
3. For comparison, times the old one-shot compaction (the whole index walk and staging in one
   call, which would hold the event loop) on the same history, in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from metastore_core.member.compactor import CHUNK
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as rpc
from metastore_core.storage.datadir import DataDir
from metastore_core.storage.leveldb import LevelDBStorage

ROOT = Path(__file__).resolve().parent.parent


def build(data_dir: Path, revisions: int, keys: int) -> MVCCStore:
    dd = DataDir(data_dir)
    dd.acquire()
    storage = LevelDBStorage(dd.db_path)
    store = MVCCStore(storage)
    store.load()
    value = b"x" * 32
    for i in range(revisions - 1):  # the empty store is revision 1
        txn = store.begin()
        txn.put(b"key/%06d" % (i % keys), value, 0)
        store.consistent_index += 1
        if i % 20_000 == 19_999:
            d = store.drain()
            assert d is not None
            storage.write(d.batch, sync=False)
            store.mark_durable(d)
    d = store.drain()
    if d is not None:
        storage.write(d.batch, sync=True)
        store.mark_durable(d)
    storage.close()
    dd.release()
    return store


def walk_times(store: MVCCStore, rev: int, chunk: int) -> tuple[float, float, float, int]:
    """In-process, without the server or disk: (total CPU seconds of the walk = what the old
    one-shot call held the loop for, longest chunk in CPU seconds, longest chunk in wall
    seconds, chunks). CPU time is what a chunk costs; wall time adds this machine's noise."""
    store.incremental_compaction = True
    store.compact(rev)
    total = longest = longest_wall = 0.0
    steps = 0
    while store.compact_pending:
        c0, w0 = time.process_time(), time.perf_counter()
        store.compact_step(chunk)
        store.drain()  # the committer's share on the loop; the write itself runs on its thread
        dt, dw = time.process_time() - c0, time.perf_counter() - w0
        total += dt
        longest = max(longest, dt)
        longest_wall = max(longest_wall, dw)
        steps += 1
    return total, longest, longest_wall, steps


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def probe(stub: rpc.KVStub, kind: str, out: list[tuple[float, float]], stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        if kind == "get":
            await stub.Range(pb.RangeRequest(key=b"key/%06d" % (n % 1000)))
        else:
            await stub.Put(pb.PutRequest(key=b"probe/%d" % (n % 100), value=b"v"))
        t1 = time.perf_counter()
        out.append((t0, t1 - t0))
        n += 1


def summary(lat: list[float]) -> str:
    if not lat:
        return "no samples"
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return (
        f"n={len(lat)} p50={statistics.median(lat) * 1000:.2f}ms p99={p99 * 1000:.2f}ms "
        f"max={lat[-1] * 1000:.2f}ms"
    )


async def measure(endpoint: str, target: int, baseline_s: float, log: Path) -> dict[str, object]:
    async with grpc.aio.insecure_channel(endpoint) as ch:
        stub = rpc.KVStub(ch)
        samples: dict[str, list[tuple[float, float]]] = {"get": [], "put": []}
        stop = asyncio.Event()
        tasks = [asyncio.create_task(probe(stub, k, samples[k], stop)) for k in ("get", "get", "put")]
        await asyncio.sleep(baseline_s)
        c0 = time.perf_counter()
        # not physical=True: under load the walk can outlast the daemon's request timeout;
        # the daemon logs when the background walk is done
        await stub.Compact(pb.CompactionRequest(revision=target))
        while f"finished compaction at revision {target}" not in log.read_text(errors="replace"):
            await asyncio.sleep(0.05)
        c1 = time.perf_counter()
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
    result: dict[str, object] = {"compaction_s": c1 - c0}
    for kind, rows in samples.items():
        before = [lat for t, lat in rows if t + lat < c0]
        during = [lat for t, lat in rows if t < c1 and t + lat > c0]
        result[kind] = (summary(before), summary(during))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revisions", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--baseline", type=float, default=3.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="metastore-compaction-"))
    proc = None
    try:
        t0 = time.perf_counter()
        store = build(work / "data", args.revisions, args.keys)
        top = store.committed_rev
        print(
            f"built {top - 1} revisions over {args.keys} keys in {time.perf_counter() - t0:.1f}s", flush=True
        )
        port = free_port()
        endpoint = f"127.0.0.1:{port}"
        log = open(work / "serve.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metastore_cli",
                "serve",
                "--data-dir",
                str(work / "data"),
                "--listen-client-urls",
                f"http://{endpoint}",
                "--listen-metrics-urls",
                f"http://127.0.0.1:{free_port()}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        t0 = time.perf_counter()
        with grpc.insecure_channel(endpoint) as ch:
            grpc.channel_ready_future(ch).result(timeout=300)
            rpc.KVStub(ch).Range(pb.RangeRequest(key=b"a"), timeout=300)
        print(f"daemon up in {time.perf_counter() - t0:.1f}s", flush=True)
        target = top - args.keys  # drops all but ~2 revisions per key
        res = asyncio.run(measure(endpoint, target, args.baseline, work / "serve.log"))
        print(f"compaction to {target} (~{target - args.keys} revisions dropped): {res['compaction_s']:.2f}s")
        for kind in ("get", "put"):
            before, during = res[kind]  # type: ignore[misc]
            print(f"  {kind}: before  {before}")
            print(f"  {kind}: during  {during}")
        total, longest, longest_wall, steps = walk_times(store, target, CHUNK)
        print(
            f"in-process walk: {total:.2f}s CPU in total (the old one-shot compaction held the event "
            f"loop this long), {steps} chunks of {CHUNK} entries, longest chunk {longest * 1000:.1f}ms "
            f"CPU ({longest_wall * 1000:.1f}ms wall)"
        )
        print(f"load average during the run: {os.getloadavg()}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
