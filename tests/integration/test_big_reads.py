"""Big reads take turns (one is built at a time); small reads never wait for them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from metastore_core import errors
from metastore_core.config import Config
from metastore_core.engine import reads
from metastore_core.engine.reads import Steps
from metastore_core.engine.wire import Encoded
from metastore_core.member import node as node_module
from metastore_core.member import steps
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.app import Server

from conftest import free_port

KEYS = 3_000
T = TypeVar("T")


def _range(reply: pb.RangeResponse | Encoded) -> pb.RangeResponse:
    return pb.RangeResponse.FromString(reply.data) if isinstance(reply, Encoded) else reply


def _txn(reply: pb.TxnResponse | Encoded) -> pb.TxnResponse:
    return pb.TxnResponse.FromString(reply.data) if isinstance(reply, Encoded) else reply


@contextlib.asynccontextmanager
async def _loaded() -> AsyncIterator[Node]:
    """A server holding KEYS keys k00000.. with values v0.., big reads from 1,000 keys, and
    every step of a read a turn of the loop (so reads overlap in time)."""
    server = Server(
        Config(
            backend="memory",
            listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
            listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
        )
    )
    await server.start()
    node = server.node
    assert node is not None
    try:
        for i in range(0, KEYS, 128):
            puts = [
                pb.RequestOp(request_put=pb.PutRequest(key=b"k%05d" % j, value=b"v%d" % j))
                for j in range(i, min(i + 128, KEYS))
            ]
            await node.write(pb.TxnRequest(success=puts))
        yield node
    finally:
        await server.stop()


@pytest.fixture(autouse=True)
def small_big_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "BIG_READ_KEYS", 1_000)
    monkeypatch.setattr(reads, "STEP", 25)
    monkeypatch.setattr(steps, "SLICE_S", 0.0)


async def test_big_reads_take_turns_and_small_ones_do_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    building, most = 0, 0  # big replies being built at once

    def counted(make: Callable[..., Steps[T]]) -> Callable[..., Steps[T]]:
        def wrapper(*args: Any) -> Steps[T]:
            nonlocal building, most
            big = args[1].range_end == b"l"  # the txn's too: txn_steps reads through range_steps
            building += big
            most = max(most, building)
            try:
                return (yield from make(*args))
            finally:
                building -= big

        return wrapper

    monkeypatch.setattr(reads, "range_steps", counted(reads.range_steps))
    async with _loaded() as node:
        done: list[tuple[str, float]] = []

        async def timed(name: str, read: Awaitable[T]) -> T:
            reply = await read
            done.append((name, time.monotonic()))
            return reply

        everything = pb.RangeRequest(key=b"k", range_end=b"l")
        txn = pb.TxnRequest(success=[pb.RequestOp(request_range=everything)])
        small = pb.RangeRequest(key=b"k00010", range_end=b"k00020")
        big_1, big_2, big_txn, few, one = await asyncio.gather(
            timed("big-1", node.read(everything)),
            timed("big-2", node.read(everything)),
            timed("big-txn", node.txn(txn)),
            timed("small", node.read(small)),
            timed("get", node.read(pb.RangeRequest(key=b"k00042"))),
        )
        for reply in (_range(big_1), _range(big_2), _txn(big_txn).responses[0].response_range):
            assert reply.count == KEYS and len(reply.kvs) == KEYS
            assert reply.kvs[1234].key == b"k01234" and reply.kvs[1234].value == b"v1234"
        assert [kv.key for kv in _range(few).kvs] == [b"k%05d" % j for j in range(10, 20)]
        assert _range(one).kvs[0].value == b"v42"
        order = [name for name, _ in sorted(done, key=lambda d: d[1])]
        # one big reply is built at a time, in arrival order; small reads are not queued behind
        assert most == 1
        assert order[:2] == ["small", "get"] or order[:2] == ["get", "small"]
        assert order[2:] == ["big-1", "big-2", "big-txn"]


async def test_a_big_read_that_waited_for_its_turn_sees_a_compaction_made_meanwhile() -> None:
    """Its revision is checked once its turn comes: a read at a revision compacted while it
    waited is refused, never answered from a half-compacted history."""
    async with _loaded() as node:
        old = node.figures.revision
        await node.write(pb.PutRequest(key=b"k00001", value=b"new"))
        everything = pb.RangeRequest(key=b"k", range_end=b"l")
        first = asyncio.ensure_future(node.read(everything))
        waiting = asyncio.ensure_future(node.read(pb.RangeRequest(key=b"k", range_end=b"l", revision=old)))
        await asyncio.sleep(0)  # both started: the first builds, the second waits for its turn
        await node.write(pb.CompactionRequest(revision=node.figures.revision))
        assert _range(await first).count == KEYS
        with pytest.raises(errors.Compacted):
            await waiting
