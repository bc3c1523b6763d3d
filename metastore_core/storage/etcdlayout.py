"""etcd's backend layout (3.4; 3.5 adds meta keys we read and ignore), and how ours maps onto it.

etcd keeps its state in bbolt buckets; one file owns every name here, as layout.py does for ours:

    key              <main:8 BE> "_" <sub:8 BE> ["t"]   -> mvccpb.KeyValue ("t": a tombstone, whose
                     value holds only the key)          ours: k<main><sub>[t] (record framing off)
    meta             consistent_index -> u64 BE; scheduledCompactRev, finishedCompactRev -> a
                     revision key (main "_" 0)           ours: m... meta keys
    lease            <id:8 BE> -> leasepb.Lease{ID, TTL, RemainingTTL}   ours: l<id> -> (ttl, rem.)
    alarm            serialized AlarmMember -> empty     not carried (a restore inherits no alarm)
    auth             authEnabled -> 1 byte (1 on); authRevision -> u64 BE
    authUsers        name -> authpb.User                 ours: u<name> (authpb, no framing)
    authRoles        name -> authpb.Role                 ours: r<name>
    members          hex member id -> JSON {"id","peerURLs","name","clientURLs"}
    members_removed  hex member id -> "removed"
    cluster          clusterVersion -> "3.4.0"

Worked example: our record k|00..05|00..00|t (a delete at revision 5) is etcd's key
00 00 00 00 00 00 00 05 5f 00 00 00 00 00 00 00 00 74 in bucket "key".
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from metastore_core.pb.authpb import auth_pb2
from metastore_core.pb.leasepb.lease_pb2 import Lease
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageView, Write
from metastore_core.storage.bbolt.writer import Items

KEY = b"key"
META = b"meta"
LEASE = b"lease"
ALARM = b"alarm"
AUTH = b"auth"
AUTH_USERS = b"authUsers"
AUTH_ROLES = b"authRoles"
MEMBERS = b"members"
MEMBERS_REMOVED = b"members_removed"
CLUSTER = b"cluster"
BUCKETS = (ALARM, AUTH, AUTH_ROLES, AUTH_USERS, CLUSTER, KEY, LEASE, MEMBERS, MEMBERS_REMOVED, META)

CONSISTENT_INDEX = b"consistent_index"
SCHEDULED_COMPACT = b"scheduledCompactRev"
FINISHED_COMPACT = b"finishedCompactRev"
TERM = b"term"  # etcd 3.5
AUTH_ENABLED = b"authEnabled"
AUTH_REVISION = b"authRevision"
CLUSTER_VERSION = b"clusterVersion"
CLUSTER_VERSION_VALUE = b"3.4.0"  # the oldest etcd that reads our snapshots; newer ones upgrade it

TOMBSTONE = b"t"
_REV = struct.Struct(">Q")
_REV_LEN = 17


class LayoutError(ValueError):
    """A record does not have etcd's layout."""


# ------------------------------------------------------------------ revision keys


def rev_bytes(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    """etcd's revision key: main, "_", sub (big-endian), and "t" for a tombstone."""
    key = _REV.pack(main) + b"_" + _REV.pack(sub)
    return key + TOMBSTONE if tombstone else key


def parse_rev(key: bytes) -> tuple[int, int, bool]:
    """(main, sub, tombstone) of an etcd revision key; LayoutError if it is not one."""
    if len(key) not in (_REV_LEN, _REV_LEN + 1) or key[8:9] != b"_" or key[17:] not in (b"", TOMBSTONE):
        raise LayoutError(f"not a revision key: {key[:40].hex()}")
    main, sub = _REV.unpack_from(key)[0], _REV.unpack_from(key, 9)[0]
    if main >= 1 << 63 or sub >= 1 << 63:  # etcd's revisions are int64
        raise LayoutError(f"revision {main}.{sub} out of range")
    return main, sub, len(key) == _REV_LEN + 1


def from_our_rev_key(skey: bytes) -> bytes:
    """k<main:8><sub:8>[t] -> <main:8>_<sub:8>[t]: the same order, so a scan stays sorted."""
    return skey[1:9] + b"_" + skey[9:]


# ------------------------------------------------------------------ our store -> etcd buckets


@dataclass(frozen=True)
class Member:
    """What etcd's members bucket says about one member."""

    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]

    def record(self) -> tuple[bytes, bytes]:
        """etcd's key (hex id) and JSON value (membership.Member: Go's field order, omitempty)."""
        doc: dict[str, object] = {"id": self.id, "peerURLs": self.peer_urls}
        if self.name:
            doc["name"] = self.name
        if self.client_urls:
            doc["clientURLs"] = self.client_urls
        return f"{self.id:x}".encode(), json.dumps(doc, separators=(",", ":")).encode()


