"""The scale phase's load client: filling a big store, a Range over all of it, puts around a
compaction or a defragment. A child process of `benchmarks.run --scale`, one JSON command per
stdin line and one JSON answer per stdout line, like benchmarks/client.py (whose closed-loop
workloads it also runs, for put@64 at each size).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import sys
import time
from typing import Any

import grpc

from benchmarks import client, wire
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

SPACE = b"L"  # the key space a scale load fills: L + 7-byte counter, 256-byte values
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
COMPACT = "/etcdserverpb.KV/Compact"
DEFRAGMENT = "/etcdserverpb.Maintenance/Defragment"
BIG = [("grpc.max_receive_message_length", 2**31 - 1)]


def _channel(endpoint: str, tag: int = 0) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(endpoint, options=[*BIG, ("bench.scale", tag)])


def _lat(values: list[float]) -> dict[str, float]:
    """p50, p99 and max in ms (0 when there are none)."""
    v = sorted(values)
    return {
        "n": len(v),
        "p50_ms": client._percentile(v, 0.50) * 1e3,
        "p99_ms": client._percentile(v, 0.99) * 1e3,
        "max_ms": (v[-1] if v else 0.0) * 1e3,
    }


async def fill(cmd: dict[str, Any]) -> dict[str, Any]:
    """Put keys [start, start+count) of the scale space: one Put each, 256 in flight (`batch` 1),
    or Txns of `batch` puts, 8 in flight."""
    start, count, batch = cmd["start"], cmd["count"], cmd.get("batch", 1)
    value = wire.VALUE_B if cmd.get("other_value") else wire.VALUE
    firsts = iter(range(start, start + count, batch))
    chans = [_channel(cmd["endpoint"], i) for i in range(4)]
    if batch == 1:
        calls, parallel = [ch.unary_unary(wire.PUT) for ch in chans], 256
    else:
        calls, parallel = [ch.unary_unary(wire.TXN) for ch in chans], 8
    errors = 0

    async def worker(i: int) -> None:
        nonlocal errors
        for first in firsts:
            if batch == 1:
                req = wire.put(wire.key(SPACE, first), value)
            else:
                keys = [wire.key(SPACE, n) for n in range(first, min(first + batch, start + count))]
                req = wire.put_batch(keys, value)
            for _ in range(5):  # a refused write (a busy server) is retried, never skipped
                try:
                    await calls[i % len(calls)](req, timeout=120)
                    break
                except grpc.aio.AioRpcError:
                    errors += 1
                    await asyncio.sleep(0.5)
            else:
                raise RuntimeError(f"fill: write at {first} failed 5 times")

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker(i) for i in range(parallel)))
    finally:
        for ch in chans:
            await ch.close()
    seconds = time.perf_counter() - t0
    return {"keys": count, "seconds": seconds, "rate": count / seconds, "errors": errors}


class HealthProbe:
    """Health Check every 10 ms from a process of its own (this one may be busy receiving a big
    reply), until stopped: the daemon's responsiveness, not the client's."""

    async def start(self, endpoint: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.scale_client", "--probe", endpoint,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        await self.proc.stdout.readline()  # connected and probing

    async def stop(self) -> dict[str, float]:
        out, _ = await self.proc.communicate(b"stop\n")
        return _lat(json.loads(out))


def probe(endpoint: str, every: float = 0.01) -> None:
    """The probe process: latencies (s) of Checks until a line arrives on stdin, as JSON."""
    import select

    import grpc as sync_grpc

    with sync_grpc.insecure_channel(endpoint) as ch:
        check = ch.unary_unary(HEALTH_CHECK)
        check(b"", timeout=30)
        print("ready", flush=True)
        out: list[float] = []
        while not select.select([sys.stdin], [], [], every)[0]:
            t = time.perf_counter()
            with contextlib.suppress(sync_grpc.RpcError):
                check(b"", timeout=30)
            out.append(time.perf_counter() - t)
    print(json.dumps(out), flush=True)


async def range_all(cmd: dict[str, Any]) -> dict[str, Any]:
    """`concurrent` Ranges over the whole scale space at once, Health probed all the while."""
    endpoint, n = cmd["endpoint"], cmd.get("concurrent", 1)
    chans = [_channel(endpoint, i) for i in range(n)]
    try:
        req = pb.RangeRequest(key=SPACE, range_end=wire.prefix_end(SPACE))
        counted = pb.RangeResponse.FromString(
            await chans[0].unary_unary(wire.RANGE)(
                pb.RangeRequest(key=req.key, range_end=req.range_end, count_only=True).SerializeToString()
            )
        ).count
        health = HealthProbe()
        await health.start(endpoint)
        await asyncio.sleep(1.0)
        idle = await health.stop()
        await health.start(endpoint)
        raw = req.SerializeToString()

        async def one(ch: grpc.aio.Channel) -> tuple[float, int]:
            t = time.perf_counter()
            reply = await ch.unary_unary(wire.RANGE)(raw, timeout=600)
            return time.perf_counter() - t, len(reply)

        t0 = time.perf_counter()
        try:
            done = await asyncio.gather(*(one(ch) for ch in chans))
        finally:
            during = await health.stop()
        return {
            "concurrent": n,
            "keys": counted,
            "seconds": [d[0] for d in done],
            "wall_s": time.perf_counter() - t0,
            "reply_bytes": done[0][1],
            "health_idle": idle,
            "health_during": during,
        }
    finally:
        for ch in chans:
            await ch.close()


async def put_during(cmd: dict[str, Any]) -> dict[str, Any]:
    """put@c of new keys and get@readers of loaded keys around an action: `compact` (physical,
    at `revision`), `defrag`, or `none` (a plain window of `duration` s, the baseline). Latencies
    count when an operation overlaps the action."""
    endpoint, c, readers = cmd["endpoint"], cmd.get("concurrency", 64), cmd.get("readers", 4)
    loaded = cmd["loaded"]
    chans = [_channel(endpoint, i) for i in range(4)]
    admin = _channel(endpoint, 99)
    puts: list[tuple[float, float]] = []
    gets: list[tuple[float, float]] = []
    errors: list[str] = []
    counter = itertools.count(cmd["seq"] << 32)
    stopping = False

    async def putter(i: int) -> None:
        put = chans[i % 4].unary_unary(wire.PUT)
        while not stopping:
            t = time.perf_counter()
            try:
                await put(wire.put(wire.key(b"q", next(counter))), timeout=60)
            except grpc.aio.AioRpcError as exc:
                errors.append(f"put {exc.code().name}: {exc.details()}")
            puts.append((t, time.perf_counter()))

    async def getter(i: int) -> None:
        rng = chans[i % 4].unary_unary(wire.RANGE)
        pick = random.Random(i)
        while not stopping:
            t = time.perf_counter()
            try:
                await rng(wire.get(wire.key(SPACE, pick.randrange(loaded)), False), timeout=60)
            except grpc.aio.AioRpcError as exc:
                errors.append(f"get {exc.code().name}: {exc.details()}")
            gets.append((t, time.perf_counter()))

    tasks = [asyncio.create_task(putter(i)) for i in range(c)]
    tasks += [asyncio.create_task(getter(i)) for i in range(readers)]
    action_error = ""
    try:
        await asyncio.sleep(cmd.get("warmup", 1.0))
        t0 = time.perf_counter()
        action = cmd["action"]
        try:
            if action == "compact":
                req = pb.CompactionRequest(revision=cmd["revision"], physical=True).SerializeToString()
                await admin.unary_unary(COMPACT)(req, timeout=1800)
            elif action == "defrag":
                await admin.unary_unary(DEFRAGMENT)(b"", timeout=1800)
            else:
                await asyncio.sleep(cmd["duration"])
        except grpc.aio.AioRpcError as exc:
            action_error = f"{exc.code().name}: {exc.details()}"
        t1 = time.perf_counter()
    finally:
        stopping = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in [*chans, admin]:
            await ch.close()

    def window(samples: list[tuple[float, float]]) -> list[float]:
        return [end - start for start, end in samples if start < t1 and end > t0]

    put_lat = window(puts)
    out: dict[str, Any] = {
        "action": cmd["action"],
        "action_s": t1 - t0,
        "action_error": action_error,
        "put": _lat(put_lat),
        "put_rate": len(put_lat) / (t1 - t0) if t1 > t0 else 0.0,
        "get": _lat(window(gets)),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }
    return out


async def head_revision(cmd: dict[str, Any]) -> dict[str, Any]:
    """The server's current revision."""
    async with _channel(cmd["endpoint"]) as ch:
        reply = await ch.unary_unary(wire.RANGE)(wire.get(b"\0", False), timeout=60)
    return {"revision": pb.RangeResponse.FromString(reply).header.revision}


OPS = {"fill": fill, "range_all": range_all, "put_during": put_during, "head_revision": head_revision}


async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
    """A scale command, or one of client.py's workloads."""
    op = OPS.get(cmd.get("op", ""))
    return await (op(cmd) if op is not None else client.run(cmd))


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:
        probe(sys.argv[2])
        return
    asyncio.run(client.serve_stdin(handle))


if __name__ == "__main__":
    main()
