"""The member's write gate and failure policy, through the Node's public calls only."""

from __future__ import annotations

import asyncio

import pytest

from metastore_core import errors
from metastore_core.config import Config
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage.memory import MemoryStorage

A = pb.AlarmRequest


def node_on(storage: MemoryStorage, **cfg: object) -> Node:
    node = Node(storage, Config(backend="memory", **cfg))  # type: ignore[arg-type]
    node.load()
    return node


async def count(node: Node, key: bytes) -> int:
    return (await node.range(pb.RangeRequest(key=key))).count


def read_only_txn() -> pb.TxnRequest:
    return pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"k"))])


async def test_a_failed_batch_raises_an_alarm_refuses_writes_and_recovers_after_disarm() -> None:
    storage = MemoryStorage()
    node = node_on(storage)
    await node.write(pb.PutRequest(key=b"a", value=b"1"))
    storage.fail_next_write = OSError("IO error: 000003.log: No space left on device")
    with pytest.raises(errors.StorageFailed):
        await node.write(pb.PutRequest(key=b"b", value=b"2"))  # never acknowledged
    assert [a.alarm for a in (await node.alarm(A(action=A.GET))).alarms] == [pb.NOSPACE]
    with pytest.raises(errors.NoSpace):
        await node.write(pb.PutRequest(key=b"c", value=b"3"))
    with pytest.raises(errors.StorageFailed, match="disarm"):
        await node.write(pb.DeleteRangeRequest(key=b"a"))
    assert await count(node, b"a") == 1  # reads go on
    assert any("storage failed" in e for e in node.status().errors)
    assert node.storage_failure() is not None
    for a in (await node.alarm(A(action=A.GET))).alarms:
        await node.alarm(A(action=A.DEACTIVATE, memberID=a.memberID, alarm=a.alarm))
    assert node.storage_failure() is None and node.figures.storage_recoveries_total == 1
    assert await count(node, b"b") == 0  # the failed write is gone
    resp = await node.write(pb.PutRequest(key=b"b", value=b"2"))
    assert resp.header.revision == 3
    assert (await node.alarm(A(action=A.GET))).alarms == []
    node.close()


async def test_quota_and_corrupt_alarm_gate_writes() -> None:
    node = node_on(MemoryStorage(), quota_backend_bytes=5000)
    with pytest.raises(errors.NoSpace):
        for i in range(100):
            await node.write(pb.PutRequest(key=b"k%d" % i, value=b"x" * 100))
    assert 10 < i < 60
    assert node.figures.alarm_names() == ["NOSPACE"]
    await node.write(pb.DeleteRangeRequest(key=b"k", range_end=b"l"))  # deletes pass
    await node.alarm(A(action=A.DEACTIVATE, memberID=node.figures.member_id, alarm=pb.NOSPACE))
    await node.alarm(A(action=A.ACTIVATE, memberID=0, alarm=pb.CORRUPT))
    with pytest.raises(errors.Corrupt):
        await node.write(pb.DeleteRangeRequest(key=b"k0"))
    await node.write(read_only_txn())  # a txn that only reads passes
    node.close()


async def test_corruption_seen_by_a_read_refuses_writes_at_once_and_raises_the_alarm() -> None:
    node = node_on(MemoryStorage())
    await node.write(pb.PutRequest(key=b"a", value=b"1"))
    node.report_corruption(ValueError("CRC mismatch in record b'k...'"))
    with pytest.raises(errors.Corrupt):  # before the alarm's entry is even applied
        await node.write(pb.PutRequest(key=b"b", value=b"2"))
    await node.write(read_only_txn())
    assert await count(node, b"a") == 1
    for _ in range(100):
        if node.figures.alarm_names():
            break
        await asyncio.sleep(0.01)  # the alarm is proposed in the background
    assert node.figures.alarm_names() == ["CORRUPT"]
    await node.alarm(A(action=A.DEACTIVATE, memberID=node.figures.member_id, alarm=pb.CORRUPT))
    await node.write(pb.PutRequest(key=b"b", value=b"2"))  # the operator disarmed it
    node.close()


async def test_memory_at_its_cap_refuses_writes_that_add_data_only() -> None:
    node = node_on(MemoryStorage())
    await node.write(pb.PutRequest(key=b"a", value=b"1"))
    node.set_memory_full(True, 1000)
    for command in (pb.PutRequest(key=b"b", value=b"2"), pb.LeaseGrantRequest(TTL=5)):
        with pytest.raises(errors.MemoryLimit, match="--max-memory"):
            await node.write(command)
    with pytest.raises(errors.MemoryLimit):
        await node.lease_grant(pb.LeaseGrantRequest(TTL=5))
    await node.write(read_only_txn())
    assert await count(node, b"a") == 1
    await node.write(pb.DeleteRangeRequest(key=b"a"))  # deletes are how an operator gets out
    node.set_memory_full(False, 1000)
    await node.write(pb.PutRequest(key=b"b", value=b"2"))
    node.close()


async def test_alarm_requests_are_checked() -> None:
    node = node_on(MemoryStorage())
    with pytest.raises(errors.InvalidRequest, match="alarm type 99"):
        await node.alarm(A(action=A.ACTIVATE, alarm=99))  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequest, match="NONE"):
        await node.alarm(A(action=A.ACTIVATE, alarm=pb.NONE))
    with pytest.raises(errors.InvalidRequest, match="action 7"):
        await node.alarm(A(action=7, alarm=pb.NOSPACE))  # type: ignore[arg-type]
    assert (await node.alarm(A(action=A.GET))).alarms == []
    node.close()
