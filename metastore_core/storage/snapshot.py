"""The metastore snapshot file: a versioned, self-describing, checksummed dump of one store.

Layout (all integers big-endian):

    offset 0   header
               magic        8 bytes   b"MSTSNAP\\n"
               version      u16       FORMAT_VERSION (1)
               fields_len   u16       bytes of fixed fields that follow (a later version may add more)
               fields       revision u64, compact_revision u64, consistent_index u64,
                            cluster_id u64, member_id u64, raft_term u64, created_unix_ms u64,
                            record_crc u8 (1 when stored values carry our CRC32 framing)
               header_crc   u32       CRC32 (IEEE) of every header byte before it
    then       records, each: tag u8 (1), key_len u32, value_len u32, key, value, crc u32
               (CRC32 of the record's bytes before the crc); raw storage pairs, in key order
    then       end record: tag u8 (0xFF), count u64, records_bytes u64, crc u32
    then       zero padding up to a multiple of 512 bytes
    last       32 bytes: SHA-256 of every byte before it

Reading checks more than checksums: every record is decoded and checked as the store would
read it (_Checker below), and a fault is refused with its record's offset.

So a file is always 512*n + 32 bytes: exactly what `etcdctl snapshot save` demands of the
Maintenance/Snapshot stream (blobs, then a final SHA-256 message). Records carry the store's
own keys (layout.py) except identity/format meta, which the header holds, and alarms, which
a restore does not inherit. No I/O framework here: plain functions over a StorageView.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import time
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from google.protobuf.message import DecodeError

from metastore_core.pb.authpb import auth_pb2 as authpb
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.storage import layout as L
from metastore_core.storage import restoring
from metastore_core.storage.base import StorageView
from metastore_core.storage.counting import CountingReader
from metastore_core.storage.watermark import Mark

MAGIC = b"MSTSNAP\n"
FORMAT_VERSION = 1
BLOCK = 512
TRAILER = 32
TAG_ENTRY = 1
TAG_END = 0xFF
MAX_KEY = 1 << 16  # a sanity bound for verify: no storage key is this long
MAX_VALUE = 1 << 30

_PRE = struct.Struct(">8sHH")
_FIELDS = struct.Struct(">QQQQQQQB")
_U32 = struct.Struct(">I")
_REC = struct.Struct(">BII")
_END = struct.Struct(">BQQ")
HEADER_LEN = _PRE.size + _FIELDS.size + _U32.size

# Meta keys the header carries (or a restore rewrites): never copied as records.
_HEADER_META = {
    L.META_FORMAT,
    L.META_CRC,
    L.META_CLUSTER_ID,
    L.META_MEMBER_ID,
    L.META_RAFT_TERM,
    L.META_CONSISTENT_INDEX,
    L.META_COMPACT_REV,
    L.META_SCHEDULED_COMPACT_REV,
}


class SnapshotError(Exception):
    """A snapshot file is damaged or not a snapshot; offset is where the fault was found."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset
        self.reason = message


@dataclass(frozen=True)
class Header:
    """What a snapshot says about itself."""

    revision: int
    compact_revision: int
    consistent_index: int
    cluster_id: int
    member_id: int
    raft_term: int
    created_unix_ms: int
    record_crc: bool
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        body = _PRE.pack(MAGIC, self.version, _FIELDS.size) + _FIELDS.pack(
            self.revision,
            self.compact_revision,
            self.consistent_index,
            self.cluster_id,
            self.member_id,
            self.raft_term,
            self.created_unix_ms,
            int(self.record_crc),
        )
        return body + _U32.pack(zlib.crc32(body))


def _u64(view: StorageView, key: bytes) -> int:
    raw = view.get(key)
    return L.parse_u64(raw) if raw else 0


def _entries(view: StorageView) -> Iterator[tuple[bytes, bytes]]:
    for key, value in view.scan(b"", b"\xff"):
        if key.startswith(L.ALARM_PREFIX) or key in _HEADER_META:
            continue
        yield key, value


def _record(key: bytes, value: bytes) -> bytes:
    body = _REC.pack(TAG_ENTRY, len(key), len(value)) + key + value
    return body + _U32.pack(zlib.crc32(body))


