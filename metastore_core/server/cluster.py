"""etcdserverpb.Cluster for one member (cluster mode comes later)."""

from __future__ import annotations

import grpc

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.node import Node

_NO_CLUSTER = "metastore: member changes need cluster mode, which this daemon does not run"


class ClusterService:
    """MemberList tells the truth about the one member; changes are refused clearly."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def member(self) -> pb.Member:
        cfg = self.node.config
        return pb.Member(
            ID=self.node.store.ids.member_id,
            name=cfg.name,
            peerURLs=["http://localhost:2380"],
            clientURLs=cfg.client_urls,
        )

    async def MemberList(
        self, r: pb.MemberListRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.MemberListResponse:
        resp = pb.MemberListResponse(members=[self.member()])
        self.node.header(resp.header, 0)  # etcd sends no revision here
        return resp

    async def MemberAdd(self, r: pb.MemberAddRequest, ctx: grpc.aio.ServicerContext) -> pb.MemberAddResponse:
        await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, _NO_CLUSTER)
        raise AssertionError("unreachable")

    async def MemberRemove(
        self, r: pb.MemberRemoveRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.MemberRemoveResponse:
        await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, _NO_CLUSTER)
        raise AssertionError("unreachable")

    async def MemberUpdate(
        self, r: pb.MemberUpdateRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.MemberUpdateResponse:
        await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, _NO_CLUSTER)
        raise AssertionError("unreachable")

    async def MemberPromote(
        self, r: pb.MemberPromoteRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.MemberPromoteResponse:
        await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, _NO_CLUSTER)
        raise AssertionError("unreachable")