def _u64(view: StorageView, key: bytes) -> int:
    raw = view.get(key)
    return L.parse_u64(raw) if raw else 0


def codec_of(view: StorageView) -> L.RecordCodec:
    """The record framing a store was created with (its format header says)."""
    return L.RecordCodec(view.get(L.META_CRC) == L.CRC_IEEE)


def key_bucket(view: StorageView) -> Iterator[tuple[bytes, bytes]]:
    """Bucket "key" from our revision records, framing removed (a record failing its CRC raises)."""
    codec = codec_of(view)
    records = view.scan(*L.rev_range(0, 1 << 63))
    if not codec.crc:  # the common case, and the hot loop of an etcd-format snapshot: inlined
        for skey, record in records:
            yield skey[1:9] + b"_" + skey[9:], record
        return
    for skey, record in records:
        yield from_our_rev_key(skey), codec.decode(record, skey)


def meta_bucket(view: StorageView) -> Iterator[tuple[bytes, bytes]]:
    index = _u64(view, L.META_CONSISTENT_INDEX)
    finished = _u64(view, L.META_COMPACT_REV)
    scheduled = max(_u64(view, L.META_SCHEDULED_COMPACT_REV), finished)
    yield CONSISTENT_INDEX, _REV.pack(index)
    if finished:
        yield FINISHED_COMPACT, rev_bytes(finished)
    if scheduled:
        yield SCHEDULED_COMPACT, rev_bytes(scheduled)


def lease_bucket(view: StorageView) -> Iterator[tuple[bytes, bytes]]:
    codec = codec_of(view)
    for key, record in view.scan(L.LEASE_PREFIX, L.prefix_end(L.LEASE_PREFIX)):
        lease_id = L.parse_lease_key(key)
        ttl, remaining = L.parse_lease_value(codec.decode(record, key))
        yield key[1:], Lease(ID=lease_id, TTL=ttl, RemainingTTL=max(remaining, 0)).SerializeToString()


