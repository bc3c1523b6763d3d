"""Clients for the loop-latency proofs, each in its own process (python -m tests.loopprobe MODE ...).

A health probe measures what other clients see while one client runs something heavy; the
heavy clients run in their own processes too, so decoding a big reply never shares a GIL
with the server or the probe. tests/integration/test_loop_latency.py and
benchmarks/loop_latency.py (the full-size run) both use these.

    probe ENDPOINT INTERVAL         health Check every INTERVAL s until stdin closes; prints
                                    {"ms": [latency of each check], "at": [its start], "failed": n}
    range ENDPOINT KEY END [count]  one Range (count_only with "count"); prints
                                    {"code", "s", "count", "kvs", "bytes"}
    txn ENDPOINT OPS                a read-only Txn of OPS count-only ranges over every key
    nested ENDPOINT                 issue 13's txn: 16 nested levels of 128 count-only ranges
    stall ENDPOINT STREAMS PREFIX   STREAMS watch streams on PREFIX that never read; prints
                                    READY, holds them until stdin closes
    put ENDPOINT N PREFIX           N puts of 256 bytes, 16 in flight; prints {"code", "s"}
    load ENDPOINT N PREFIX          N keys PREFIX%08d (16-byte values) in txns of 128 puts
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

TIMEOUT = 120.0
BIG = [("grpc.max_receive_message_length", 1 << 30)]


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


async def probe(endpoint: str, interval: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop.set)  # stdin closed or written: stop
    latencies: list[float] = []
    at: list[float] = []  # when each check started, seconds after the first
    failed = 0
    async with grpc.aio.insecure_channel(endpoint) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        print("READY", flush=True)
        start = time.monotonic()
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                latencies.append((time.monotonic() - t0) * 1000)
                at.append(t0 - start)
            except grpc.aio.AioRpcError:
                failed += 1
            await asyncio.sleep(max(interval - (time.monotonic() - t0), 0))
    print(json.dumps({"ms": latencies, "at": at, "failed": failed}), flush=True)


async def _call(fn: Any, request: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        resp = await fn(request, timeout=TIMEOUT)
        out: dict[str, Any] = {"code": "OK", "s": time.monotonic() - t0, "bytes": resp.ByteSize()}
        for name in ("count", "kvs", "responses"):
            if hasattr(resp, name):
                value = getattr(resp, name)
                out[name] = value if isinstance(value, int) else len(value)
        return out
    except grpc.aio.AioRpcError as exc:
        return {"code": exc.code().name, "s": time.monotonic() - t0, "details": exc.details()}


def _count_op() -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=b"\0", range_end=b"\0", count_only=True))


async def heavy(mode: str, endpoint: str, args: list[str]) -> None:
    async with grpc.aio.insecure_channel(endpoint, options=BIG) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        if mode == "range":
            req = pb.RangeRequest(key=args[0].encode(), range_end=args[1].encode())
            req.count_only = len(args) > 2 and args[2] == "count"
            out = await _call(kv.Range, req)
        elif mode == "txn":
            out = await _call(kv.Txn, pb.TxnRequest(success=[_count_op() for _ in range(int(args[0]))]))
        elif mode == "nested":
            level = pb.TxnRequest(success=[_count_op() for _ in range(128)])
            for _ in range(15):
                outer = pb.TxnRequest(success=[_count_op() for _ in range(127)])
                outer.success.add().request_txn.CopyFrom(level)
                level = outer
            out = await _call(kv.Txn, level)
        else:  # put, load
            n, prefix = int(args[0]), args[1].encode()
            t0 = time.monotonic()
            sem = asyncio.Semaphore(16)

            async def put(i: int) -> None:
                async with sem:
                    await kv.Put(pb.PutRequest(key=prefix + b"%08d" % i, value=b"v" * 256), timeout=TIMEOUT)

            async def load(i: int) -> None:
                puts = [
                    pb.RequestOp(request_put=pb.PutRequest(key=prefix + b"%08d" % j, value=b"%016d" % j))
                    for j in range(i, min(i + 128, n))
                ]
                async with sem:
                    await kv.Txn(pb.TxnRequest(success=puts), timeout=TIMEOUT)

            if mode == "put":
                await asyncio.gather(*(put(i) for i in range(n)))
            else:
                await asyncio.gather(*(load(i) for i in range(0, n, 128)))
            out = {"code": "OK", "s": time.monotonic() - t0}
    print(json.dumps(out), flush=True)


async def stall(endpoint: str, streams: int, prefix: bytes) -> None:
    # No BDP probing: the window stays at HTTP/2's 64 KiB, as a client that stopped reading
    # leaves it (with probing, grpc's client core keeps reading ~4.5 MiB a stream first).
    opts = [("grpc.http2.bdp_probe", 0)]
    channels = [grpc.aio.insecure_channel(endpoint, options=[*opts, ("stall", i)]) for i in range(streams)]
    create = pb.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix))
    calls = []
    for ch in channels:
        call = rpc_pb2_grpc.WatchStub(ch).Watch()
        await call.write(pb.WatchRequest(create_request=create))
        assert (await call.read()).created
        calls.append(call)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def spawn(
    mode: str, endpoint: str, *args: object, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """This module in a process of its own. The load clients run at a lower CPU priority than
    the daemon, and the probe (as root) at a higher one: on two cores shared with them and
    with whatever else runs, the probe then measures how the daemon's event loop serves it,
    not how often the kernel lets another process take the CPU from the probe."""
    probe_nice = ["nice", "-n", "-5"] if os.geteuid() == 0 else []
    nice = probe_nice if mode == "probe" else ["nice", "-n", "10"]
    return subprocess.Popen(
        [*nice, sys.executable, "-m", "tests.loopprobe", mode, endpoint, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
    )


def result(p: subprocess.Popen[str], timeout: float = 1800) -> dict[str, Any]:
    """The last JSON line a spawned client printed (closing its stdin first)."""
    out, _ = p.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    mode, endpoint, *args = sys.argv[1:]
    if mode == "probe":
        asyncio.run(probe(endpoint, float(args[0])))
    elif mode == "stall":
        asyncio.run(stall(endpoint, int(args[0]), args[1].encode()))
    else:
        asyncio.run(heavy(mode, endpoint, args))


if __name__ == "__main__":
    main()
