"""etcd's auth store, pure: users, roles, key-range permissions, the enabled flag, the auth revision.

The state is replicated: every change is a command (etcd's Auth*Request messages) applied in log
order, staged through `MVCCStore.stage` with the batch of the entry that made it, and read back by
`load`. Nothing here hashes a password or draws a token: the proposer hashes before proposing
(the log holds `hashedPassword`, never the password) and tokens are member-local (member/auth.py).

Who asks is an `AuthInfo(user, auth_revision)`; `None` is the member itself (lease expiry,
checkpoints, alarms it raises), never a client: the auth layer gives every client call at least
`ANONYMOUS`. With auth on, a request is checked against the state of the moment it is applied,
as etcd does: a user that is gone, a revoked grant or an auth revision newer than the request's
(`revision of auth store is old`) refuses it.

Permissions are ranges with etcd's range rule (keyrange.py). A request range must be covered by
the union of the user's grants of that kind. Unlike etcd 3.4, an open-ended range (end "\\0") is
a range to the end of the keyspace, never the single key (GHSA-xg4h-6gfc-h4m8); and every compare
and op of a txn, nested ones included, prev_kv and lease attachment are checked
(GHSA-x35m-3gp4-4fh5). Worked example: role r grants READ on [a, c) and READWRITE on "d"; a user
with r may read a, b/x, d; read [a, c) but not [a, e) (c..d is not granted) nor [a, \\0); write d
only.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Any

from metastore_core import errors
from metastore_core.engine.entry import AuthInfo
from metastore_core.engine.keyrange import READ, WRITE, accesses, leases
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.authpb import auth_pb2 as apb
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import layout as L

ROOT = "root"  # the user that must exist to enable auth, and the role that may do everything
ANONYMOUS = AuthInfo("", 0)  # a client call that named no user

Span = tuple[bytes, bytes | None]  # [start, end); None: to the end of the keyspace

# etcd's needAdminPermission, plus alarm changes (3.4 checks none: anyone could raise NOSPACE)
ADMIN_COMMANDS: tuple[type, ...] = (
    pb.AuthEnableRequest,
    pb.AuthDisableRequest,
    pb.AuthUserAddRequest,
    pb.AuthUserDeleteRequest,
    pb.AuthUserChangePasswordRequest,
    pb.AuthUserGrantRoleRequest,
    pb.AuthUserRevokeRoleRequest,
    pb.AuthRoleAddRequest,
    pb.AuthRoleDeleteRequest,
    pb.AuthRoleGrantPermissionRequest,
    pb.AuthRoleRevokePermissionRequest,
    pb.AlarmRequest,
)


def span(key: bytes, end: bytes) -> Span:
    """A request or grant range as a half-open span (a single key k is [k, k + "\\0"))."""
    if end == b"\0":
        return key, None
    if not end or end <= key:  # an empty or inverted range touches no key; ask for key itself
        return key, key + b"\0"
    return key, end


def covered(want: Span, have: list[Span]) -> bool:
    """Is want inside the union of have (sorted by start)?"""
    start, end = want
    cur = start
    for s, e in have:
        if s > cur:
            return False  # a gap at cur
        if e is None:
            return True
        if e > cur:
            cur = e
            if end is not None and cur >= end:
                return True
    return False


class AuthStore:
    """Users, roles and permissions; changes are staged into the store's next batch."""

    def __init__(self, store: MVCCStore, lease_keys: Callable[[int], Iterable[bytes]]) -> None:
        self.store = store
        self.lease_keys = lease_keys  # the keys attached to a lease (the lessor knows)
        self.enabled = False
        self.revision = 1  # etcd's auth revision starts at 1
        self.users: dict[str, apb.User] = {}
        self.roles: dict[str, apb.Role] = {}
        self._spans: dict[str, tuple[list[Span], list[Span]]] = {}  # user -> (read, write)
        self._handlers: dict[type, Callable[[Any], Any]] = {
            pb.AuthEnableRequest: self.enable,
            pb.AuthDisableRequest: self.disable,
            pb.AuthUserAddRequest: self.user_add,
            pb.AuthUserDeleteRequest: self.user_delete,
            pb.AuthUserChangePasswordRequest: self.user_change_password,
            pb.AuthUserGrantRoleRequest: self.user_grant_role,
            pb.AuthUserRevokeRoleRequest: self.user_revoke_role,
            pb.AuthRoleAddRequest: self.role_add,
            pb.AuthRoleDeleteRequest: self.role_delete,
            pb.AuthRoleGrantPermissionRequest: self.role_grant_permission,
            pb.AuthRoleRevokePermissionRequest: self.role_revoke_permission,
        }

    def handlers(self) -> dict[type, Callable[[Any], Any]]:
        """The apply handler of every auth command, by its type."""
        return dict(self._handlers)

    def load(self) -> None:
        s, codec = self.store.storage, self.store.codec
        self.users = {}
        for key, value in s.scan(L.USER_PREFIX, L.prefix_end(L.USER_PREFIX)):
            self.users[key[1:].decode()] = apb.User.FromString(codec.decode(value, key))
        self.roles = {}
        for key, value in s.scan(L.ROLE_PREFIX, L.prefix_end(L.ROLE_PREFIX)):
            self.roles[key[1:].decode()] = apb.Role.FromString(codec.decode(value, key))
        self.enabled = s.get(L.META_AUTH_ENABLED) == b"1"
        raw = s.get(L.META_AUTH_REVISION)
        self.revision = L.parse_u64(raw) if raw else 1
        self._spans.clear()

    # ------------------------------------------------------------------ checks
    def is_root(self, user: str) -> bool:
        u = self.users.get(user)
        return u is not None and ROOT in u.roles

    def check_admin(self, auth: AuthInfo | None) -> None:
        """etcd's IsAdminPermitted: with auth on, only a user holding the root role."""
        if not self.enabled or auth is None:
            return
        if not auth.user:
            raise errors.UserEmpty()
        if auth.user not in self.users:
            raise errors.UserNotFound()
        if not self.is_root(auth.user):
            raise errors.PermissionDenied()

    def check_user(self, auth: AuthInfo | None) -> None:
        """With auth on, a client call must name a user, with a token no older than the state."""
        if not self.enabled or auth is None:
            return
        if not auth.user or auth.auth_revision == 0:
            raise errors.UserEmpty()
        if auth.auth_revision < self.revision:
            raise errors.AuthOldRevision()

    def check_access(self, auth: AuthInfo | None, kind: str, key: bytes, end: bytes = b"") -> None:
        """etcd's isOpPermitted: may auth read (or write) the range (key, end)?"""
        if not self.enabled or auth is None:
            return
        self.check_user(auth)
        if not self.allowed(auth.user, kind, key, end):
            raise errors.PermissionDenied()

    def allowed(self, user: str, kind: str, key: bytes, end: bytes = b"") -> bool:
        """Do user's grants of this kind cover (key, end)? (root: always; unknown user: never)"""
        if user not in self.users:
            return False
        if self.is_root(user):
            return True
        spans = self._spans.get(user)
        if spans is None:
            spans = self._spans[user] = self._merge(user)
        return covered(span(key, end), spans[0] if kind == READ else spans[1])

    def _merge(self, user: str) -> tuple[list[Span], list[Span]]:
        read: list[Span] = []
        write: list[Span] = []
        for name in self.users[user].roles:
            role = self.roles.get(name)
            for perm in role.keyPermission if role is not None else ():
                s = span(perm.key, perm.range_end)
                if perm.permType in (apb.Permission.READ, apb.Permission.READWRITE):
                    read.append(s)
                if perm.permType in (apb.Permission.WRITE, apb.Permission.READWRITE):
                    write.append(s)
        read.sort(key=lambda s: s[0])
        write.sort(key=lambda s: s[0])
        return read, write

    def check_entry(self, auth: AuthInfo | None, command: Any) -> None:
        """At apply time: may auth run command against the auth state of this moment?"""
        if not self.enabled or auth is None:
            return
        if type(command) is pb.PutRequest and not command.prev_kv and not command.lease:
            self.check_access(auth, WRITE, command.key)  # the common write, without the walkers
            return
        if isinstance(command, ADMIN_COMMANDS):
            self.check_admin(auth)
            return
        self.check_user(auth)
        if isinstance(command, pb.LeaseRevokeRequest):
            lease_ids: Iterable[int] = (command.ID,)
        else:
            for a in accesses(command):
                self.check_access(auth, a.kind, a.key, a.end)
            lease_ids = leases(command)
        # attaching or revoking a lease acts on every key on it (etcd's checkLeasePuts)
        for lease_id in lease_ids:
            for key in self.lease_keys(lease_id):
                self.check_access(auth, WRITE, key)

    # ------------------------------------------------------------------ reads
    def user_get(self, auth: AuthInfo | None, name: str) -> pb.AuthUserGetResponse:
        """A user's roles: root, or the user asking about itself."""
        if not (auth is not None and auth.user == name and name in self.users):
            self.check_admin(auth)
        user = self.users.get(name)
        if user is None:
            raise errors.UserNotFound()
        return pb.AuthUserGetResponse(roles=list(user.roles))

    def role_get(self, auth: AuthInfo | None, name: str) -> pb.AuthRoleGetResponse:
        """A role's permissions: root, or a user holding the role."""
        user = self.users.get(auth.user) if auth is not None and auth.user else None
        if user is None or name not in user.roles:
            self.check_admin(auth)
        role = self.roles.get(name)
        if role is None:
            raise errors.RoleNotFound()
        return pb.AuthRoleGetResponse(perm=list(role.keyPermission))

    def user_list(self, auth: AuthInfo | None) -> pb.AuthUserListResponse:
        self.check_admin(auth)
        return pb.AuthUserListResponse(users=sorted(self.users))

    def role_list(self, auth: AuthInfo | None) -> pb.AuthRoleListResponse:
        self.check_admin(auth)
        return pb.AuthRoleListResponse(roles=sorted(self.roles))

    # ------------------------------------------------------------------ changes
    def _changed(self) -> None:
        self.revision += 1
        self.store.stage(L.META_AUTH_REVISION, L.u64(self.revision))
        self._spans.clear()

    def _put_user(self, user: apb.User) -> None:
        name = user.name.decode()
        self.users[name] = user
        self.store.stage(L.user_key(name), self.store.codec.encode(user.SerializeToString()))

    def _set_roles(self, user: apb.User, roles: list[str]) -> None:
        self._put_user(apb.User(name=user.name, password=user.password, roles=roles, options=user.options))

    def _put_role(self, role: apb.Role) -> None:
        name = role.name.decode()
        self.roles[name] = role
        self.store.stage(L.role_key(name), self.store.codec.encode(role.SerializeToString()))

    def _user(self, name: str) -> apb.User:
        user = self.users.get(name)
        if user is None:
            raise errors.UserNotFound()
        return user

    def _role(self, name: str) -> apb.Role:
        role = self.roles.get(name)
        if role is None:
            raise errors.RoleNotFound()
        return role

    def enable(self, r: pb.AuthEnableRequest) -> pb.AuthEnableResponse:
        if self.enabled:
            return pb.AuthEnableResponse()  # etcd: enabling twice is a no-op
        root = self.users.get(ROOT)
        if root is None:
            raise errors.RootUserNotExist()
        if ROOT not in root.roles:
            raise errors.RootRoleNotExist()
        self.enabled = True
        self.store.stage(L.META_AUTH_ENABLED, b"1")
        return pb.AuthEnableResponse()  # etcd keeps the revision here

    def disable(self, r: pb.AuthDisableRequest) -> pb.AuthDisableResponse:
        if self.enabled:
            self.enabled = False
            self.store.stage(L.META_AUTH_ENABLED, b"0")
            self._changed()
        return pb.AuthDisableResponse()

    def user_add(self, r: pb.AuthUserAddRequest) -> pb.AuthUserAddResponse:
        no_password = r.options.no_password
        if r.password or not (no_password or r.hashedPassword):
            # a proposer bug, not a client mistake: passwords are hashed before proposing
            raise ValueError("a user add reached apply with a clear password or no hash")
        if not r.name:
            raise errors.UserEmpty()
        if r.name in self.users:
            raise errors.UserAlreadyExist()
        hashed = b"" if no_password else r.hashedPassword.encode()
        self._put_user(apb.User(name=r.name.encode(), password=hashed, options=r.options))
        self._changed()
        return pb.AuthUserAddResponse()

    def user_delete(self, r: pb.AuthUserDeleteRequest) -> pb.AuthUserDeleteResponse:
        if self.enabled and r.name == ROOT:
            raise errors.InvalidAuthMgmt()
        self._user(r.name)
        del self.users[r.name]
        self.store.stage(L.user_key(r.name), None)
        self._changed()
        return pb.AuthUserDeleteResponse()

    def user_change_password(self, r: pb.AuthUserChangePasswordRequest) -> pb.AuthUserChangePasswordResponse:
        if r.password or not r.hashedPassword:
            raise ValueError("a password change reached apply with a clear password or no hash")
        user = self._user(r.name)
        self._put_user(
            apb.User(
                name=user.name, password=r.hashedPassword.encode(), roles=user.roles, options=user.options
            )
        )
        self._changed()
        return pb.AuthUserChangePasswordResponse()

    def user_grant_role(self, r: pb.AuthUserGrantRoleRequest) -> pb.AuthUserGrantRoleResponse:
        user = self._user(r.user)
        if r.role != ROOT:
            self._role(r.role)  # etcd grants role root whether or not it was added
        if r.role in user.roles:
            return pb.AuthUserGrantRoleResponse()
        self._set_roles(user, sorted([*user.roles, r.role]))
        self._changed()
        return pb.AuthUserGrantRoleResponse()

    def user_revoke_role(self, r: pb.AuthUserRevokeRoleRequest) -> pb.AuthUserRevokeRoleResponse:
        if self.enabled and r.name == ROOT and r.role == ROOT:
            raise errors.InvalidAuthMgmt()
        user = self._user(r.name)
        if r.role not in user.roles:
            raise errors.RoleNotGranted()
        self._set_roles(user, [x for x in user.roles if x != r.role])
        self._changed()
        return pb.AuthUserRevokeRoleResponse()

    def role_add(self, r: pb.AuthRoleAddRequest) -> pb.AuthRoleAddResponse:
        if not r.name:
            raise errors.RoleEmpty()
        if r.name in self.roles:
            raise errors.RoleAlreadyExist()
        self._put_role(apb.Role(name=r.name.encode()))
        self._changed()
        return pb.AuthRoleAddResponse()

    def role_delete(self, r: pb.AuthRoleDeleteRequest) -> pb.AuthRoleDeleteResponse:
        if self.enabled and r.role == ROOT:
            raise errors.InvalidAuthMgmt()
        self._role(r.role)
        del self.roles[r.role]
        self.store.stage(L.role_key(r.role), None)
        for user in list(self.users.values()):
            if r.role in user.roles:
                self._set_roles(user, [x for x in user.roles if x != r.role])
        self._changed()
        return pb.AuthRoleDeleteResponse()

    def role_grant_permission(
        self, r: pb.AuthRoleGrantPermissionRequest
    ) -> pb.AuthRoleGrantPermissionResponse:
        role = self._role(r.name)
        if r.perm.permType not in (apb.Permission.READ, apb.Permission.WRITE, apb.Permission.READWRITE):
            raise errors.InvalidRequest(f"etcdserver: invalid permission type {r.perm.permType}")
        if not r.perm.key:
            raise errors.EmptyKey()
        perms = [
            apb.Permission(permType=p.permType, key=p.key, range_end=p.range_end) for p in role.keyPermission
        ]
        same = next((p for p in perms if p.key == r.perm.key and p.range_end == r.perm.range_end), None)
        if same is not None:
            same.permType = r.perm.permType
        else:
            keys = [p.key for p in perms]
            at = bisect.bisect_right(keys, r.perm.key)
            perms.insert(
                at, apb.Permission(permType=r.perm.permType, key=r.perm.key, range_end=r.perm.range_end)
            )
        self._put_role(apb.Role(name=role.name, keyPermission=perms))
        self._changed()
        return pb.AuthRoleGrantPermissionResponse()

    def role_revoke_permission(
        self, r: pb.AuthRoleRevokePermissionRequest
    ) -> pb.AuthRoleRevokePermissionResponse:
        role = self._role(r.role)
        kept = [p for p in role.keyPermission if p.key != r.key or p.range_end != r.range_end]
        if len(kept) == len(role.keyPermission):
            raise errors.PermissionNotGranted()
        self._put_role(apb.Role(name=role.name, keyPermission=kept))
        self._changed()
        return pb.AuthRoleRevokePermissionResponse()
