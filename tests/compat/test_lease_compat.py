"""One lease scenario against a real etcd and against metastore: the answers must match.

Both servers run each step in turn, so the waits for expiry are shared.
Responses are compared as protobuf text with the per-server identity blanked
(cluster_id, member_id, raft_term) and server-chosen lease IDs replaced by
their order of appearance; remaining TTLs may differ by a second (clocks).
Negative lease IDs are left out on purpose: etcd accepts them, our spec
refuses them (INVALID_ARGUMENT).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

from conftest import Proc, etcdctl


class Side:
    """One server's stubs and the lease IDs it chose."""

    def __init__(self, ch: grpc.Channel) -> None:
        self.kv = rpc_pb2_grpc.KVStub(ch)
        self.lease = rpc_pb2_grpc.LeaseStub(ch)
        self.ids: dict[int, str] = {}

    def norm(self, r: Message) -> str:
        if r.HasField("header"):  # type: ignore[attr-defined]
            h = r.header  # type: ignore[attr-defined]
            h.cluster_id = h.member_id = h.raft_term = 0
        text = text_format.MessageToString(r, as_one_line=True)
        # Server-chosen IDs (big numbers) become $0, $1, ... in order of appearance.
        return re.sub(r"\bID: (\d{6,})", lambda m: "ID: " + self._alias(int(m.group(1))), text)

    def _alias(self, lease_id: int) -> str:
        return self.ids.setdefault(lease_id, f"${len(self.ids)}")


def call(side: Side, fn: Callable[[Side], Any]) -> str:
    try:
        r = fn(side)
    except grpc.RpcError as exc:
        return f"ERROR {exc.code().name} {exc.details()}"
    if isinstance(r, list):
        return " | ".join(side.norm(x) for x in r)
    return side.norm(r)


def keep_alive(*ids: int) -> Callable[[Side], list[pb.LeaseKeepAliveResponse]]:
    return lambda s: list(s.lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=i) for i in ids])))


def ttl(lease_id: int, keys: bool = False) -> Callable[[Side], pb.LeaseTimeToLiveResponse]:
    return lambda s: s.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys))


def put(key: bytes, lease: int = 0, **kw: bool) -> Callable[[Side], pb.PutResponse]:
    return lambda s: s.kv.Put(pb.PutRequest(key=key, value=b"v", lease=lease, **kw))


def rng(key: bytes = b"\0", end: bytes = b"\0", **kw: int) -> Callable[[Side], pb.RangeResponse]:
    return lambda s: s.kv.Range(pb.RangeRequest(key=key, range_end=end, **kw))


def leases() -> Callable[[Side], pb.LeaseLeasesResponse]:
    def run(s: Side) -> pb.LeaseLeasesResponse:
        r = s.lease.LeaseLeases(pb.LeaseLeasesRequest())
        ordered = sorted(r.leases, key=lambda x: x.ID)  # etcd's order is map order
        del r.leases[:]
        r.leases.extend(ordered)
        return r

    return run


def grant(ttl_s: int, lease_id: int = 0) -> Callable[[Side], pb.LeaseGrantResponse]:
    return lambda s: s.lease.LeaseGrant(pb.LeaseGrantRequest(ID=lease_id, TTL=ttl_s))


def revoke(lease_id: int) -> Callable[[Side], pb.LeaseRevokeResponse]:
    return lambda s: s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))


