"""The auth store at apply time: grants as ranges, every key a command touches, the auth revision.

Each advisory etcd published about RBAC has a test here that fails on etcd 3.4's rule.
"""

from __future__ import annotations

import pytest

from metastore_core import errors
from metastore_core.engine.auth import ANONYMOUS, covered, span
from metastore_core.engine.entry import AuthInfo
from metastore_core.mvcc.hashing import hash_all, hash_kv
from metastore_core.pb.authpb import auth_pb2 as apb
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import layout as L
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine

READ, WRITE, RW = apb.Permission.READ, apb.Permission.WRITE, apb.Permission.READWRITE
HASH = "$2b$04$abcdefghijklmnopqrstuu5cW0mKXPqJbGb0jVxMb3y1zA8cW0mKX"  # any hash: apply never checks it


def user(e: Engine, name: str, *roles: str) -> None:
    e.write(pb.AuthUserAddRequest(name=name, hashedPassword=HASH))
    for role in roles:
        if role != "root" and role not in e.auth.roles:
            e.write(pb.AuthRoleAddRequest(name=role))
        e.write(pb.AuthUserGrantRoleRequest(user=name, role=role))


def grant(e: Engine, role: str, kind: int, key: bytes, end: bytes = b"") -> None:
    perm = apb.Permission(permType=kind, key=key, range_end=end)  # type: ignore[arg-type]
    e.write(pb.AuthRoleGrantPermissionRequest(name=role, perm=perm))


def me(e: Engine, name: str) -> AuthInfo:
    return AuthInfo(name, e.auth.revision)


@pytest.fixture
def e() -> Engine:
    """root, and alice with role r: READ [a, c), READWRITE on d; auth on."""
    e = Engine(MemoryStorage())
    user(e, "root", "root")
    user(e, "alice", "r")
    grant(e, "r", READ, b"a", b"c")
    grant(e, "r", RW, b"d")
    e.write(pb.AuthEnableRequest())
    return e


def test_the_worked_example_of_the_module_docstring(e: Engine) -> None:
    ok = [(b"a", b""), (b"b/x", b""), (b"d", b""), (b"a", b"c"), (b"b", b"b\0")]
    no = [(b"c", b""), (b"a", b"e"), (b"a", b"\0"), (b"\0", b"\0"), (b"d", b"e")]
    assert all(e.auth.allowed("alice", "read", k, end) for k, end in ok)
    assert not any(e.auth.allowed("alice", "read", k, end) for k, end in no)
    assert e.auth.allowed("alice", "write", b"d") and not e.auth.allowed("alice", "write", b"a")
    assert e.auth.allowed("root", "write", b"\0", b"\0")


def test_coverage_joins_adjacent_grants_and_stops_at_gaps() -> None:
    have = sorted([span(b"a", b"c"), span(b"c", b"e"), span(b"x", b"\0")])
    assert covered(span(b"a", b"e"), have) and covered(span(b"y", b"\0"), have)
    assert not covered(span(b"a", b"f"), have) and not covered(span(b"e", b"\0"), have)


def test_open_ended_watch_range_needs_an_open_ended_grant(e: Engine) -> None:
    """GHSA-xg4h-6gfc-h4m8: etcd 3.4 read end "\\0" as the single key, so READ on one key let a
    user watch every key after it."""
    with pytest.raises(errors.PermissionDenied):
        e.auth.check_access(me(e, "alice"), "read", b"d", b"\0")
    grant(e, "r", READ, b"d", b"\0")
    e.auth.check_access(me(e, "alice"), "read", b"d", b"\0")


def test_txn_checks_nested_ops_prev_kv_and_lease_attach(e: Engine) -> None:
    """GHSA-x35m-3gp4-4fh5: prev_kv and lease attachment inside a txn slipped past etcd's check."""
    alice = me(e, "alice")
    e.write(pb.PutRequest(key=b"zz", value=b"secret"))  # the member itself: trusted
    nested_read = pb.TxnRequest(
        success=[
            pb.RequestOp(
                request_txn=pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"zz"))])
            )
        ]
    )
    with pytest.raises(errors.PermissionDenied):
        e.write(nested_read, alice)
    e.write(pb.PutRequest(key=b"d", value=b"1"), alice)  # allowed: RW on d
    with pytest.raises(errors.PermissionDenied):  # d is writable but prev_kv reads... fine; zz is not
        e.write(
            pb.TxnRequest(
                success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"zz", prev_kv=True))]
            ),
            alice,
        )
    grant(e, "r", WRITE, b"w")
    alice = me(e, "alice")
    with pytest.raises(errors.PermissionDenied):  # write-only w: its old value must not come back
        e.write(
            pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"w", prev_kv=True))]), alice
        )
    lease = e.write(pb.LeaseGrantRequest(TTL=60)).ID
    e.write(pb.PutRequest(key=b"zz", value=b"secret", lease=lease))
    with pytest.raises(errors.PermissionDenied):  # attaching to a lease that holds zz
        e.write(
            pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"d", lease=lease))]), alice
        )
    with pytest.raises(errors.PermissionDenied):  # revoking it would delete zz
        e.write(pb.LeaseRevokeRequest(ID=lease), alice)
    e.write(pb.LeaseRevokeRequest(ID=lease), me(e, "root"))


