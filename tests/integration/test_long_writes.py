"""A write that walks many keys is applied in steps: atomic, other writes wait, the loop stays free."""

from __future__ import annotations

import asyncio
import gc
import time

from metastore_core.config import Config
from metastore_core.member.node import Node
from metastore_core.member.single import LONG_WORK
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.app import Server

from conftest import free_port

KEYS = 60_000
LOOP_CPU_MAX = 0.05  # seconds of CPU the loop may spend without a turn for others (a step ~2 ms)


def _config() -> Config:
    return Config(
        backend="memory",
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
    )


async def _load(node: Node, prefix: bytes, n: int) -> None:
    for i in range(0, n, 128):
        puts = [
            pb.RequestOp(request_put=pb.PutRequest(key=prefix + b"%06d" % j, value=b"v"))
            for j in range(i, min(i + 128, n))
        ]
        await node.write(pb.TxnRequest(success=puts))


class Ticker:
    """The most CPU the event loop's thread spent between two turns of a task that yields.

    A command applied in one go holds the loop for all of its work; in steps the loop turns
    every ~2 ms. CPU time, not wall time: on a machine whose other processes take the CPU
    for a while, waiting for a core is not the loop standing still."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task = asyncio.ensure_future(self._run())

    @classmethod
    async def start(cls) -> Ticker:
        ticker = cls()
        await asyncio.sleep(0.005)  # it is ticking before the test goes on
        return ticker

    async def _run(self) -> None:
        clock = time.thread_time
        last = clock()
        while True:
            await asyncio.sleep(0.001)
            now = clock()
            self.worst = max(self.worst, now - last)
            last = now

    def stop(self) -> float:
        self.task.cancel()
        return self.worst


async def test_a_long_delete_is_atomic_lets_others_wait_and_leaves_the_loop_free() -> None:
    server = Server(_config())
    await server.start()
    node = server.node
    assert node is not None
    assert KEYS > LONG_WORK  # long enough to be applied in steps
    try:
        await _load(node, b"del/", KEYS)
        server.gc_pauses.after_load(KEYS)  # as a start that loads that many keys does
        server.gc_pauses.install()
        before = (await node.range(pb.RangeRequest(key=b"\0"))).header.revision
        ticker = await Ticker.start()
        delete = asyncio.ensure_future(node.write(pb.DeleteRangeRequest(key=b"del/", range_end=b"del0")))
        await asyncio.sleep(0.01)
        assert not delete.done()  # in steps: still running
        # meanwhile reads see the store as it was, and a write waits its turn
        seen = await node.range(pb.RangeRequest(key=b"del/", range_end=b"del0", count_only=True))
        assert seen.count == KEYS and seen.header.revision == before
        put = asyncio.ensure_future(node.write(pb.PutRequest(key=b"other", value=b"x")))
        deleted = await delete
        put_resp = await put
        worst = ticker.stop()
        assert deleted.deleted == KEYS and deleted.header.revision == before + 1
        assert put_resp.header.revision == before + 2  # after the delete, not inside it
        after = await node.range(pb.RangeRequest(key=b"del/", range_end=b"del0", count_only=True))
        assert after.count == 0
        assert worst < LOOP_CPU_MAX, f"the loop ran {worst * 1000:.0f} ms of CPU without a turn for others"
    finally:
        server.gc_pauses.uninstall()
        gc.unfreeze()
        await server.stop()


async def test_a_write_txn_reading_many_keys_is_applied_in_steps() -> None:
    server = Server(_config())
    await server.start()
    node = server.node
    assert node is not None
    try:
        await _load(node, b"r/", KEYS)
        server.gc_pauses.after_load(KEYS)
        server.gc_pauses.install()
        ticker = await Ticker.start()
        resp = await node.write(
            pb.TxnRequest(
                success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=b"marker", value=b"m")),
                    pb.RequestOp(request_range=pb.RangeRequest(key=b"r/", range_end=b"r0")),
                    pb.RequestOp(request_range=pb.RangeRequest(key=b"r/", range_end=b"r0", count_only=True)),
                    pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"r/", range_end=b"r0")),
                ]
            )
        )
        worst = ticker.stop()
        ranged = resp.responses[1].response_range
        assert len(ranged.kvs) == KEYS and ranged.count == KEYS
        assert resp.responses[2].response_range.count == KEYS
        assert resp.responses[3].response_delete_range.deleted == KEYS
        assert ranged.header.revision == resp.header.revision  # the range sees the txn's own put
        assert worst < LOOP_CPU_MAX, f"the loop ran {worst * 1000:.0f} ms of CPU without a turn for others"
    finally:
        server.gc_pauses.uninstall()
        gc.unfreeze()
        await server.stop()