def _end(count: int, nbytes: int) -> bytes:
    body = _END.pack(TAG_END, count, nbytes)
    return body + _U32.pack(zlib.crc32(body))


def _pad(n: int) -> int:
    return (-n) % BLOCK


@dataclass
class Plan:
    """The first pass over a view: the header and the exact size of the body."""

    header: Header
    body_size: int  # everything but the 32-byte trailer


def plan(view: StorageView) -> Plan:
    """Walk the view once: the header (revision from the data itself) and the body size."""
    top = 0
    size = HEADER_LEN
    rev_start, rev_stop = L.rev_range(0, 1 << 63)
    for key, value in _entries(view):
        size += _REC.size + len(key) + len(value) + _U32.size
        if rev_start <= key < rev_stop:
            top = max(top, L.parse_rev_key(key)[0])
    size += _END.size + _U32.size
    size += _pad(size)
    compact = max(_u64(view, L.META_COMPACT_REV), _u64(view, L.META_SCHEDULED_COMPACT_REV))
    header = Header(
        revision=max(top, compact, 1),
        compact_revision=compact,
        consistent_index=_u64(view, L.META_CONSISTENT_INDEX),
        cluster_id=_u64(view, L.META_CLUSTER_ID),
        member_id=_u64(view, L.META_MEMBER_ID),
        raft_term=_u64(view, L.META_RAFT_TERM) or 1,
        created_unix_ms=int(time.time() * 1000),
        record_crc=view.get(L.META_CRC) == L.CRC_IEEE,
    )
    return Plan(header, size)


def encode(view: StorageView, p: Plan, chunk: int = 32 * 1024) -> Generator[bytes, None, None]:
    """The body of the snapshot (no trailer) in blobs of `chunk` bytes (the last may be shorter).

    The caller appends the SHA-256 of the concatenated blobs; `write` does that for files.
    The view must be the one `plan` walked, so the sizes match (checked).
    """
    buf = bytearray(p.header.encode())
    count = nbytes = 0
    codec = L.RecordCodec(p.header.record_crc)
    rev_start, rev_stop = L.rev_range(0, 1 << 63)
    for key, value in _entries(view):
        if rev_start <= key < rev_stop:
            codec.decode(value, key)  # never copy a record that fails its own CRC
        rec = _record(key, value)
        count += 1
        nbytes += len(rec)
        buf += rec
        if len(buf) >= chunk:
            while len(buf) >= chunk:
                out = bytes(buf[:chunk])
                del buf[:chunk]
                yield out
    buf += _end(count, nbytes)
    size = HEADER_LEN + nbytes + _END.size + _U32.size
    buf += bytes(_pad(size))
    size += _pad(size)
    if size != p.body_size:
        raise RuntimeError(f"snapshot body changed between passes ({size} != {p.body_size} bytes)")
    while buf:
        out = bytes(buf[:chunk])
        del buf[:chunk]
        yield out


