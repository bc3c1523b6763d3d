"""The load client: one process, grpc.aio, pre-serialized requests, many in flight, a few channels.

Runs as a child of `benchmarks.run` and takes one JSON command per stdin line, answering one JSON
line on stdout, so the client's imports and channel set-up never count and the client never
shares a process (or a GIL) with the orchestrator. Each run: warm up, then measure a window;
server CPU is read from /proc at the window's edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from benchmarks import procfs, wire
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

Op = Callable[[int], Awaitable[bool]]  # one operation of slot i; False when the work is exhausted
MAX_ERRORS = 200


class NotImplementedOnServer(Exception):
    """The server answered UNIMPLEMENTED for a service the workload needs."""


@dataclass
class Window:
    """The measured window of one run."""

    phase: int = 0  # 0 warm-up, 1 measuring, 2 stopping
    ops: int = 0
    extra: int = 0  # workload-specific count inside the window (watch events)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Conn:
    """A few channels to one endpoint, with byte-level callables for every method we use."""

    def __init__(self, endpoint: str, channels: int, token: str = "") -> None:
        opts = [("grpc.max_receive_message_length", 64 << 20)]
        self.metadata = (("token", token),) if token else None
        # Distinct channel args stop grpc from sharing one subchannel (one TCP connection).
        self.channels = [
            grpc.aio.insecure_channel(endpoint, options=[*opts, ("bench.channel", i)])
            for i in range(channels)
        ]

    def unary(self, i: int, method: str) -> Any:
        call = self.channels[i % len(self.channels)].unary_unary(method)
        return functools.partial(call, metadata=self.metadata) if self.metadata else call

    def stream(self, i: int, method: str) -> Any:
        call = self.channels[i % len(self.channels)].stream_stream(method)
        return functools.partial(call, metadata=self.metadata) if self.metadata else call

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


async def drive(
    w: Window, slots: int, op: Op, warmup: float, duration: float, server_pid: int
) -> dict[str, Any]:
    """Run op closed-loop in `slots` tasks; measure a window after warm-up."""

    async def slot(i: int) -> None:
        perf = time.perf_counter
        while w.phase < 2:
            t = perf()
            try:
                more = await op(i)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise NotImplementedOnServer(exc.details() or "") from None
                w.errors += 1
                w.first_error = w.first_error or f"{exc.code().name}: {exc.details()}"
                if w.errors > MAX_ERRORS:
                    w.done.set()
                    return
                continue
            if not more:
                w.done.set()
                return
            if w.phase == 1:
                w.ops += 1
                w.latencies.append(perf() - t)

    tasks = [asyncio.create_task(slot(i)) for i in range(slots)]
    waiter = asyncio.ensure_future(asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION))
    try:
        await asyncio.wait([waiter], timeout=warmup)
        for t in tasks:  # an UNIMPLEMENTED in warm-up surfaces here
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        cpu0, ccpu0, t0 = procfs.cpu_split(server_pid), time.process_time(), time.perf_counter()
        w.phase = 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w.done.wait(), duration)
        cpu1, ccpu1, t1 = procfs.cpu_split(server_pid), time.process_time(), time.perf_counter()
        w.phase = 2
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for t in tasks:
            t.cancel()
        waiter.cancel()
    lat = sorted(w.latencies)
    seconds = t1 - t0
    ops = w.ops
    return {
        "ops": ops,
        "seconds": seconds,
        "rate": ops / seconds if seconds > 0 else 0.0,
        "p50_ms": _percentile(lat, 0.50) * 1e3,
        "p99_ms": _percentile(lat, 0.99) * 1e3,
        "server_cpu_s": sum(cpu1) - sum(cpu0),
        "server_sys_s": cpu1[1] - cpu0[1],
        "client_cpu_s": ccpu1 - ccpu0,
        "errors": w.errors,
        "first_error": w.first_error,
    }


async def preload(conn: Conn, keys: list[bytes], batch: int = 100, parallel: int = 8) -> None:
    """Put keys with Txn batches (never timed)."""
    chunks = [keys[i : i + batch] for i in range(0, len(keys), batch)]
    it = iter(enumerate(chunks))

    async def worker() -> None:
        for i, chunk in it:
            await conn.unary(i, wire.TXN)(wire.put_batch(chunk), timeout=60)

    await asyncio.gather(*(worker() for _ in range(parallel)))


# ---------------------------------------------------------------- workloads
async def run(cmd: dict[str, Any]) -> dict[str, Any]:
    name: str = cmd["workload"]
    c: int = cmd["concurrency"]
    seq: int = cmd["seq"]  # unique per (target, run): new keys never collide across runs
    conn = Conn(cmd["endpoint"], min(cmd.get("channels", 4), c), cmd.get("token", ""))
    w = Window()
    extra: dict[str, Any] = {}
    cleanup: list[Callable[[], Any]] = []
    try:
        op = await _build(name, c, seq, cmd, conn, w, extra, cleanup)
        res = await drive(w, c, op, cmd["warmup"], cmd["duration"], cmd["server_pid"])
    except NotImplementedOnServer as exc:
        return {"skipped": f"not implemented on this server ({exc})"}
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        return {"skipped": f"not implemented on this server ({exc.details()})"}
    finally:
        for fn in cleanup:
            fn()
        await conn.close()
    if name == "watch":
        res["puts"], res["ops"] = res["ops"], w.extra
        res["rate"] = w.extra / res["seconds"] if res["seconds"] > 0 else 0.0
    res.update(extra)
    return res


async def _build(
    name: str,
    c: int,
    seq: int,
    cmd: dict[str, Any],
    conn: Conn,
    w: Window,
    extra: dict[str, Any],
    cleanup: list[Callable[[], Any]],
) -> Op:
    if name == "put":
        counter = itertools.count(seq << 32)
        put = [conn.unary(i, wire.PUT) for i in range(c)]

        async def op_put(i: int) -> bool:
            await put[i](wire.put(wire.key(b"p", next(counter))))
            return True

        return op_put

    if name == "put-same":
        put = [conn.unary(i, wire.PUT) for i in range(c)]
        req = wire.put(wire.key(b"s", 0))

        async def op_put_same(i: int) -> bool:
            await put[i](req)
            return True

        return op_put_same

    if name in ("get", "get-serializable"):
        keys = [wire.key(b"g", n) for n in range(1000)]
        await preload(conn, keys)
        reqs = [wire.get(k, name == "get-serializable") for k in keys]
        rng = [conn.unary(i, wire.RANGE) for i in range(c)]
        counter = itertools.count()

        async def op_get(i: int) -> bool:
            await rng[i](reqs[next(counter) % 1000])
            return True

        return op_get

    if name == "range-100":
        await preload(conn, [wire.key(b"r", n) for n in range(100)])
        req = wire.range_prefix(b"r")
        rng = [conn.unary(i, wire.RANGE) for i in range(c)]
        check = pb.RangeResponse.FromString(await rng[0](req))
        if check.count != 100:
            raise RuntimeError(f"range-100 returned {check.count} keys")

        async def op_range(i: int) -> bool:
            await rng[i](req)
            return True

        return op_range

    if name == "txn-cas":
        keys = [wire.key(b"c", (seq << 16) + i) for i in range(c)]
        await preload(conn, keys)
        swap = [(wire.cas(k, wire.VALUE, wire.VALUE_B), wire.cas(k, wire.VALUE_B, wire.VALUE)) for k in keys]
        state = [0] * c
        txn = [conn.unary(i, wire.TXN) for i in range(c)]
        failed = [0]
        extra["cas_failed"] = 0

        async def op_cas(i: int) -> bool:
            resp = pb.TxnResponse.FromString(await txn[i](swap[i][state[i]]))
            if resp.succeeded:
                state[i] ^= 1
            else:
                failed[0] += 1
                extra["cas_failed"] = failed[0]
            return True

        return op_cas

    if name == "delete":
        pool: int = cmd["pool"]
        keys = [wire.key(b"d", (seq << 32) + n) for n in range(pool)]
        await preload(conn, keys, parallel=16)
        deletes = iter([wire.delete(k) for k in keys])
        dele = [conn.unary(i, wire.DELETE) for i in range(c)]
        extra["pool"] = pool

        async def op_delete(i: int) -> bool:
            req = next(deletes, None)
            if req is None:
                return False
            await dele[i](req)
            return True

        return op_delete

    if name == "load":  # `pool` new keys, then stop: the load/restart test
        loads = iter([wire.put(wire.key(b"L", n)) for n in range(cmd["pool"])])
        put = [conn.unary(i, wire.PUT) for i in range(c)]

        async def op_load(i: int) -> bool:
            req = next(loads, None)
            if req is None:
                return False
            await put[i](req)
            return True

        return op_load

    if name == "watch":
        watchers: int = cmd.get("watchers", 64)
        wkey = wire.key(b"w", seq)
        calls = []
        for i in range(watchers):
            call = conn.stream(i, wire.WATCH)()
            await call.write(wire.watch_create(wkey))
            first = pb.WatchResponse.FromString(await call.read())
            if not first.created:
                raise RuntimeError(f"watch create answered {first}")
            calls.append(call)
        extra["watchers"] = watchers

        async def reader(call: Any) -> None:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    return
                n = len(pb.WatchResponse.FromString(msg).events)
                if w.phase == 1:
                    w.extra += n

        readers = [asyncio.create_task(reader(call)) for call in calls]

        def stop_watch() -> None:
            for t in readers:
                t.cancel()
            for call in calls:
                call.cancel()

        cleanup.append(stop_watch)
        put = [conn.unary(i, wire.PUT) for i in range(c)]
        req = wire.put(wkey)

        async def op_watch_put(i: int) -> bool:
            await put[i](req)
            return True

        return op_watch_put

    if name == "lease":
        grant = [conn.unary(i, wire.LEASE_GRANT) for i in range(c)]
        revoke = [conn.unary(i, wire.LEASE_REVOKE) for i in range(c)]
        streams: list[Any] = [None] * c

        def stop_streams() -> None:
            for s in streams:
                if s is not None:
                    s.cancel()

        cleanup.append(stop_streams)
        req_grant = wire.lease_grant(60)

        async def op_lease(i: int) -> bool:
            lease_id = pb.LeaseGrantResponse.FromString(await grant[i](req_grant)).ID
            s = streams[i]
            if s is None:
                s = streams[i] = conn.stream(i, wire.LEASE_KEEPALIVE)()
            await s.write(wire.lease_keepalive(lease_id))
            ka = await s.read()
            if ka is grpc.aio.EOF:
                raise RuntimeError("keep-alive stream ended")
            await revoke[i](wire.lease_revoke(lease_id))
            return True

        return op_lease

    raise ValueError(f"unknown workload {name!r}")


async def serve_stdin(handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] = run) -> None:
    """Answer one JSON command per stdin line with handle's JSON, until EOF or {"op": "quit"}."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            return
        try:
            out = await handle(cmd)
        except Exception as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def main() -> None:
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(serve_stdin())


if __name__ == "__main__":
    main()
