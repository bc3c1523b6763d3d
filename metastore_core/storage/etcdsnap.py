"""etcd-format snapshots: etcd's buckets in a bbolt database, then the SHA-256 of that database.

What etcd's Maintenance/Snapshot streams and `etcdctl snapshot save` writes, so `etcdctl snapshot
status` and `snapshot restore` (and an etcd started on the result) take ours, and we take theirs.
A file is `pages * 4096` bytes of database and 32 bytes of SHA-256: always 512*n + 32 bytes.

Reading checks, in this order, and stops at the first fault with the byte offset it was found
at: the meta pages, the page tree of every bucket (reader.py), the layout of every record in the
buckets we restore (etcdlayout.py), that every page is used or free, and last the trailer. A
file without a trailer (a `db` copied out of an etcd data dir) passes only with skip_hash_check,
as with `etcdctl snapshot restore --skip-hash-check`.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

import google_crc32c

from metastore_core.storage import etcdlayout as E
from metastore_core.storage import layout as L
from metastore_core.storage import restoring
from metastore_core.storage.base import StorageView, Write
from metastore_core.storage.bbolt import writer
from metastore_core.storage.bbolt.format import BoltError, Data
from metastore_core.storage.bbolt.reader import BoltReader, Item
from metastore_core.storage.watermark import Mark

TRAILER = 32
BLOCK = 512
HASH_SLICE = 4 << 20
TRIM_EVERY = 64 << 20
Progress = Callable[[int], None]


# ------------------------------------------------------------------ writing


@dataclass
class Plan:
    """The layout of one etcd-format snapshot, decided before its first byte is sent."""

    bolt: writer.Plan

    @property
    def body_size(self) -> int:
        """Bytes before the SHA-256 trailer."""
        return self.bolt.size


def plan(view: StorageView, members: Iterable[E.Member]) -> Plan:
    """First pass over view: every page of the snapshot (reads all records once for their sizes)."""
    return Plan(writer.plan(E.buckets_of(view, members)))


def encode(p: Plan, chunk: int = 32 * 1024) -> Generator[bytes, None, None]:
    """Second pass: the database in blobs of `chunk` bytes; the caller appends their SHA-256."""
    return writer.encode(p.bolt, chunk)


def write(view: StorageView, out: BinaryIO, members: Iterable[E.Member] = ()) -> Plan:
    """Write a complete etcd-format snapshot file (database and trailer) of view to out."""
    p = plan(view, members)
    digest = hashlib.sha256()
    for blob in encode(p):
        digest.update(blob)
        out.write(blob)
    out.write(digest.digest())
    return p


# ------------------------------------------------------------------ reading


@dataclass(frozen=True)
class Status:
    """What `etcdctl snapshot status` prints: CRC-32C over every bucket name, key and value (in
    bucket and key order), the newest revision in bucket "key", the keys of all buckets, and the
    database size without the trailer."""

    hash: int
    revision: int
    total_keys: int
    total_size: int


@dataclass
class Summary:
    """What a full read of a valid etcd snapshot found."""

    status: Status
    size: int  # of the file
    sha256: str  # the trailer, hex ("" when there was none to check)
    records: int = 0  # revision records in bucket "key"
    compact_revision: int = 0  # max(finished, scheduled): a restore finishes it at start-up
    consistent_index: int = 0
    raft_term: int = 0
    leases: int = 0
    auth_enabled: bool = False
    auth_revision: int = 0
    users: list[tuple[bytes, bytes]] = field(default_factory=list)
    roles: list[tuple[bytes, bytes]] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    buckets: dict[str, int] = field(default_factory=dict)  # keys per top-level bucket

    @property
    def revision(self) -> int:
        """The revision a store restored from this snapshot continues from (as etcd computes it)."""
        return max(self.status.revision, self.compact_revision, 1)


class _Scan:
    """One pass over every bucket: etcdctl's status figures, layout checks, optional conversion."""

    def __init__(self, reader: BoltReader, codec: L.RecordCodec, sink: Callable[[list[Write]], None] | None):
        self.reader = reader
        self.codec = codec
        self.sink = sink
        self.batch: list[Write] = []
        self.crc = 0
        self.total = 0
        self.revision = 0
        self.finished = self.scheduled = 0
        self.found = Summary(Status(0, 0, 0, 0), 0, "")
        self._handlers: dict[bytes, Callable[[Item], None]] = {
            E.KEY: self._key,
            E.META: self._meta,
            E.LEASE: self._lease,
            E.AUTH: self._auth,
            E.AUTH_USERS: lambda it: self.found.users.append((it.key, it.value)),
            E.AUTH_ROLES: lambda it: self.found.roles.append((it.key, it.value)),
            E.MEMBERS: lambda it: self.found.members.append(E.member_id(it.value)),
        }

    def run(self) -> Summary:
        r = self.reader
        extend = google_crc32c.extend
        for top in r.items(r.root):
            if top.bucket is None:
                raise BoltError(
                    f"the root holds a plain key {top.key[:40]!r}; etcd keeps only buckets there", top.offset
                )
            self.crc = extend(self.crc, top.key)
            handle = self._handlers.get(top.key)
            count = 0
            for path, item in r.walk(top.bucket):
                if path:
                    continue  # inside a nested bucket: walked for its pages only, as etcdctl does
                count += 1
                self.crc = extend(self.crc, item.key)
                if item.bucket is None:
                    self.crc = extend(self.crc, item.value)
                if handle is None:
                    continue
                if item.bucket is not None:
                    raise BoltError(f"bucket {top.key.decode()!r} holds a nested bucket", item.offset)
                try:
                    handle(item)
                except E.LayoutError as exc:
                    raise BoltError(f"bucket {top.key.decode()!r}: {exc}", item.offset) from None
            self.total += count
            self.found.buckets[top.key.decode(errors="replace")] = count
        self._flush()
        f = self.found
        f.status = Status(self.crc, self.revision, self.total, r.pages * r.page_size)
        f.compact_revision = max(self.finished, self.scheduled)
        return f

    def _put(self, write: Write) -> None:
        if self.sink is not None:
            self.batch.append(write)
            if len(self.batch) >= restoring.BATCH:
                self._flush()

    def _flush(self) -> None:
        if self.sink is not None and self.batch:
            self.sink(self.batch)
            self.batch = []

    def _key(self, it: Item) -> None:
        skey, payload, main = E.convert_key(it.key, it.value)
        self.revision = main
        self.found.records += 1
        self._put((skey, self.codec.encode(payload)))

    def _meta(self, it: Item) -> None:
        if it.key == E.CONSISTENT_INDEX:
            self.found.consistent_index = E.meta_u64(it.value, it.key)
        elif it.key == E.TERM:
            self.found.raft_term = E.meta_u64(it.value, it.key)
        elif it.key == E.FINISHED_COMPACT:
            self.finished = E.parse_rev(it.value)[0]
        elif it.key == E.SCHEDULED_COMPACT:
            self.scheduled = E.parse_rev(it.value)[0]

    def _lease(self, it: Item) -> None:
        self._put(E.convert_lease(it.key, it.value, self.codec))
        self.found.leases += 1

    def _auth(self, it: Item) -> None:
        if it.key == E.AUTH_ENABLED:
            self.found.auth_enabled = it.value == b"\x01"
        elif it.key == E.AUTH_REVISION:
            self.found.auth_revision = E.meta_u64(it.value, it.key)


