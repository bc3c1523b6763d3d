"""etcdserverpb.Auth: users, roles, permissions, enable/disable, Authenticate; the work is the node's."""

from __future__ import annotations

from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.methods import Call


class AuthService:
    """Changes are commands through the write path; reads answer from this member's auth state."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def _read(self, r: object, call: Call) -> object:
        resp = self.node.auth.read(r, call.auth)
        self.node.header(resp.header)
        return resp

    async def AuthEnable(self, r: pb.AuthEnableRequest, call: Call) -> pb.AuthEnableResponse:
        return await self.node.auth.change(r, call.auth)

    async def AuthDisable(self, r: pb.AuthDisableRequest, call: Call) -> pb.AuthDisableResponse:
        return await self.node.auth.change(r, call.auth)

    async def AuthStatus(self, r: pb.AuthStatusRequest, call: Call) -> object:
        return await self._read(r, call)

    async def Authenticate(self, r: pb.AuthenticateRequest, call: Call) -> pb.AuthenticateResponse:
        resp = await self.node.auth.authenticate(r, call.peer())
        self.node.header(resp.header)
        return resp

    async def UserAdd(self, r: pb.AuthUserAddRequest, call: Call) -> pb.AuthUserAddResponse:
        return await self.node.auth.change(r, call.auth)

    async def UserGet(self, r: pb.AuthUserGetRequest, call: Call) -> object:
        return await self._read(r, call)

    async def UserList(self, r: pb.AuthUserListRequest, call: Call) -> object:
        return await self._read(r, call)

    async def UserDelete(self, r: pb.AuthUserDeleteRequest, call: Call) -> pb.AuthUserDeleteResponse:
        return await self.node.auth.change(r, call.auth)

    async def UserChangePassword(
        self, r: pb.AuthUserChangePasswordRequest, call: Call
    ) -> pb.AuthUserChangePasswordResponse:
        return await self.node.auth.change(r, call.auth)

    async def UserGrantRole(self, r: pb.AuthUserGrantRoleRequest, call: Call) -> pb.AuthUserGrantRoleResponse:
        return await self.node.auth.change(r, call.auth)

    async def UserRevokeRole(
        self, r: pb.AuthUserRevokeRoleRequest, call: Call
    ) -> pb.AuthUserRevokeRoleResponse:
        return await self.node.auth.change(r, call.auth)

    async def RoleAdd(self, r: pb.AuthRoleAddRequest, call: Call) -> pb.AuthRoleAddResponse:
        return await self.node.auth.change(r, call.auth)

    async def RoleGet(self, r: pb.AuthRoleGetRequest, call: Call) -> object:
        return await self._read(r, call)

    async def RoleList(self, r: pb.AuthRoleListRequest, call: Call) -> object:
        return await self._read(r, call)

    async def RoleDelete(self, r: pb.AuthRoleDeleteRequest, call: Call) -> pb.AuthRoleDeleteResponse:
        return await self.node.auth.change(r, call.auth)

    async def RoleGrantPermission(
        self, r: pb.AuthRoleGrantPermissionRequest, call: Call
    ) -> pb.AuthRoleGrantPermissionResponse:
        return await self.node.auth.change(r, call.auth)

    async def RoleRevokePermission(
        self, r: pb.AuthRoleRevokePermissionRequest, call: Call
    ) -> pb.AuthRoleRevokePermissionResponse:
        return await self.node.auth.change(r, call.auth)