def compose(header: Header, pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A whole snapshot file holding pairs as given, unchecked (for tests that craft files)."""
    body = bytearray(header.encode())
    count = 0
    for key, value in pairs:
        body += _record(key, value)
        count += 1
    body += _end(count, len(body) - HEADER_LEN)
    body += bytes(_pad(len(body)))
    return bytes(body) + hashlib.sha256(body).digest()


def write(view: StorageView, out: BinaryIO) -> Header:
    """Write a complete snapshot file (body and trailer) of view to out."""
    p = plan(view)
    digest = hashlib.sha256()
    for blob in encode(view, p):
        digest.update(blob)
        out.write(blob)
    out.write(digest.digest())
    return p.header


# ------------------------------------------------------------------ reading


@dataclass
class Summary:
    """What verify found in a valid snapshot."""

    header: Header
    records: int
    size: int
    sha256: str


class _Reader:
    """Reads a snapshot stream sequentially, hashing every byte and tracking the offset."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.offset = 0
        self.sha = hashlib.sha256()

    def read(self, n: int, what: str) -> bytes:
        data = self.src.read(n)
        if len(data) != n:
            raise SnapshotError(f"truncated: {what} needs {n} bytes, {len(data)} left", self.offset)
        self.sha.update(data)
        self.offset += n
        return data


def _read_header(r: _Reader) -> Header:
    magic, version, fields_len = _PRE.unpack(r.read(_PRE.size, "header"))
    if magic != MAGIC:
        raise SnapshotError("not a metastore snapshot (bad magic)", 0)
    if version != FORMAT_VERSION:
        raise SnapshotError(f"unsupported snapshot format version {version}", 8)
    if fields_len != _FIELDS.size:
        raise SnapshotError(f"header field length {fields_len}, want {_FIELDS.size}", 10)
    fields = r.read(fields_len, "header fields")
    at = r.offset
    (crc,) = _U32.unpack(r.read(_U32.size, "header CRC"))
    if crc != zlib.crc32(_PRE.pack(magic, version, fields_len) + fields):
        raise SnapshotError("header CRC mismatch", at)
    rev, compact, index, cluster, member, term, created, rcrc = _FIELDS.unpack(fields)
    if rcrc not in (0, 1):
        raise SnapshotError(f"bad record_crc flag {rcrc}", at - 1)
    return Header(rev, compact, index, cluster, member, term, created, bool(rcrc), version)


# ------------------------------------------------------------------ what the records must say
# Checksums only prove the bytes are the ones written. A file with valid checksums but bad
# contents (an undecodable KeyValue, a revision key of the wrong length, revision 2^63) was
# restored, and the daemon then crashed at start or failed every write. So every record is
# decoded and checked against what the store's own writer produces (layout.py), and a fault is
# refused with the record's offset.
MAX_REVISION = 1 << 62  # beyond any real store, and 2^62 more writes fit in etcd's int64
MAX_SUB = (1 << 32) - 1  # sub-revisions share an int with main in the index (mvcc/index.py)
_META = frozenset(
    value for name, value in vars(L).items() if name.startswith("META_") and isinstance(value, bytes)
)


@dataclass
class _KeyState:
    """The last record of one key seen so far."""

    at: int  # its offset
    create: int
    version: int  # 0: a tombstone
    lease: int


class _Checker:
    """Checks each record as it is read, and what only the whole file can show at the end."""

    def __init__(self, header: Header, at: int) -> None:
        if not 1 <= header.revision < MAX_REVISION:
            raise SnapshotError(f"header revision {header.revision} out of range", at)
        if header.compact_revision > header.revision or header.consistent_index >= MAX_REVISION:
            raise SnapshotError(
                f"header compact revision {header.compact_revision} / consistent index "
                f"{header.consistent_index} out of range for revision {header.revision}",
                at,
            )
        self.header = header
        self.codec = L.RecordCodec(header.record_crc)
        self.previous = b""
        self.top = 0
        self.keys: dict[bytes, _KeyState] = {}
        self.leases: set[int] = set()

    def record(self, key: bytes, value: bytes, at: int) -> None:
        if key <= self.previous:
            raise SnapshotError(f"record key {key!r} is not after the one before it", at)
        self.previous = key
        prefix = key[:1]
        if prefix == L.REV_PREFIX:
            self._change(key, value, at)
        elif prefix == L.LEASE_PREFIX:
            self._lease(key, value, at)
        elif prefix == L.META_PREFIX:
            if key not in _META or key in _HEADER_META:
                raise SnapshotError(f"unexpected meta record {key!r}", at)
        elif prefix in (L.USER_PREFIX, L.ROLE_PREFIX):
            self._auth(key, value, at)
        else:
            raise SnapshotError(f"record {key!r} has no known prefix", at)

    def _payload(self, key: bytes, value: bytes, at: int) -> bytes:
        try:
            return self.codec.decode(value, key)
        except L.CorruptRecord as exc:
            raise SnapshotError(str(exc), at) from None

    def _change(self, key: bytes, value: bytes, at: int) -> None:
        if len(key) not in (17, 18) or (len(key) == 18 and key[17:] != L.TOMBSTONE):
            raise SnapshotError(f"revision key {key!r} is malformed", at)
        main, sub, tomb = L.parse_rev_key(key)
        if not 1 <= main <= self.header.revision or sub > MAX_SUB:
            raise SnapshotError(
                f"revision {main}.{sub} out of range (snapshot at {self.header.revision})", at
            )
        payload = self._payload(key, value, at)
        try:
            kv = KeyValue.FromString(payload)
        except DecodeError:
            raise SnapshotError(f"revision {main}.{sub}: the KeyValue does not decode", at) from None
        if kv.SerializeToString() != payload:
            raise SnapshotError(f"revision {main}.{sub}: the KeyValue is not as the store writes it", at)
        if not kv.key or kv.mod_revision != main:
            raise SnapshotError(
                f"revision {main}.{sub}: KeyValue key {kv.key[:64]!r}, mod_revision {kv.mod_revision}",
                at,
            )
        before = self.keys.get(kv.key)
        if tomb:
            if kv.create_revision or kv.version or kv.lease or kv.value:
                raise SnapshotError(f"revision {main}.{sub}: a tombstone with contents", at)
            if before is not None and not before.version:
                raise SnapshotError(f"revision {main}.{sub}: deletes {kv.key[:64]!r} twice", at)
            self.keys[kv.key] = _KeyState(at, 0, 0, 0)
        else:
            self._put(kv, before, f"revision {main}.{sub}", at)
        self.top = main

    def _put(self, kv: KeyValue, before: _KeyState | None, where: str, at: int) -> None:
        main = kv.mod_revision
        if not 1 <= kv.create_revision <= main or kv.version < 1 or kv.lease < 0:
            raise SnapshotError(
                f"{where}: create_revision {kv.create_revision}, version {kv.version}, lease {kv.lease}",
                at,
            )
        if before is None or not before.version:  # a first record (history may be compacted)
            fresh = before is not None  # after a tombstone, a new generation starts here
            if (kv.version == 1) != (kv.create_revision == main) or (fresh and kv.version != 1):
                raise SnapshotError(
                    f"{where}: version {kv.version} with create_revision {kv.create_revision}", at
                )
        elif (kv.create_revision, kv.version) != (before.create, before.version + 1):
            raise SnapshotError(
                f"{where}: create_revision {kv.create_revision} version {kv.version} does not follow "
                f"{before.create} / {before.version}",
                at,
            )
        self.keys[kv.key] = _KeyState(at, kv.create_revision, kv.version, kv.lease)

    def _lease(self, key: bytes, value: bytes, at: int) -> None:
        if len(key) != 9:
            raise SnapshotError(f"lease key {key!r} is malformed", at)
        lease_id = L.parse_lease_key(key)
        payload = self._payload(key, value, at)
        if not 0 < lease_id < 1 << 63 or len(payload) != 16:
            raise SnapshotError(f"lease {lease_id:#x}: bad ID or record of {len(payload)} bytes", at)
        ttl, remaining = L.parse_lease_value(payload)
        if not 0 < ttl <= L.MAX_LEASE_TTL or not 0 <= remaining <= L.MAX_LEASE_TTL:
            raise SnapshotError(f"lease {lease_id:#x}: TTL {ttl}, remaining {remaining}", at)
        self.leases.add(lease_id)

    def _auth(self, key: bytes, value: bytes, at: int) -> None:
        message = authpb.User() if key[:1] == L.USER_PREFIX else authpb.Role()
        try:
            message.ParseFromString(self._payload(key, value, at))
        except DecodeError:
            raise SnapshotError(f"auth record {key!r} does not decode", at) from None
        if not key[1:] or message.name != key[1:]:
            raise SnapshotError(f"auth record {key!r} names {message.name!r}", at)

    def finish(self, at: int) -> None:
        """Checks of the whole: the header's revision, and the lease of every live key."""
        h = self.header
        if h.revision != max(self.top, h.compact_revision, 1):
            raise SnapshotError(
                f"header revision {h.revision}, but the newest change is {self.top} and the "
                f"compaction {h.compact_revision}",
                at,
            )
        for key, k in self.keys.items():
            if k.version and k.lease and k.lease not in self.leases:
                raise SnapshotError(
                    f"key {key[:64]!r} is attached to lease {k.lease:#x}, which is absent", k.at
                )


def read(src: BinaryIO) -> Iterator[Header | tuple[bytes, bytes]]:
    """Yield the header, then every (key, value) record, checking everything on the way.

    Raises SnapshotError at the first fault; the trailer is checked after the last record, so a
    consumer must not commit what it read until the iteration has finished.
    """
    r = _Reader(src)
    header = _read_header(r)
    check = _Checker(header, _PRE.size)
    yield header
    count = nbytes = 0
    while True:
        at = r.offset
        tag = r.read(1, "record tag")[0]
        if tag == TAG_END:
            rest = r.read(_END.size - 1 + _U32.size, "end record")
            body = bytes([tag]) + rest[:-4]
            if _U32.unpack(rest[-4:])[0] != zlib.crc32(body):
                raise SnapshotError("end record CRC mismatch", at)
            _, want_count, want_bytes = _END.unpack(body)
            if (want_count, want_bytes) != (count, nbytes):
                raise SnapshotError(
                    f"end record says {want_count} records / {want_bytes} bytes, read {count} / {nbytes}",
                    at,
                )
            check.finish(at)
            break
        if tag != TAG_ENTRY:
            raise SnapshotError(f"unknown record tag {tag:#x}", at)
        klen, vlen = struct.unpack(">II", r.read(8, "record lengths"))
        if klen == 0 or klen > MAX_KEY or vlen > MAX_VALUE:
            raise SnapshotError(f"implausible record lengths key={klen} value={vlen}", at)
        kv = r.read(klen + vlen, "record data")
        crc_at = r.offset
        (crc,) = _U32.unpack(r.read(4, "record CRC"))
        if crc != zlib.crc32(_REC.pack(tag, klen, vlen) + kv):
            raise SnapshotError(f"record {count} CRC mismatch", crc_at)
        count += 1
        nbytes += _REC.size + klen + vlen + 4
        check.record(kv[:klen], kv[klen:], at)
        yield kv[:klen], kv[klen:]
    pad_at = r.offset
    pad = r.read(_pad(r.offset), "padding")
    if pad.strip(b"\0"):
        raise SnapshotError("non-zero padding", pad_at + len(pad) - len(pad.lstrip(b"\0")))
    want = r.sha.digest()
    at = r.offset
    trailer = src.read(TRAILER)
    if len(trailer) != TRAILER:
        raise SnapshotError(f"truncated: SHA-256 trailer needs 32 bytes, {len(trailer)} left", at)
    if trailer != want:
        raise SnapshotError("SHA-256 trailer mismatch", at)
    if src.read(1):
        raise SnapshotError("data after the SHA-256 trailer", at + TRAILER)


def verify(src: BinaryIO) -> Summary:
    """Check structure, every CRC and the trailer of a file; raises SnapshotError at the first fault."""
    header: Header | None = None
    records = 0
    for item in read(src):
        if isinstance(item, Header):
            header = item
        else:
            records += 1
    assert header is not None
    size = src.tell()
    src.seek(size - TRAILER)
    return Summary(header, records, size, src.read(TRAILER).hex())


# ------------------------------------------------------------------ restoring


def restore(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    member_id: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Header:
    """Verify the snapshot at path, then build a new LevelDB data dir from it.

    Refuses a data dir that exists and is not empty. The restored member gets a new random
    member ID unless member_id is given; the cluster ID, revisions, compaction and leases come
    from the snapshot. Alarms are not restored. A compaction the snapshot carried unfinished
    records for is finished by the daemon's start-up. progress, if given, is called with a growing
    byte count up to twice the file size (one pass to verify, one to restore).
    """
    src_path = Path(path)
    restoring.check_empty(data_dir)
    size = src_path.stat().st_size
    with open(src_path, "rb") as f:
        verify(cast(BinaryIO, CountingReader(f, progress)))
    new_member = member_id if member_id is not None else restoring.new_id()
    with restoring.new_store(data_dir) as filling, open(src_path, "rb") as f:
        storage = filling.storage
        batch: list[tuple[bytes, bytes | None]] = []
        header: Header | None = None
        for item in read(cast(BinaryIO, CountingReader(f, progress, size))):
            if isinstance(item, Header):
                header = item
                continue
            batch.append(item)
            if len(batch) >= restoring.BATCH:
                storage.write(batch, sync=False)
                batch = []
        assert header is not None
        batch += restoring.identity(
            cluster_id=header.cluster_id,
            member_id=new_member,
            raft_term=header.raft_term,
            consistent_index=header.consistent_index,
            compact=header.compact_revision,
            crc=header.record_crc,
        )
        storage.write(batch, sync=True)
        filling.mark = Mark(header.consistent_index, header.revision)
    return dataclasses.replace(header, member_id=new_member)