@contextmanager
def _mapped(path: str | os.PathLike[str]) -> Iterator[tuple[Data, int]]:
    """The file's bytes (mapped, not read in) and its size."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield b"", 0
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data, size


class _Resident:
    """Progress reports that also keep a mapped file's resident pages bounded: every TRIM_EVERY
    bytes the mapping lets go of its pages (they stay in the page cache; one read again faults
    back in), so checking a 10 GiB snapshot does not show as 10 GiB of RSS."""

    def __init__(self, data: Data, progress: Progress | None) -> None:
        self._data = data
        self._progress = progress
        self._next = TRIM_EVERY

    def __call__(self, done: int) -> None:
        if done >= self._next:
            self._next = done + TRIM_EVERY
            if isinstance(self._data, mmap.mmap):
                self._data.madvise(mmap.MADV_DONTNEED)
        if self._progress is not None:
            self._progress(done)


def _open(data: Data, size: int, skip_hash_check: bool, progress: Progress | None) -> BoltReader:
    has_trailer = size % BLOCK == TRAILER
    reader = BoltReader(data, size - TRAILER if has_trailer else size, progress)
    if reader.meta_problems and not skip_hash_check:
        # etcd and we write both meta pages whole; bbolt would fall back to the other one, which is
        # all a database copied from a data dir (skip_hash_check) can ask for
        raise reader.meta_problems[0]
    end = reader.pages * reader.page_size
    if has_trailer and end != reader.size:
        raise BoltError(f"{reader.size - end} bytes after the last page (page {reader.pages - 1})", end)
    if not has_trailer and not skip_hash_check:
        raise BoltError(
            f"no SHA-256 trailer: {size} bytes is not 512*n + 32 (a database copied from an etcd data "
            "dir needs --skip-hash-check)",
            size,
        )
    return reader


def _check_trailer(data: Data, reader: BoltReader, progress: Progress | None) -> str:
    """The trailer in hex, after checking it is the SHA-256 of the database bytes."""
    digest = hashlib.sha256()
    end = reader.size
    for at in range(0, end, HASH_SLICE):
        digest.update(data[at : min(at + HASH_SLICE, end)])
        if progress is not None:
            progress(end + min(at + HASH_SLICE, end))
    trailer = bytes(data[end : end + TRAILER])
    if len(trailer) != TRAILER:
        return ""
    if trailer != digest.digest():
        raise BoltError("SHA-256 trailer mismatch: the snapshot's bytes changed after it was taken", end)
    return trailer.hex()


def verify(
    path: str | os.PathLike[str], *, skip_hash_check: bool = False, progress: Progress | None = None
) -> Summary:
    """Read all of an etcd-format snapshot file; raises BoltError at the first fault.

    progress, if given, is called with a growing count of bytes up to twice the database size
    (one pass over the pages, one to hash them).
    """
    with _mapped(path) as (data, size):
        return verify_data(data, size, skip_hash_check=skip_hash_check, progress=_Resident(data, progress))


def verify_data(
    data: Data, size: int, *, skip_hash_check: bool = False, progress: Progress | None = None
) -> Summary:
    """verify, over the first `size` bytes of data (a whole snapshot)."""
    reader = _open(data, size, skip_hash_check, progress)
    found = _Scan(reader, L.RecordCodec(False), None).run()
    reader.finish()
    found.size = size
    found.sha256 = "" if skip_hash_check else _check_trailer(data, reader, progress)
    return found


@dataclass(frozen=True)
class RestoreOptions:
    """What a restore decides that the snapshot does not."""

    member_id: int | None = None  # the restored member's ID; None: a new random one
    keep_member_id: bool = False  # keep the snapshot's own (its one member's) ID instead
    crc: bool = False  # etcd format: frame every record with a CRC32, as serve --enable-crc
    skip_hash_check: bool = False  # etcd format: accept a database without its SHA-256 trailer


@dataclass(frozen=True)
class Restored:
    """The store a restore built."""

    summary: Summary
    member_id: int
    cluster_id: int


def restore(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    opts: RestoreOptions = RestoreOptions(),
    progress: Progress | None = None,
) -> Restored:
    """Build a new data dir from an etcd-format snapshot, checking it as verify does on the way.

    Keys with their whole history since the last compaction, revisions, compaction, the
    consistent index, leases (their keys come back through KeyValue.lease) and auth users, roles
    and switch come over; alarms, members and the cluster ID do not (a new member of a new
    cluster, as `etcdctl snapshot restore` makes). Nothing is left in data_dir when any check fails.
    """
    restoring.check_empty(data_dir)
    with _mapped(path) as (data, size):
        progress = _Resident(data, progress)
        reader = _open(data, size, opts.skip_hash_check, progress)
        with restoring.new_store(data_dir) as filling:
            storage = filling.storage
            codec = L.RecordCodec(opts.crc)
            scan = _Scan(reader, codec, lambda batch: storage.write(batch, sync=False))
            found = scan.run()
            reader.finish()
            found.size = size
            found.sha256 = "" if opts.skip_hash_check else _check_trailer(data, reader, progress)
            mid = _member_id(found, opts)
            cluster = restoring.new_id()
            last = E.auth_writes(found.users, found.roles, found.auth_enabled, found.auth_revision, codec)
            last += restoring.identity(
                cluster_id=cluster,
                member_id=mid,
                raft_term=max(found.raft_term, 1),
                consistent_index=found.consistent_index,
                compact=found.compact_revision,
                crc=opts.crc,
            )
            storage.write(last, sync=True)
            filling.mark = Mark(found.consistent_index, found.revision)
    return Restored(found, mid, cluster)


def _member_id(found: Summary, opts: RestoreOptions) -> int:
    if not opts.keep_member_id:
        return opts.member_id if opts.member_id is not None else restoring.new_id()
    if len(found.members) != 1:
        raise ValueError(f"--keep-member-id needs one member in the snapshot, it has {len(found.members)}")
    return found.members[0]