SHORT, LONG = 0x100, 0x101
SCENARIO: list[tuple[str, Callable[[Side], Any]]] = [
    ("grant long", grant(60, LONG)),
    ("grant server-chosen id, TTL -5", grant(-5)),
    ("grant duplicate", grant(10, LONG)),
    ("grant too large", grant(9_000_000_001, 0x102)),
    ("grant largest", grant(9_000_000_000, 0x103)),
    ("put b long", put(b"b", LONG)),
    ("put c long", put(b"c", LONG)),
    ("put d unknown lease", put(b"d", 0x999)),
    ("put c ignore_lease", put(b"c", ignore_lease=True)),
    ("put e ignore_lease, missing key", put(b"e", ignore_lease=True)),
    ("put f plain", put(b"f")),
    ("put f ignore_lease, key without lease", put(b"f", ignore_lease=True)),
    ("put lease and ignore_lease", put(b"f", LONG, ignore_lease=True)),
    ("put b no lease: detaches", put(b"b")),
    ("range all", rng()),
    ("ttl long with keys", ttl(LONG, keys=True)),
    ("ttl unknown", ttl(0x999, keys=True)),
    ("ttl zero", ttl(0)),
    ("keep-alive long, unknown, zero", keep_alive(LONG, 0x999, 0)),
    ("leases", leases()),
    ("revoke unknown", revoke(0x999)),
    ("revoke zero", revoke(0)),
    ("revoke largest (no keys)", revoke(0x103)),
    (
        "txn compare lease",
        lambda s: s.kv.Txn(
            pb.TxnRequest(
                compare=[pb.Compare(key=b"c", target=pb.Compare.LEASE, result=pb.Compare.EQUAL, lease=LONG)],
                success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"c"))],
            )
        ),
    ),
    ("revoke long (deletes c)", revoke(LONG)),
    ("range after revoke", rng()),
    # The short lease last, so slow steps cannot let it expire before the wait.
    ("grant short (TTL 1 -> 2)", grant(1, SHORT)),
    ("put a short", put(b"a", SHORT)),
    ("wait for short to expire", "WAIT"),  # type: ignore[list-item]
    ("range after expiry", rng()),
    ("range at the revision before expiry", rng(revision=-1)),
    ("ttl short after expiry", ttl(SHORT, keys=True)),
    ("keep-alive short after expiry", keep_alive(SHORT)),
    ("revoke short after expiry", revoke(SHORT)),
    ("leases at the end", leases()),
]


def _wait_gone(side: Side, key: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while side.kv.Range(pb.RangeRequest(key=key)).kvs:
        assert time.monotonic() < deadline, "lease did not expire"
        time.sleep(0.1)


def _run(sides: list[Side]) -> Iterator[tuple[str, list[str]]]:
    rev_before_expiry: list[int] = []
    for name, step in SCENARIO:
        if step == "WAIT":
            rev_before_expiry = [s.kv.Range(pb.RangeRequest(key=b"a")).header.revision for s in sides]
            for s in sides:
                _wait_gone(s, b"a")
            continue
        if name == "range at the revision before expiry":
            out = [call(s, rng(revision=r)) for s, r in zip(sides, rev_before_expiry, strict=True)]
        else:
            out = [call(s, step) for s in sides]
        yield name, out


def _close_ttl(a: str, b: str) -> bool:
    """Equal, or equal but for a remaining TTL one second apart."""
    ta, tb = re.search(r" TTL: (\d+)", a), re.search(r" TTL: (\d+)", b)
    if a == b or not (ta and tb) or abs(int(ta.group(1)) - int(tb.group(1))) > 1:
        return a == b
    return a.replace(ta.group(0), "") == b.replace(tb.group(0), "")


def _ctl(endpoint: str, *args: str) -> tuple[int, str, list[str]]:
    r = etcdctl(endpoint, *args)
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    return r.returncode, re.sub(r"\b[0-9a-f]{16}\b", "<id>", r.stdout), errors


def test_lease_rpcs_and_etcdctl_output_match_etcd(metastore: Proc, etcd: Proc) -> None:
    """The RPC scenario, then etcdctl's lease commands (one pair of servers: saves start-ups)."""
    with grpc.insecure_channel(etcd.endpoint) as ce, grpc.insecure_channel(metastore.endpoint) as cm:
        for name, (want, have) in _run([Side(ce), Side(cm)]):
            if name.startswith("ttl long"):
                assert _close_ttl(want, have), f"{name}:\n etcd: {want}\n ours: {have}"
            else:
                assert have == want, f"{name}:\n etcd: {want}\n ours: {have}"
    commands = [
        ("lease", "grant", "1"),
        ("lease", "grant", "100"),
        ("lease", "timetolive", "1234"),
        ("lease", "keep-alive", "--once", "1234"),
        ("lease", "revoke", "1234"),
        ("lease", "grant", "abc"),
        ("put", "--lease=1234", "k", "v"),
    ]
    for args in commands:
        assert _ctl(metastore.endpoint, *args) == _ctl(etcd.endpoint, *args), args
    for ep in (metastore.endpoint, etcd.endpoint):
        lease = etcdctl(ep, "lease", "grant", "100").stdout.split()[1]
        assert etcdctl(ep, "put", f"--lease={lease}", "k", "v").returncode == 0
    want = _ctl(etcd.endpoint, "lease", "list")
    have = _ctl(metastore.endpoint, "lease", "list")
    assert have == want
