"""etcdserverpb.KV: check the request, call the node, return."""

from __future__ import annotations

from metastore_core import errors
from metastore_core.engine import validate as v
from metastore_core.engine.validate import Limits
from metastore_core.engine.wire import Encoded
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.methods import Call


class KVService:
    """Range, Put, DeleteRange, Txn, Compact."""

    def __init__(self, node: Node, limits: Limits) -> None:
        self.node = node
        self.limits = limits

    def _check_size(self, r: pb.PutRequest | pb.TxnRequest) -> None:
        if r.ByteSize() > self.limits.max_request_bytes:
            raise errors.RequestTooLarge()

    async def Range(self, r: pb.RangeRequest, call: Call) -> pb.RangeResponse | Encoded:
        v.check_range(r, self.limits)
        return await self.node.read(r, call.auth)

    async def Put(self, r: pb.PutRequest, call: Call) -> pb.PutResponse:
        v.check_put(r, self.limits)
        self._check_size(r)
        return await self.node.write(r, call.auth)

    async def DeleteRange(self, r: pb.DeleteRangeRequest, call: Call) -> pb.DeleteRangeResponse:
        v.check_delete(r, self.limits)
        return await self.node.write(r, call.auth)

    async def Txn(self, r: pb.TxnRequest, call: Call) -> pb.TxnResponse | Encoded:
        v.check_txn(r, self.limits)
        self._check_size(r)
        return await self.node.txn(r, call.auth)

    async def Compact(self, r: pb.CompactionRequest, call: Call) -> pb.CompactionResponse:
        v.check_compaction(r)
        return await self.node.write(r, call.auth)
