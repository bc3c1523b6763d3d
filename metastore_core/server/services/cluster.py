"""etcdserverpb.Cluster: the members as the consensus seam reports them."""

from __future__ import annotations

from metastore_core import errors
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.methods import Call

NO_CLUSTER = "metastore: member changes need cluster mode, which this daemon does not run"


class ClusterService:
    """MemberList tells the truth about the members; changes are refused clearly."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def MemberList(self, r: pb.MemberListRequest, call: Call) -> pb.MemberListResponse:
        resp = pb.MemberListResponse(members=self.node.members())
        self.node.header(resp.header, 0)  # etcd sends no revision here
        return resp

    async def MemberAdd(self, r: pb.MemberAddRequest, call: Call) -> pb.MemberAddResponse:
        raise errors.Unimplemented(NO_CLUSTER)

    async def MemberRemove(self, r: pb.MemberRemoveRequest, call: Call) -> pb.MemberRemoveResponse:
        raise errors.Unimplemented(NO_CLUSTER)

    async def MemberUpdate(self, r: pb.MemberUpdateRequest, call: Call) -> pb.MemberUpdateResponse:
        raise errors.Unimplemented(NO_CLUSTER)

    async def MemberPromote(self, r: pb.MemberPromoteRequest, call: Call) -> pb.MemberPromoteResponse:
        raise errors.Unimplemented(NO_CLUSTER)
