"""etcdserverpb.KV: check the request, call the engine, fill the header."""

from __future__ import annotations

import grpc

from metastore_core import errors
from metastore_core.engine import validate as v
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.node import Node


class KVService:
    """Range, Put, DeleteRange, Txn, Compact."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.limits = node.limits

    def _check_size(self, r: pb.PutRequest | pb.TxnRequest) -> None:
        if r.ByteSize() > self.limits.max_request_bytes:
            raise errors.RequestTooLarge()

    async def Range(self, r: pb.RangeRequest, ctx: grpc.aio.ServicerContext) -> pb.RangeResponse:
        v.check_range(r, self.limits)
        return self.node.range(r)

    async def Put(self, r: pb.PutRequest, ctx: grpc.aio.ServicerContext) -> pb.PutResponse:
        v.check_put(r, self.limits)
        self._check_size(r)
        return await self.node.write(r)

    async def DeleteRange(
        self, r: pb.DeleteRangeRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.DeleteRangeResponse:
        v.check_delete(r, self.limits)
        return await self.node.write(r)

    async def Txn(self, r: pb.TxnRequest, ctx: grpc.aio.ServicerContext) -> pb.TxnResponse:
        v.check_txn(r, self.limits)
        self._check_size(r)
        return await self.node.write(r)

    async def Compact(self, r: pb.CompactionRequest, ctx: grpc.aio.ServicerContext) -> pb.CompactionResponse:
        v.check_compaction(r)
        return await self.node.write(r)
