"""Group commit through a real Node: lone writes go inline, concurrent ones share a batch on the
writer thread, a slow disk keeps writes off the event loop, a failed batch acknowledges nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from metastore_core import errors
from metastore_core.config import Config
from metastore_core.engine.ranges import range_at
from metastore_core.member import committer
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage.base import Write
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine


class CountingStorage(MemoryStorage):
    """The in-memory backend, counting batch writes and optionally slow, like a busy disk."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.delay = 0.0

    def write(self, batch: Sequence[Write], *, sync: bool = True) -> None:
        if self.delay:
            time.sleep(self.delay)
        super().write(batch, sync=sync)
        self.writes += 1


def node_on(storage: MemoryStorage) -> Node:
    node = Node(storage, Config(backend="memory"))
    node.load()
    return node


async def count(node: Node, key: bytes) -> int:
    return (await node.range(pb.RangeRequest(key=key))).count


def on_disk(storage: MemoryStorage, *keys: bytes) -> list[int]:
    """What a restart would find: each key's count in an engine freshly loaded from storage."""
    store = Engine(storage).store
    return [range_at(store, pb.RangeRequest(key=k), store.committed_rev).count for k in keys]


async def test_concurrent_writes_share_batches_and_each_is_durable_on_return() -> None:
    storage = CountingStorage()
    node = node_on(storage)
    await node.write(pb.PutRequest(key=b"first", value=b"x"))
    before = storage.writes
    resps = await asyncio.gather(
        *(node.write(pb.PutRequest(key=b"k%02d" % i, value=b"v")) for i in range(50))
    )
    assert sorted(r.header.revision for r in resps) == list(range(3, 53))
    assert storage.writes - before < 50  # writes that came together shared batches
    assert on_disk(storage, *(b"k%02d" % i for i in range(50))) == [1] * 50
    node.close()


async def test_a_slow_disk_keeps_later_writes_off_the_event_loop() -> None:
    storage = CountingStorage()
    node = node_on(storage)
    storage.delay = committer.SLOW_WRITE_S + 0.02
    await node.write(pb.PutRequest(key=b"a", value=b"1"))  # a lone write: inline, and slow
    await asyncio.sleep(2 * committer.IDLE_S)
    task = asyncio.create_task(node.write(pb.PutRequest(key=b"b", value=b"2")))
    await asyncio.sleep(0.005)
    # The loop runs on while the disk works: other requests are served meanwhile, and
    # readers do not see the write before it is durable.
    assert not task.done()
    assert await count(node, b"b") == 0
    await task
    assert await count(node, b"b") == 1
    node.close()


async def test_a_lone_write_after_a_quiet_spell_is_durable_when_it_returns() -> None:
    storage = CountingStorage()
    node = node_on(storage)
    for i in range(3):
        await asyncio.sleep(2 * committer.IDLE_S)
        resp = await node.write(pb.PutRequest(key=b"k%d" % i, value=b"v"))
        assert resp.header.revision == i + 2
        assert on_disk(storage, b"k%d" % i) == [1]
    node.close()


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "writer-thread"])
@pytest.mark.parametrize(
    ("error", "alarms", "remedy"),
    [
        ("No space left on device", ["NOSPACE"], "alarm is disarmed"),
        ("Input/output error", [], "takes writes again"),  # a failing disk is not corrupt data
        ("Read-only file system", [], "takes writes again"),
    ],
    ids=["full", "eio", "read-only"],
)
async def test_a_failed_batch_acknowledges_none_of_its_writes(
    inline: bool, error: str, alarms: list[str], remedy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not inline:
        monkeypatch.setattr(committer, "IDLE_S", 1e9)  # never idle long enough: always the thread
    storage = CountingStorage()
    node = node_on(storage)
    storage.fail_next_write = OSError(f"IO error: 000003.log: {error}")
    results = await asyncio.gather(
        *(node.write(pb.PutRequest(key=b"k%d" % i, value=b"v")) for i in range(5)), return_exceptions=True
    )
    # The batch's own writes fail UNAVAILABLE; later ones meet the alarm the failure raised.
    assert isinstance(results[0], errors.StorageFailed) and "storage failed" in str(results[0])
    assert remedy in str(results[0])
    assert all(isinstance(r, (errors.StorageFailed, errors.NoSpace)) for r in results), results
    assert [await count(node, b"k%d" % i) for i in range(5)] == [0] * 5
    assert node.figures.alarm_names() == alarms  # raised through apply before the writers heard
    assert on_disk(storage, *(b"k%d" % i for i in range(5))) == [0] * 5
    node.close()
