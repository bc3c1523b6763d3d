"""A write that fails half-way leaves nothing behind: not in memory, not on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from metastore_core.config import Config
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.node import Node
from metastore_core.storage.leveldb import LevelDBStorage


def op_put(k: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"v"))


def test_half_applied_txn_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        node = Node(LevelDBStorage(tmp_path / "db"), Config())
        node.load()
        await node.write(pb.PutRequest(key=b"before", value=b"1"))
        real_put = node.applier._put
        calls = 0

        def flaky_put(txn: Any, r: pb.PutRequest) -> pb.PutResponse:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise RuntimeError("injected fault after the first put of the txn")
            return real_put(txn, r)

        monkeypatch.setattr(node.applier, "_put", flaky_put)
        with pytest.raises(RuntimeError, match="injected"):
            await node.write(pb.TxnRequest(success=[op_put(b"x1"), op_put(b"x2")]))
        monkeypatch.setattr(node.applier, "_put", real_put)
        # nothing of the txn is visible, and the next write takes the next revision
        assert node.store.applied_rev == node.store.committed_rev == 2
        assert node.store.index.get(b"x1") is None
        resp = await node.write(pb.PutRequest(key=b"after", value=b"1"))
        assert resp.header.revision == 3
        node.close()
        again = Node(LevelDBStorage(tmp_path / "db"), Config())
        again.load()
        keys = [k for k, _, _ in again.store.live(b"\0", b"\0", again.store.committed_rev)]
        assert keys == [b"after", b"before"]
        again.close()

    asyncio.run(main())
