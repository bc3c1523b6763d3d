"""Every on-disk key and record format lives here, and nowhere else.

Key space (one byte of prefix, then the rest):
    k <main:8 BE> <sub:8 BE> [t]   one MVCC change; value = record(KeyValue)
                                   a trailing "t" marks a tombstone (delete)
    m <name>                       meta values (ids, revisions, format)
    l <lease id:8 BE>              a lease: record(ttl:8, remaining:8)
    a <member:8 BE> <alarm:1>      an active alarm (empty value)
    u <name> / r <name>            auth users and roles (authpb records, no CRC framing:
                                   Hash folds them as they are)

A record is the payload, prefixed with its CRC32C when CRC is on. The
format header (meta "format" and "crc") says which, so a store written with
CRC is always read with CRC.
"""

from __future__ import annotations

import struct
import zlib

from metastore_core.storage.base import StorageError

FORMAT_VERSION = b"1"

REV_PREFIX = b"k"
META_PREFIX = b"m"
LEASE_PREFIX = b"l"
ALARM_PREFIX = b"a"
USER_PREFIX = b"u"
ROLE_PREFIX = b"r"

TOMBSTONE = b"t"

META_FORMAT = b"mformat"
META_CRC = b"mcrc"
META_CLUSTER_ID = b"mcluster_id"
META_MEMBER_ID = b"mmember_id"
META_RAFT_TERM = b"mraft_term"
META_CONSISTENT_INDEX = b"mconsistent_index"
META_COMPACT_REV = b"mcompact_rev"  # compaction finished up to here
META_SCHEDULED_COMPACT_REV = b"mscheduled_compact_rev"  # compaction asked up to here
META_AUTH_ENABLED = b"mauth_enabled"
META_AUTH_REVISION = b"mauth_revision"
META_HEALTH_PROBE = b"mhealth_probe"  # health checker's write/read probe (no meaning)
META_INDEX_CHECKPOINT = b"mindex_checkpoint"  # the token of the index checkpoint (mvcc/checkpoint.py)

MAX_LEASE_TTL = 9_000_000_000  # seconds, etcd's MaxLeaseTTL: the largest TTL a lease record holds

CRC_NONE = b"none"
CRC_IEEE = b"crc32"

REV_KEY = _REV = struct.Struct(">QQ")  # (main, sub) at offset 1 of a revision key
_U64 = struct.Struct(">Q")
_LEASE = struct.Struct(">qq")


def rev_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    """The storage key of one MVCC change."""
    key = REV_PREFIX + _REV.pack(main, sub)
    return key + TOMBSTONE if tombstone else key


def parse_rev_key(key: bytes) -> tuple[int, int, bool]:
    """(main, sub, tombstone) of a storage key made by rev_key."""
    main, sub = _REV.unpack_from(key, 1)
    return main, sub, len(key) == 18


def rev_range(from_main: int, to_main: int) -> tuple[bytes, bytes]:
    """Storage key bounds covering main revisions [from_main, to_main)."""
    return REV_PREFIX + _REV.pack(from_main, 0), REV_PREFIX + _REV.pack(to_main, 0)


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with prefix (prefix is never all 0xff here)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def u64(n: int) -> bytes:
    return _U64.pack(n)


def parse_u64(b: bytes) -> int:
    return int(_U64.unpack(b)[0])


def lease_key(lease_id: int) -> bytes:
    return LEASE_PREFIX + _U64.pack(lease_id)


def parse_lease_key(key: bytes) -> int:
    return int(_U64.unpack_from(key, 1)[0])


def lease_value(ttl: int, remaining: int) -> bytes:
    return _LEASE.pack(ttl, remaining)


def parse_lease_value(b: bytes) -> tuple[int, int]:
    ttl, remaining = _LEASE.unpack(b)
    return int(ttl), int(remaining)


def user_key(name: str) -> bytes:
    """A user's record: authpb.User (its password field holds a bcrypt hash, never a password)."""
    return USER_PREFIX + name.encode()


def role_key(name: str) -> bytes:
    """A role's record: authpb.Role."""
    return ROLE_PREFIX + name.encode()


def alarm_key(member_id: int, alarm: int) -> bytes:
    return ALARM_PREFIX + _U64.pack(member_id) + bytes([alarm])


def parse_alarm_key(key: bytes) -> tuple[int, int]:
    return int(_U64.unpack_from(key, 1)[0]), key[9]


class CorruptRecord(StorageError):
    """Stored bytes failed a check (our record CRC, LevelDB's block checksum, a record that does
    not decode or disagrees with its key): never served, answered with DATA_LOSS."""


class RecordCodec:
    """Frames records with a CRC32 prefix when CRC is on."""

    def __init__(self, crc: bool) -> None:
        self.crc = crc

    def encode(self, payload: bytes) -> bytes:
        if not self.crc:
            return payload
        return _U32.pack(zlib.crc32(payload)) + payload

    def decode(self, record: bytes, key: bytes = b"") -> bytes:
        if not self.crc:
            return record
        if len(record) < 4 or _U32.unpack_from(record)[0] != zlib.crc32(record[4:]):
            raise CorruptRecord(f"CRC mismatch in record {key!r}")
        return record[4:]


_U32 = struct.Struct(">I")
