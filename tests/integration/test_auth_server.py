"""Auth through the real gRPC server, in-process: the door, tokens, and each etcd advisory's hole.

One server for the module (auth state set up once); tests only read or undo what they change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metastore_cli.stats import rows
from metastore_core import errors
from metastore_core.config import Config
from metastore_core.member.auth import RateLimit
from metastore_core.member.node import Node
from metastore_core.pb.authpb import auth_pb2 as apb
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.pb.metastore.admin.v1 import admin_pb2, admin_pb2_grpc
from metastore_core.pb.v3lockpb import v3lock_pb2, v3lock_pb2_grpc
from metastore_core.server.app import Server
from metastore_core.server.figures import exposure_warnings
from metastore_core.server.layers.auth import AuthLayer
from metastore_core.server.methods import Call, method_info
from metastore_core.storage.memory import MemoryStorage

from conftest import free_port

SC = grpc.StatusCode
PASSWORDS = {"root": "r00t-pw", "alice": "alice-pw"}


def _config() -> Config:
    return Config(
        backend="memory",
        bcrypt_cost=4,
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
    )


class Client:
    """Stubs on one channel, and a token per user."""

    def __init__(self, ch: grpc.aio.Channel) -> None:
        self.kv = rpc_pb2_grpc.KVStub(ch)
        self.auth = rpc_pb2_grpc.AuthStub(ch)
        self.lease = rpc_pb2_grpc.LeaseStub(ch)
        self.cluster = rpc_pb2_grpc.ClusterStub(ch)
        self.maint = rpc_pb2_grpc.MaintenanceStub(ch)
        self.watch = rpc_pb2_grpc.WatchStub(ch)
        self.admin = admin_pb2_grpc.AdminStub(ch)
        self.health = health_pb2_grpc.HealthStub(ch)
        self.tokens: dict[str, str] = {}

    async def login(self, user: str) -> list[tuple[str, str]]:
        resp = await self.auth.Authenticate(pb.AuthenticateRequest(name=user, password=PASSWORDS[user]))
        self.tokens[user] = resp.token
        return [("token", resp.token)]

    def md(self, user: str) -> list[tuple[str, str]]:
        return [("token", self.tokens[user])]


async def _refused(call: object, code: grpc.StatusCode, message: str | None = None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    if message is not None:
        assert info.value.details() == message


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup() -> AsyncIterator[tuple[Server, Client]]:
    """root; alice with role app: READWRITE on the prefix app/, READ on the key pub; auth on."""
    server = Server(_config())
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as ch:
        c = Client(ch)
        for name, pw in PASSWORDS.items():
            await c.auth.UserAdd(pb.AuthUserAddRequest(name=name, password=pw))
        await c.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
        await c.auth.RoleAdd(pb.AuthRoleAddRequest(name="app"))
        for perm in (
            apb.Permission(permType=apb.Permission.READWRITE, key=b"app/", range_end=b"app0"),
            apb.Permission(permType=apb.Permission.READ, key=b"pub"),
        ):
            await c.auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="app", perm=perm))
        await c.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="app"))
        await c.auth.AuthEnable(pb.AuthEnableRequest())
        await c.login("root")
        await c.login("alice")
        yield server, c
    await server.stop()


SHARED = pytest.mark.asyncio(loop_scope="module")  # the tests on the module's server


@SHARED
async def test_no_password_is_stored_and_the_hash_is_bcrypt(setup: tuple[Server, Client]) -> None:
    server, _ = setup
    assert server.storage is not None
    everything = b"".join(k + v for k, v in server.storage.scan(b"", b"\xff"))
    assert not any(pw.encode() in everything for pw in PASSWORDS.values())
    assert b"$2b$04$" in everything


@SHARED
async def test_unauthenticated_calls_are_refused(setup: tuple[Server, Client]) -> None:
    """GHSA-q8m4-xhhv-38mg: etcd let anonymous callers use MemberList, Alarm and the Lease API."""
    _, c = setup
    empty = "etcdserver: user name is empty"
    for call in (
        c.cluster.MemberList(pb.MemberListRequest()),
        c.maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET)),
        c.maint.Status(pb.StatusRequest()),
        c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60)),
        c.lease.LeaseLeases(pb.LeaseLeasesRequest()),
        c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=1)),
        c.kv.Range(pb.RangeRequest(key=b"app/x")),
        c.kv.Compact(pb.CompactionRequest(revision=1)),
        c.admin.GetStats(admin_pb2.GetStatsRequest()),
    ):
        await _refused(call, SC.INVALID_ARGUMENT, empty)
    resp = await c.health.Check(health_pb2.HealthCheckRequest())  # probes need no credentials
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    status = await c.auth.AuthStatus(pb.AuthStatusRequest())
    assert status.enabled and status.authRevision > 1


@SHARED
async def test_tokens_and_passwords(setup: tuple[Server, Client]) -> None:
    _, c = setup
    await _refused(
        c.auth.Authenticate(pb.AuthenticateRequest(name="alice", password="wrong")),
        SC.INVALID_ARGUMENT,
        "etcdserver: authentication failed, invalid user ID or password",
    )
    await _refused(
        c.auth.Authenticate(pb.AuthenticateRequest(name="nobody", password="x")), SC.INVALID_ARGUMENT
    )
    await _refused(
        c.kv.Range(pb.RangeRequest(key=b"app/x"), metadata=[("token", "forged.1")]),
        SC.UNAUTHENTICATED,
        "etcdserver: invalid auth token",
    )
    await c.kv.Range(pb.RangeRequest(key=b"app/x"), metadata=[("authorization", c.tokens["alice"])])
    # a new password ends the user's tokens
    md = await c.login("alice")
    await c.auth.UserChangePassword(
        pb.AuthUserChangePasswordRequest(name="alice", password=PASSWORDS["alice"]), metadata=c.md("root")
    )
    await _refused(c.kv.Range(pb.RangeRequest(key=b"app/x"), metadata=md), SC.UNAUTHENTICATED)
    await c.login("alice")


@SHARED
async def test_key_permissions_and_the_advisories(setup: tuple[Server, Client]) -> None:
    _, c = setup
    alice, root = c.md("alice"), c.md("root")
    await c.kv.Put(pb.PutRequest(key=b"app/a", value=b"1"), metadata=alice)
    assert (await c.kv.Range(pb.RangeRequest(key=b"pub"), metadata=alice)).count == 0
    denied = "etcdserver: permission denied"
    await _refused(
        c.kv.Put(pb.PutRequest(key=b"pub", value=b"1"), metadata=alice), SC.PERMISSION_DENIED, denied
    )
    await _refused(
        c.kv.Range(pb.RangeRequest(key=b"app/", range_end=b"b"), metadata=alice), SC.PERMISSION_DENIED
    )
    # a txn that only reads is served without apply (in steps): the same checks hold there
    read_app = pb.RequestOp(request_range=pb.RangeRequest(key=b"app/", range_end=b"app0"))
    ok = await c.kv.Txn(pb.TxnRequest(success=[read_app]), metadata=alice)
    assert ok.succeeded and ok.responses[0].response_range.count == 1
    read_other = pb.RequestOp(request_range=pb.RangeRequest(key=b"other"))
    await _refused(
        c.kv.Txn(pb.TxnRequest(success=[read_other]), metadata=alice), SC.PERMISSION_DENIED, denied
    )
    hidden = pb.Compare(key=b"secret/x", target=pb.Compare.VERSION, version=0)
    await _refused(
        c.kv.Txn(pb.TxnRequest(compare=[hidden], success=[read_app]), metadata=alice), SC.PERMISSION_DENIED
    )
    # CVE-2023-32082: TimeToLive with keys listed keys the caller may not read
    lease = (await c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), metadata=root)).ID
    await c.kv.Put(pb.PutRequest(key=b"secret/x", value=b"s", lease=lease), metadata=root)
    await c.kv.Put(pb.PutRequest(key=b"app/leased", value=b"v", lease=lease), metadata=root)
    ttl = await c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease, keys=True), metadata=alice)
    assert list(ttl.keys) == [b"app/leased"]
    ttl = await c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease, keys=True), metadata=root)
    assert sorted(ttl.keys) == [b"app/leased", b"secret/x"]
    # GHSA-x35m-3gp4-4fh5: attaching a lease (in a txn too) needs write on the keys it holds
    put = pb.PutRequest(key=b"app/b", value=b"v", lease=lease)
    await _refused(
        c.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=put)]), metadata=alice), SC.PERMISSION_DENIED
    )
    await _refused(c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), metadata=alice), SC.PERMISSION_DENIED)
    await c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), metadata=root)


@SHARED
async def test_watch_needs_read_on_the_whole_range(setup: tuple[Server, Client]) -> None:
    """GHSA-xg4h-6gfc-h4m8: READ on one key let etcd 3.4 users watch every key from it on."""
    _, c = setup
    creates = [
        pb.WatchCreateRequest(key=b"pub", range_end=b"\0"),  # open-ended: refused
        pb.WatchCreateRequest(key=b"app/", range_end=b"app0"),
        pb.WatchCreateRequest(key=b"secret/x"),
    ]

    async def requests() -> AsyncIterator[pb.WatchRequest]:
        for cr in creates:
            yield pb.WatchRequest(create_request=cr)
        await asyncio.sleep(5)

    stream = c.watch.Watch(requests(), metadata=c.md("alice"))
    got = [await stream.read() for _ in creates]
    stream.cancel()
    reason = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    assert [(r.created, r.canceled, r.watch_id, r.cancel_reason) for r in got] == [
        (True, True, -1, reason),
        (True, False, 0, ""),
        (True, True, -1, reason),
    ]


@SHARED
async def test_admin_and_maintenance_need_root(setup: tuple[Server, Client]) -> None:
    _, c = setup
    denied = "etcdserver: permission denied"
    await _refused(
        c.admin.GetStats(admin_pb2.GetStatsRequest(), metadata=c.md("alice")), SC.PERMISSION_DENIED, denied
    )
    await _refused(
        c.admin.Shutdown(admin_pb2.ShutdownRequest(), metadata=c.md("alice")), SC.PERMISSION_DENIED
    )
    await _refused(c.maint.Defragment(pb.DefragmentRequest(), metadata=c.md("alice")), SC.PERMISSION_DENIED)
    await _refused(c.auth.UserList(pb.AuthUserListRequest(), metadata=c.md("alice")), SC.PERMISSION_DENIED)
    alarm = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE)
    await _refused(c.maint.Alarm(alarm, metadata=c.md("alice")), SC.PERMISSION_DENIED)
    assert (await c.admin.GetStats(admin_pb2.GetStatsRequest(), metadata=c.md("root"))).pid > 0
    assert (await c.maint.Status(pb.StatusRequest(), metadata=c.md("alice"))).version  # any user
    assert list(
        (await c.auth.UserGet(pb.AuthUserGetRequest(name="alice"), metadata=c.md("alice"))).roles
    ) == ["app"]


async def test_an_invalid_token_is_refused_with_auth_off_and_disable_ends_tokens() -> None:
    server = Server(_config())
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as ch:
            c = Client(ch)
            await c.kv.Put(pb.PutRequest(key=b"k", value=b"v"))
            await _refused(c.kv.Put(pb.PutRequest(key=b"k"), metadata=[("token", "x.1")]), SC.UNAUTHENTICATED)
            await _refused(
                c.auth.Authenticate(pb.AuthenticateRequest(name="root", password="x")),
                SC.FAILED_PRECONDITION,
                "etcdserver: authentication is not enabled",
            )
            # tokens end with auth: after a disable, an old token names no one
            await c.auth.UserAdd(pb.AuthUserAddRequest(name="root", password=PASSWORDS["root"]))
            await c.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
            await c.auth.AuthEnable(pb.AuthEnableRequest())
            md = await c.login("root")
            await c.auth.AuthDisable(pb.AuthDisableRequest(), metadata=md)
            await _refused(c.kv.Range(pb.RangeRequest(key=b"k"), metadata=md), SC.UNAUTHENTICATED)
    finally:
        await server.stop()


class _Peer(Call):
    __slots__ = ("_peer",)

    def __init__(self, peer: str) -> None:
        super().__init__()
        self._peer = peer

    def peer(self) -> str:
        return self._peer


async def test_admin_answers_only_loopback_callers_while_auth_is_off() -> None:
    node = Node(MemoryStorage(), Config(backend="memory"))
    node.load()
    layer = AuthLayer(node)
    admin = method_info("metastore.admin.v1.Admin", "Shutdown", False, False, object)
    kv = method_info("etcdserverpb.KV", "Range", False, False, object)
    for peer in ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:/run/metastore.sock"):
        layer.admit(admin, _Peer(peer))
    with pytest.raises(errors.AdminLocalOnly) as info:
        layer.admit(admin, _Peer("ipv4:192.0.2.7:5000"))
    assert "enable auth" in info.value.text
    layer.admit(kv, _Peer("ipv4:192.0.2.7:5000"))  # the KV service is open to the network
    node.close()


def test_authenticate_is_rate_limited_per_address() -> None:
    """Each check is charged the bcrypt time it took; an address out of budget waits."""
    now = [0.0]
    limit = RateLimit(rate=0.25, burst=2.0, clock=lambda: now[0])
    admitted = 0
    while limit.admit("10.0.0.1"):
        limit.charge("10.0.0.1", 0.06)  # a cost-10 check
        admitted += 1
    assert admitted == 34  # 2 s of checks at 60 ms each
    assert limit.admit("10.0.0.2")  # another address has its own budget
    now[0] += 1.0  # a quarter second of budget comes back every second
    assert limit.admit("10.0.0.1")
    limit.charge("10.0.0.1", 0.3)
    assert not limit.admit("10.0.0.1")


@SHARED
async def test_lock_needs_permission_on_the_names_keys(setup: tuple[Server, Client]) -> None:
    server, c = setup
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as ch:
        lock = v3lock_pb2_grpc.LockStub(ch)
        held = await lock.Lock(v3lock_pb2.LockRequest(name=b"app/lock"), metadata=c.md("alice"))
        assert held.key.startswith(b"app/lock/")
        await lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), metadata=c.md("alice"))
        await _refused(
            lock.Lock(v3lock_pb2.LockRequest(name=b"secret"), metadata=c.md("alice")), SC.PERMISSION_DENIED
        )


def test_exposure_is_said_loudly() -> None:
    def cfg(*urls: str) -> Config:
        return Config(listen_client_urls=list(urls))

    assert (
        exposure_warnings(cfg("http://127.0.0.1:2379", "http://[::1]:2380", "http://localhost:1"), False)
        == []
    )
    said = exposure_warnings(cfg("http://0.0.0.0:2379", "https://10.0.0.5:2379"), False)
    assert said == [
        "http://0.0.0.0:2379 serves plaintext to the network: anyone on the path reads tokens and data",
        "http://0.0.0.0:2379 is open to the network with auth off: anyone can read and write every key",
        "https://10.0.0.5:2379 is open to the network with auth off: anyone can read and write every key",
    ]
    assert exposure_warnings(cfg("https://10.0.0.5:2379"), True) == []
    stats = admin_pb2.GetStatsResponse(warnings=said[:1])
    assert ("daemon", "WARNING", said[0]) in rows(stats)
