"""Snapshot files of either format: which one a file is, and status, verify and restore for both.

    metastore   our own format (snapshot.py): starts with b"MSTSNAP\\n"
    etcd        etcd's (etcdsnap.py): a bbolt database, meta page magic 0xED0CDAED at byte 16
                (or at page size + 16 when meta page 0 is damaged)

Both end in a SHA-256 trailer and are 512*n + 32 bytes long. Every fault is a SnapshotError with
the byte offset it was found at, whichever format.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import google_crc32c

from metastore_core.storage import etcdsnap
from metastore_core.storage import snapshot as S
from metastore_core.storage.bbolt.format import BoltError
from metastore_core.storage.counting import CountingReader

METASTORE = "metastore"
ETCD = "etcd"
FORMATS = (ETCD, METASTORE)
_BOLT_MAGIC = b"\xed\xda\x0c\xed"  # 0xED0CDAED little-endian, right after the page header
_PAGE_SIZES = (4096, 8192, 16384, 65536, 1024, 2048, 32768)

Progress = Callable[[int, int], None]  # (bytes done, bytes in all): the total is known up front
Status = etcdsnap.Status
RestoreOptions = etcdsnap.RestoreOptions


def detect(path: str | os.PathLike[str]) -> str:
    """The format of the file at path; SnapshotError if it is neither."""
    with open(path, "rb") as f:
        head = f.read(24)
        if head.startswith(S.MAGIC):
            return METASTORE
        if head[16:20] == _BOLT_MAGIC:
            return ETCD
        for page_size in _PAGE_SIZES:  # meta page 0 damaged: look for meta page 1
            f.seek(page_size + 16)
            if f.read(4) == _BOLT_MAGIC:
                return ETCD
    raise S.SnapshotError("not a snapshot: neither metastore's format nor etcd's (bbolt)", 0)


@dataclass(frozen=True)
class Report:
    """What reading a whole snapshot found: etcdctl's status figures and the format's own."""

    format: str
    status: Status
    details: dict[str, Any]  # for `verify`: revision, compaction, counts, sha256, ...


@dataclass(frozen=True)
class Restored:
    """The data dir a restore made."""

    report: Report
    member_id: int
    cluster_id: int


def _bolt(exc: BoltError) -> S.SnapshotError:
    return S.SnapshotError(exc.reason, exc.offset)


def verify(
    path: str | os.PathLike[str], *, skip_hash_check: bool = False, progress: Progress | None = None
) -> Report:
    """Check all of a snapshot file of either format (skip_hash_check: etcd format only)."""
    fmt = detect(path)
    if fmt == ETCD:
        passes = _Passes(path, 2, progress)  # the pages, then the hash
        try:
            report = _etcd_report(
                etcdsnap.verify(path, skip_hash_check=skip_hash_check, progress=passes.report)
            )
        except BoltError as exc:
            raise _bolt(exc) from None
    else:
        passes = _Passes(path, 1, progress)
        report = _ours(path, passes.report)
    passes.done()
    return report


class _Passes:
    """Progress of work that reads the file n times over, from one-argument byte counts."""

    def __init__(self, path: str | os.PathLike[str], n: int, progress: Progress | None) -> None:
        self.total = n * os.path.getsize(path)
        self._progress = progress
        self.report: Callable[[int], None] | None = self._report if progress is not None else None

    def _report(self, done: int) -> None:
        assert self._progress is not None
        self._progress(min(done, self.total), self.total)

    def done(self) -> None:
        if self._progress is not None:
            self._progress(self.total, self.total)


def _etcd_report(s: etcdsnap.Summary) -> Report:
    details = {
        "revision": s.revision,
        "compact_revision": s.compact_revision,
        "consistent_index": s.consistent_index,
        "records": s.records,
        "leases": s.leases,
        "users": len(s.users),
        "roles": len(s.roles),
        "auth_enabled": s.auth_enabled,
        "members": [f"{m:x}" for m in s.members],
        "buckets": s.buckets,
        "size": s.size,
        "sha256": s.sha256,
    }
    return Report(ETCD, s.status, details)


def _ours(path: str | os.PathLike[str], progress: Callable[[int], None] | None) -> Report:
    """Our format: snapshot.read checks it all; the status hash is CRC-32C over each record's
    key and value in order (etcd's, without bucket names)."""
    header: S.Header | None = None
    crc = records = 0
    extend = google_crc32c.extend
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for item in S.read(cast(BinaryIO, CountingReader(f, progress))):
            if isinstance(item, S.Header):
                header = item
                continue
            crc = extend(extend(crc, item[0]), item[1])
            records += 1
        f.seek(size - S.TRAILER)
        sha = f.read(S.TRAILER).hex()
    assert header is not None
    details = {
        "format_version": header.version,
        "revision": header.revision,
        "compact_revision": header.compact_revision,
        "consistent_index": header.consistent_index,
        "cluster_id": f"{header.cluster_id:x}",
        "member_id": f"{header.member_id:x}",
        "records": records,
        "size": size,
        "sha256": sha,
    }
    return Report(METASTORE, Status(crc, header.revision, records, size - S.TRAILER), details)


def restore(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    opts: RestoreOptions = RestoreOptions(),
    progress: Progress | None = None,
) -> Restored:
    """Build a new data dir from a snapshot of either format; nothing is left behind on a fault.

    opts.crc and opts.skip_hash_check apply to etcd's format (ours keeps the framing it was
    taken with, and always has its trailer).
    """
    passes = _Passes(path, 2, progress)  # verify, then restore (etcd's: the pages, then the hash)
    if detect(path) == ETCD:
        try:
            r = etcdsnap.restore(path, data_dir, opts, passes.report)
        except BoltError as exc:
            raise _bolt(exc) from None
        passes.done()
        return Restored(_etcd_report(r.summary), r.member_id, r.cluster_id)
    member_id = opts.member_id
    if opts.keep_member_id:
        with open(path, "rb") as f:
            member_id = S.verify(f).header.member_id
    h = S.restore(path, data_dir, member_id=member_id, progress=passes.report)
    passes.done()
    status = Status(0, h.revision, 0, os.path.getsize(path) - S.TRAILER)
    details = {"revision": h.revision, "compact_revision": h.compact_revision}
    return Restored(Report(METASTORE, status, details), h.member_id, h.cluster_id)