def auth_records(
    view: StorageView, codec: L.RecordCodec
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """(users, roles) as (name, authpb bytes), from the u/r records if the store has any."""
    users = [(k[1:], codec.decode(v, k)) for k, v in view.scan(L.USER_PREFIX, L.prefix_end(L.USER_PREFIX))]
    roles = [(k[1:], codec.decode(v, k)) for k, v in view.scan(L.ROLE_PREFIX, L.prefix_end(L.ROLE_PREFIX))]
    return users, roles


def auth_bucket(enabled: bool, revision: int) -> list[tuple[bytes, bytes]]:
    """Bucket "auth" as etcd keeps it (authRevision starts at 1 in a new etcd)."""
    return [(AUTH_ENABLED, b"\x01" if enabled else b"\x00"), (AUTH_REVISION, _REV.pack(max(revision, 1)))]


def buckets_of(view: StorageView, members: Iterable[Member]) -> list[tuple[bytes, Items]]:
    """Every etcd bucket of the store in view, in name order, as the bbolt writer takes them.

    Each is a function giving the bucket's pairs: "key" scans the view again at every call (the
    writer reads a bucket once to plan and once to write); the small ones are lists.
    """
    users, roles = auth_records(view, codec_of(view))
    enabled = view.get(L.META_AUTH_ENABLED) == b"1"
    small: dict[bytes, list[tuple[bytes, bytes]]] = {
        ALARM: [],
        AUTH: auth_bucket(enabled, _u64(view, L.META_AUTH_REVISION)),
        AUTH_ROLES: roles,
        AUTH_USERS: users,
        CLUSTER: [(CLUSTER_VERSION, CLUSTER_VERSION_VALUE)],
        LEASE: list(lease_bucket(view)),
        MEMBERS: sorted(m.record() for m in members),
        MEMBERS_REMOVED: [],
        META: list(meta_bucket(view)),
    }
    out: list[tuple[bytes, Items]] = [(name, _fixed(rows)) for name, rows in small.items()]
    out.append((KEY, lambda: key_bucket(view)))
    return sorted(out, key=lambda b: b[0])


def _fixed(rows: list[tuple[bytes, bytes]]) -> Items:
    return lambda: rows


# ------------------------------------------------------------------ etcd buckets -> our store


@dataclass
class Imported:
    """What an etcd snapshot held besides the revision records."""

    consistent_index: int = 0
    compact_revision: int = 0  # max(finished, scheduled): a restore finishes it at start-up
    finished_compact: int = 0
    raft_term: int = 0
    leases: int = 0
    users: int = 0
    roles: int = 0
    auth_enabled: bool = False
    auth_revision: int = 0
    members: list[int] | None = None
    top_revision: int = 0  # the newest main revision of a record
    records: int = 0


def convert_key(key: bytes, value: bytes) -> tuple[bytes, bytes, int]:
    """One "key" bucket pair as our (storage key, KeyValue payload, main revision); checks both."""
    main, sub, tomb = parse_rev(key)
    try:
        kv = KeyValue.FromString(value)
    except DecodeError:
        raise LayoutError(f"revision {main}.{sub}: value is not an mvccpb.KeyValue") from None
    if not kv.key:
        raise LayoutError(f"revision {main}.{sub}: KeyValue without a key")
    if tomb:
        # etcd's tombstone holds only the key; ours also says its revision (watch catch-up reads it)
        value = KeyValue(key=kv.key, mod_revision=main).SerializeToString()
    elif kv.mod_revision != main or not 0 < kv.create_revision <= main or kv.version < 1:
        raise LayoutError(
            f"revision {main}.{sub}: KeyValue says mod {kv.mod_revision}, create {kv.create_revision}, "
            f"version {kv.version}"
        )
    return L.rev_key(main, sub, tomb), value, main


def convert_lease(key: bytes, value: bytes, codec: L.RecordCodec) -> Write:
    """One "lease" bucket pair as our lease record."""
    if len(key) != 8:
        raise LayoutError(f"lease key of {len(key)} bytes, want 8")
    try:
        lease = Lease.FromString(value)
    except DecodeError:
        raise LayoutError("lease value is not a leasepb.Lease") from None
    lease_id = _REV.unpack(key)[0]
    if lease_id != lease.ID or lease.ID <= 0 or lease.TTL < 0:
        raise LayoutError(f"lease {lease_id:x}: record says ID {lease.ID:x}, TTL {lease.TTL}")
    return L.lease_key(lease_id), codec.encode(L.lease_value(lease.TTL, max(lease.RemainingTTL, 0)))


def meta_u64(value: bytes, name: bytes) -> int:
    if len(value) != 8:
        raise LayoutError(f"meta {name.decode()} of {len(value)} bytes, want 8")
    return int(_REV.unpack(value)[0])


def auth_writes(
    users: Iterable[tuple[bytes, bytes]],
    roles: Iterable[tuple[bytes, bytes]],
    enabled: bool,
    revision: int,
    codec: L.RecordCodec,
) -> list[Write]:
    """The seam to the auth store: etcd's users and roles (authpb bytes) as our u/r and meta records.

    The auth store (engine/auth.py) reads u<name> -> authpb.User and r<name> -> authpb.Role, framed
    by the store's record codec like every record, meta auth_enabled b"1"/b"0" and auth_revision
    u64; every record is parsed here first.
    """
    out: list[Write] = []
    for name, raw in users:
        _parse(auth_pb2.User, raw, f"user {name!r}")
        out.append((L.USER_PREFIX + name, codec.encode(raw)))
    for name, raw in roles:
        _parse(auth_pb2.Role, raw, f"role {name!r}")
        out.append((L.ROLE_PREFIX + name, codec.encode(raw)))
    out.append((L.META_AUTH_ENABLED, b"1" if enabled else b"0"))
    out.append((L.META_AUTH_REVISION, L.u64(max(revision, 1))))
    return out


def _parse(cls: type[auth_pb2.User] | type[auth_pb2.Role], raw: bytes, what: str) -> None:
    try:
        cls.FromString(raw)
    except DecodeError:
        raise LayoutError(f"{what}: not an authpb record") from None


def member_id(value: bytes) -> int:
    """The ID in a members bucket JSON value."""
    try:
        doc = json.loads(value)
        mid = doc["id"]
    except (ValueError, KeyError, TypeError):
        raise LayoutError("member record is not etcd's JSON") from None
    if not isinstance(mid, int) or not 0 < mid < 1 << 64:
        raise LayoutError(f"member id {mid!r} is not a 64-bit ID")
    return mid
