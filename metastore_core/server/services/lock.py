"""v3lockpb.Lock: etcd's server-side mutex over KV and leases (member/concurrency.py)."""

from __future__ import annotations

import asyncio

from metastore_core import errors
from metastore_core.member.concurrency import Contenders
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.v3lockpb import v3lock_pb2 as lockpb
from metastore_core.server.methods import Call

SESSION_TTL = 60  # etcd grants a 60 s lease when the request names none, and never renews it


class LockService:
    """Lock blocks until the caller holds `name`; Unlock deletes the returned key."""

    def __init__(self, node: Node, contenders: Contenders) -> None:
        self.node = node
        self.contenders = contenders

    async def Lock(self, r: lockpb.LockRequest, call: Call) -> lockpb.LockResponse:
        if not r.name:
            raise errors.EmptyKey()
        lease = r.lease
        if lease == 0:
            lease = (await self.node.lease_grant(pb.LeaseGrantRequest(TTL=SESSION_TTL), call.auth)).ID
        elif not self.node.lease_exists(lease):
            raise errors.RecipeLeaseNotFound()  # etcd answers with the raw error: code Unknown
        prefix = r.name + b"/"
        key = prefix + b"%x" % lease
        my_rev, _ = await self.contenders.join(prefix, key, b"", lease, call.auth)
        try:
            await self.contenders.wait_turn(prefix, my_rev, call.auth)
        except asyncio.CancelledError:
            # the caller gave up: leave no key behind to block the others
            await self.node.write(pb.DeleteRangeRequest(key=key), call.auth)
            raise
        resp = lockpb.LockResponse(key=key)
        self.node.header(resp.header)
        return resp

    async def Unlock(self, r: lockpb.UnlockRequest, call: Call) -> lockpb.UnlockResponse:
        if not r.key:
            raise errors.EmptyKey()
        done = await self.node.write(pb.DeleteRangeRequest(key=r.key), call.auth)
        resp = lockpb.UnlockResponse()
        self.node.header(resp.header, done.header.revision)
        return resp
