"""v3lockpb.Lock: etcd's server-side mutex over KV and leases."""

from __future__ import annotations

import asyncio

import grpc

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.v3lockpb import v3lock_pb2 as lockpb
from metastore_core.server.concurrency import Contenders
from metastore_core.server.node import Node

SESSION_TTL = 60  # etcd grants a 60 s lease when the request names none, and never renews it


class LockService:
    """Lock blocks until the caller holds `name`; Unlock deletes the returned key."""

    def __init__(self, node: Node, contenders: Contenders) -> None:
        self.node = node
        self.contenders = contenders

    async def Lock(self, r: lockpb.LockRequest, ctx: grpc.aio.ServicerContext) -> lockpb.LockResponse:
        if not r.name:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
        lease = r.lease
        if lease == 0:
            lease = (await self.node.write(pb.LeaseGrantRequest(TTL=SESSION_TTL))).ID
        elif lease < 0 or self.node.lessor.get(lease) is None:
            # etcd answers this with the raw error, so the code is Unknown
            await ctx.abort(grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")
        prefix = r.name + b"/"
        key = prefix + b"%x" % lease
        my_rev, _ = await self.contenders.join(prefix, key, b"", lease)
        try:
            await self.contenders.wait_turn(prefix, my_rev)
        except asyncio.CancelledError:
            # the caller gave up: leave no key behind to block the others
            await self.node.write(pb.DeleteRangeRequest(key=key))
            raise
        resp = lockpb.LockResponse(key=key)
        self.node.header(resp.header)
        return resp

    async def Unlock(self, r: lockpb.UnlockRequest, ctx: grpc.aio.ServicerContext) -> lockpb.UnlockResponse:
        if not r.key:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
        done = await self.node.write(pb.DeleteRangeRequest(key=r.key))
        resp = lockpb.UnlockResponse()
        self.node.header(resp.header, done.header.revision)
        return resp
