"""v3electionpb.Election: etcd's server-side leader election over KV and leases."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.v3electionpb import v3election_pb2 as epb
from metastore_core.server.concurrency import Contenders, created_at, op
from metastore_core.server.node import Node

NO_LEADER = "election: no leader"
NOT_LEADER = "election: not leader"


class ElectionService:
    """Campaign waits to lead; Proclaim, Leader, Observe and Resign as etcd has them."""

    def __init__(self, node: Node, contenders: Contenders) -> None:
        self.node = node
        self.contenders = contenders

    async def Campaign(self, r: epb.CampaignRequest, ctx: grpc.aio.ServicerContext) -> epb.CampaignResponse:
        if not r.name:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
        if r.lease <= 0 or self.node.lessor.get(r.lease) is None:
            await ctx.abort(grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")
        prefix = r.name + b"/"
        key = prefix + b"%x" % r.lease
        rev, existing = await self.contenders.join(prefix, key, r.value, r.lease)
        if existing is not None and existing.value != r.value:
            await self._proclaim(key, rev, r.lease, r.value)
        await self.contenders.wait_turn(prefix, rev)
        resp = epb.CampaignResponse(leader=epb.LeaderKey(name=r.name, key=key, rev=rev, lease=r.lease))
        self.node.header(resp.header)
        return resp

    async def _proclaim(self, key: bytes, rev: int, lease: int, value: bytes) -> bool:
        resp = await self.node.write(
            pb.TxnRequest(
                compare=[created_at(key, rev)],
                success=[op(pb.PutRequest(key=key, value=value, lease=lease))],
            )
        )
        return bool(resp.succeeded)

    async def Proclaim(self, r: epb.ProclaimRequest, ctx: grpc.aio.ServicerContext) -> epb.ProclaimResponse:
        ld = r.leader
        if not await self._proclaim(ld.key, ld.rev, ld.lease, r.value):
            await ctx.abort(grpc.StatusCode.UNKNOWN, NOT_LEADER)
        resp = epb.ProclaimResponse()
        self.node.header(resp.header)
        return resp

    async def Leader(self, r: epb.LeaderRequest, ctx: grpc.aio.ServicerContext) -> epb.LeaderResponse:
        kv = self.contenders.oldest(r.name + b"/")
        if kv is None:
            await ctx.abort(grpc.StatusCode.UNKNOWN, NO_LEADER)
        resp = epb.LeaderResponse(kv=kv)
        self.node.header(resp.header)
        return resp

    async def Observe(
        self, r: epb.LeaderRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[epb.LeaderResponse]:
        prefix = r.name + b"/"
        last: tuple[bytes, int] | None = None
        while True:
            kv = self.contenders.oldest(prefix)
            if kv is not None and (kv.key, kv.mod_revision) != last:
                last = (kv.key, kv.mod_revision)
                resp = epb.LeaderResponse(kv=kv)
                self.node.header(resp.header)
                yield resp
            await self.contenders.wait_change(prefix)

    async def Resign(self, r: epb.ResignRequest, ctx: grpc.aio.ServicerContext) -> epb.ResignResponse:
        ld = r.leader
        done = await self.node.write(
            pb.TxnRequest(
                compare=[created_at(ld.key, ld.rev)], success=[op(pb.DeleteRangeRequest(key=ld.key))]
            )
        )
        resp = epb.ResignResponse()
        self.node.header(resp.header, done.header.revision)
        return resp
