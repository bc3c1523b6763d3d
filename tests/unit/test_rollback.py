"""A write that fails half-way leaves nothing behind: not in memory, not on disk (consensus rule 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from metastore_core.config import Config
from metastore_core.engine.apply import Applier
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage.leveldb import LevelDBStorage


def op_put(k: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"v"))


async def test_half_applied_txn_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(LevelDBStorage(tmp_path / "db"), Config())
    node.load()
    await node.write(pb.PutRequest(key=b"before", value=b"1"))
    real_put = Applier._put
    calls = 0

    def flaky_put(self: Applier, txn: Any, r: pb.PutRequest) -> pb.PutResponse:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("injected fault after the first put of the txn")
        return real_put(self, txn, r)

    monkeypatch.setattr(Applier, "_put", flaky_put)
    with pytest.raises(RuntimeError, match="injected"):
        await node.write(pb.TxnRequest(success=[op_put(b"x1"), op_put(b"x2")]))
    monkeypatch.setattr(Applier, "_put", real_put)
    # nothing of the txn is visible, and the next write takes the next revision and index
    assert (await node.range(pb.RangeRequest(key=b"x1"))).count == 0
    assert node.figures.revision == 2
    resp = await node.write(pb.PutRequest(key=b"after", value=b"1"))
    assert resp.header.revision == 3
    assert node.status().raftIndex == 2  # the failed entry was dropped with what it staged
    node.close()
    again = Node(LevelDBStorage(tmp_path / "db"), Config())
    again.load()
    everything = await again.range(pb.RangeRequest(key=b"\0", range_end=b"\0"))
    assert [kv.key for kv in everything.kvs] == [b"after", b"before"]
    assert again.status().raftIndex == 2
    again.close()
