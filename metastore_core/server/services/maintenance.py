"""etcdserverpb.Maintenance: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from metastore_core import errors
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.methods import Call


class MaintenanceService:
    """etcd's maintenance RPCs; the work is the node's (whole-store reads run off the loop)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def Status(self, r: pb.StatusRequest, call: Call) -> pb.StatusResponse:
        return self.node.status()

    async def Alarm(self, r: pb.AlarmRequest, call: Call) -> pb.AlarmResponse:
        return await self.node.alarm(r, call.auth)

    async def Defragment(self, r: pb.DefragmentRequest, call: Call) -> pb.DefragmentResponse:
        return await self.node.defragment()

    async def Hash(self, r: pb.HashRequest, call: Call) -> pb.HashResponse:
        return await self.node.hash()

    async def HashKV(self, r: pb.HashKVRequest, call: Call) -> pb.HashKVResponse:
        return await self.node.hash_kv(r)

    async def Snapshot(self, r: pb.SnapshotRequest, call: Call) -> AsyncIterator[pb.SnapshotResponse]:
        async with aclosing(self.node.snapshot()) as blobs:
            async for resp in blobs:
                yield resp

    async def MoveLeader(self, r: pb.MoveLeaderRequest, call: Call) -> pb.MoveLeaderResponse:
        return await self.node.move_leader(r)

    async def Downgrade(self, r: pb.DowngradeRequest, call: Call) -> pb.DowngradeResponse:
        raise errors.Unimplemented("metastore: Downgrade is not supported")