def test_a_request_meets_the_auth_state_of_its_apply(e: Engine) -> None:
    """A permission revoked while a request is in flight: the request carries the older revision."""
    alice = me(e, "alice")
    e.write(pb.AuthRoleRevokePermissionRequest(role="r", key=b"d"))
    with pytest.raises(errors.AuthOldRevision):
        e.write(pb.PutRequest(key=b"d", value=b"late"), alice)
    with pytest.raises(errors.PermissionDenied):
        e.write(pb.PutRequest(key=b"d", value=b"late"), me(e, "alice"))
    assert e.store.get(b"d", e.store.applied_rev) is None


def test_anonymous_and_non_root_callers(e: Engine) -> None:
    with pytest.raises(errors.UserEmpty):
        e.write(pb.PutRequest(key=b"d"), ANONYMOUS)
    with pytest.raises(errors.UserEmpty):
        e.write(pb.CompactionRequest(revision=1), ANONYMOUS)
    with pytest.raises(errors.PermissionDenied):
        e.write(pb.AuthRoleAddRequest(name="x"), me(e, "alice"))
    with pytest.raises(errors.PermissionDenied):
        e.write(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE), me(e, "alice"))
    with pytest.raises(errors.UserNotFound):
        e.auth.check_admin(me(e, "ghost"))
    assert e.auth.user_get(me(e, "alice"), "alice").roles == ["r"]  # yourself: allowed
    with pytest.raises(errors.PermissionDenied):
        e.auth.user_get(me(e, "alice"), "root")
    assert [p.key for p in e.auth.role_get(me(e, "alice"), "r").perm] == [b"a", b"d"]
    with pytest.raises(errors.PermissionDenied):
        e.auth.role_list(me(e, "alice"))


def test_management_errors_as_etcd() -> None:
    e = Engine(MemoryStorage())
    with pytest.raises(errors.RootUserNotExist):
        e.write(pb.AuthEnableRequest())
    user(e, "root")
    with pytest.raises(errors.RootRoleNotExist):
        e.write(pb.AuthEnableRequest())
    cases = [
        (pb.AuthUserAddRequest(name="root", hashedPassword=HASH), errors.UserAlreadyExist),
        (pb.AuthUserAddRequest(hashedPassword=HASH), errors.UserEmpty),
        (pb.AuthRoleAddRequest(), errors.RoleEmpty),
        (pb.AuthUserGrantRoleRequest(user="root", role="nope"), errors.RoleNotFound),
        (pb.AuthUserGrantRoleRequest(user="nope", role="root"), errors.UserNotFound),
        (pb.AuthUserRevokeRoleRequest(name="root", role="x"), errors.RoleNotGranted),
        (pb.AuthRoleRevokePermissionRequest(role="nope"), errors.RoleNotFound),
        (pb.AuthUserDeleteRequest(name="nope"), errors.UserNotFound),
    ]
    for command, error in cases:
        with pytest.raises(error):
            e.write(command)
    e.write(pb.AuthRoleAddRequest(name="x"))
    with pytest.raises(errors.RoleAlreadyExist):
        e.write(pb.AuthRoleAddRequest(name="x"))
    with pytest.raises(errors.PermissionNotGranted):
        e.write(pb.AuthRoleRevokePermissionRequest(role="x", key=b"a"))
    e.write(pb.AuthUserGrantRoleRequest(user="root", role="root"))
    e.write(pb.AuthEnableRequest())
    for command in (
        pb.AuthUserDeleteRequest(name="root"),
        pb.AuthUserRevokeRoleRequest(name="root", role="root"),
        pb.AuthRoleDeleteRequest(role="root"),
    ):
        with pytest.raises(errors.InvalidAuthMgmt):
            e.write(command)


def test_a_clear_password_never_reaches_the_store() -> None:
    e = Engine(MemoryStorage())
    with pytest.raises(ValueError, match="clear password"):
        e.write(pb.AuthUserAddRequest(name="u", password="secret"))
    assert not any(b"secret" in v for _, v in e.storage.scan(b"", b"\xff"))


def test_auth_state_is_persisted_with_its_revision(e: Engine) -> None:
    before = e.auth.revision
    again = e.reopen()
    again.auth.load()
    assert (again.auth.enabled, again.auth.revision) == (True, before)
    assert sorted(again.auth.users) == ["alice", "root"] and list(again.auth.users["alice"].roles) == ["r"]
    assert e.storage.get(L.user_key("alice")) is not None and e.storage.get(L.role_key("r")) is not None
    e.write(pb.AuthRoleDeleteRequest(role="r"))  # also taken from every user
    assert list(e.auth.users["alice"].roles) == [] and e.storage.get(L.role_key("r")) is None
    e.write(pb.AuthDisableRequest())
    assert e.auth.revision == before + 2 and e.storage.get(L.META_AUTH_ENABLED) == b"0"


def test_hash_covers_the_auth_records(e: Engine) -> None:
    """Maintenance.Hash (the whole logical store) changes with users and roles; HashKV does not."""

    def hashes() -> tuple[int, int]:
        view, s = e.storage.view(), e.store
        try:
            return hash_all(view, s.codec, s.committed_rev, s.compact_rev), hash_kv(
                view, s.codec, s.committed_rev, 0
            )
        finally:
            view.close()

    before = hashes()
    e.write(pb.AuthRoleAddRequest(name="extra"))
    after = hashes()
    assert after[0] != before[0] and after[1] == before[1]
