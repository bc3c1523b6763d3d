"""etcdserverpb.Maintenance: Status and Alarm (the rest grows with the maintenance work)."""

from __future__ import annotations

import grpc

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.node import ETCD_API_VERSION, Node

_LATER = "metastore: {} is not implemented yet"


class MaintenanceService:
    """What etcdctl endpoint status / alarm need, and clear refusals for the rest."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def Status(self, r: pb.StatusRequest, ctx: grpc.aio.ServicerContext) -> pb.StatusResponse:
        n = self.node
        size = n.storage.size()
        index = n.store.consistent_index
        resp = pb.StatusResponse(
            version=ETCD_API_VERSION,
            dbSize=size,
            dbSizeInUse=size,
            leader=n.store.ids.member_id,
            raftIndex=index,
            raftTerm=n.store.ids.raft_term,
            raftAppliedIndex=index,
            errors=n.alarms.describe(),
        )
        n.header(resp.header)
        return resp

    async def Alarm(self, r: pb.AlarmRequest, ctx: grpc.aio.ServicerContext) -> pb.AlarmResponse:
        n = self.node
        if r.action == pb.AlarmRequest.ACTIVATE:
            if n.alarms.activate(r.memberID, r.alarm):
                await n.committer.flush()
        elif r.action == pb.AlarmRequest.DEACTIVATE:
            if n.alarms.deactivate(r.memberID, r.alarm):
                await n.committer.flush()
        elif r.action != pb.AlarmRequest.GET:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, f"etcdserver: invalid alarm action {r.action}")
        # etcd answers alarms with no header at all
        return pb.AlarmResponse(alarms=n.alarms.get(r.alarm if r.action == pb.AlarmRequest.GET else pb.NONE))

    async def _later(self, ctx: grpc.aio.ServicerContext, name: str) -> None:
        await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, _LATER.format(name))

    async def Defragment(
        self, r: pb.DefragmentRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.DefragmentResponse:
        await self._later(ctx, "Defragment")
        raise AssertionError("unreachable")

    async def Hash(self, r: pb.HashRequest, ctx: grpc.aio.ServicerContext) -> pb.HashResponse:
        await self._later(ctx, "Hash")
        raise AssertionError("unreachable")

    async def HashKV(self, r: pb.HashKVRequest, ctx: grpc.aio.ServicerContext) -> pb.HashKVResponse:
        await self._later(ctx, "HashKV")
        raise AssertionError("unreachable")

    async def Snapshot(self, r: pb.SnapshotRequest, ctx: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        await self._later(ctx, "Snapshot")
        yield pb.SnapshotResponse()

    async def MoveLeader(
        self, r: pb.MoveLeaderRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.MoveLeaderResponse:
        await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
        raise AssertionError("unreachable")

    async def Downgrade(self, r: pb.DowngradeRequest, ctx: grpc.aio.ServicerContext) -> pb.DowngradeResponse:
        await self._later(ctx, "Downgrade")
        raise AssertionError("unreachable")
