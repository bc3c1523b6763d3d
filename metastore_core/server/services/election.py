"""v3electionpb.Election: etcd's server-side leader election over KV and leases."""

from __future__ import annotations

from collections.abc import AsyncIterator

from metastore_core import errors
from metastore_core.engine.entry import AuthInfo
from metastore_core.member.concurrency import Contenders, created_at, op
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.v3electionpb import v3election_pb2 as epb
from metastore_core.server.methods import Call


class ElectionService:
    """Campaign waits to lead; Proclaim, Leader, Observe and Resign as etcd has them."""

    def __init__(self, node: Node, contenders: Contenders) -> None:
        self.node = node
        self.contenders = contenders

    async def Campaign(self, r: epb.CampaignRequest, call: Call) -> epb.CampaignResponse:
        if not r.name:
            raise errors.EmptyKey()
        if not self.node.lease_exists(r.lease):
            raise errors.RecipeLeaseNotFound()
        prefix = r.name + b"/"
        key = prefix + b"%x" % r.lease
        rev, existing = await self.contenders.join(prefix, key, r.value, r.lease, call.auth)
        if existing is not None and existing.value != r.value:
            await self._proclaim(key, rev, r.lease, r.value, call.auth)
        await self.contenders.wait_turn(prefix, rev, call.auth)
        resp = epb.CampaignResponse(leader=epb.LeaderKey(name=r.name, key=key, rev=rev, lease=r.lease))
        self.node.header(resp.header)
        return resp

    async def _proclaim(self, key: bytes, rev: int, lease: int, value: bytes, auth: AuthInfo | None) -> bool:
        txn = pb.TxnRequest(
            compare=[created_at(key, rev)], success=[op(pb.PutRequest(key=key, value=value, lease=lease))]
        )
        return bool((await self.node.write(txn, auth)).succeeded)

    async def Proclaim(self, r: epb.ProclaimRequest, call: Call) -> epb.ProclaimResponse:
        ld = r.leader
        if not await self._proclaim(ld.key, ld.rev, ld.lease, r.value, call.auth):
            raise errors.NotLeader()
        resp = epb.ProclaimResponse()
        self.node.header(resp.header)
        return resp

    async def Leader(self, r: epb.LeaderRequest, call: Call) -> epb.LeaderResponse:
        kv = await self.contenders.oldest(r.name + b"/", call.auth)
        if kv is None:
            raise errors.NoLeader()
        resp = epb.LeaderResponse(kv=kv)
        self.node.header(resp.header)
        return resp

    async def Observe(self, r: epb.LeaderRequest, call: Call) -> AsyncIterator[epb.LeaderResponse]:
        prefix = r.name + b"/"
        last: tuple[bytes, int] | None = None
        while True:
            kv = await self.contenders.oldest(prefix, call.auth)
            if kv is not None and (kv.key, kv.mod_revision) != last:
                last = (kv.key, kv.mod_revision)
                resp = epb.LeaderResponse(kv=kv)
                self.node.header(resp.header)
                yield resp
            await self.contenders.wait_change(prefix)

    async def Resign(self, r: epb.ResignRequest, call: Call) -> epb.ResignResponse:
        ld = r.leader
        txn = pb.TxnRequest(
            compare=[created_at(ld.key, ld.rev)], success=[op(pb.DeleteRangeRequest(key=ld.key))]
        )
        done = await self.node.write(txn, call.auth)
        resp = epb.ResignResponse()
        self.node.header(resp.header, done.header.revision)
        return resp
