"""Whole-store work off the event loop: hashes, snapshots, defragment.

Each takes a storage view on the event loop, together with the revisions it
needs, and walks it on a worker thread, so a big store neither blocks
requests nor sees writes that land while it is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from metastore_core import errors
from metastore_core.member.consensus import MemberInfo
from metastore_core.member.durations import DEFRAG, HASH, SNAPSHOT, Durations
from metastore_core.mvcc import hashing
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import etcdsnap, snapshot
from metastore_core.storage.base import StorageView
from metastore_core.storage.etcdlayout import Member

log = logging.getLogger(__name__)

T = TypeVar("T")
SNAPSHOT_CHUNK = 32 * 1024  # etcd sends 32 KiB blobs


class Maintenance:
    """Hash, HashKV, Snapshot and Defragment over one store."""

    def __init__(
        self,
        store: MVCCStore,
        *,
        snapshot_format: str = "etcd",
        member: Callable[[], MemberInfo] | None = None,
    ) -> None:
        self._store = store
        self._snapshot_format = snapshot_format
        self._member = member
        self.defrags = 0
        self.snapshots = 0
        self.defrag_seconds = Durations(DEFRAG)
        self.snapshot_seconds = Durations(SNAPSHOT)
        self.hash_seconds = Durations(HASH)
        self.hash_kv_seconds = Durations(HASH)

    async def _on_view(self, fn: Callable[[StorageView], T]) -> T:
        view = self._store.storage.view()
        try:
            return await asyncio.to_thread(fn, view)
        finally:
            view.close()

    async def hash(self) -> tuple[int, int]:
        """(hash of the whole logical store, the revision it covers)."""
        s = self._store
        rev, compact, codec = s.committed_rev, s.compact_rev, s.codec
        started = time.monotonic()
        h = await self._on_view(lambda v: hashing.hash_all(v, codec, rev, compact))
        self.hash_seconds.observe(time.monotonic() - started)
        return h, rev

    async def hash_kv(self, revision: int) -> tuple[int, int]:
        """(hash of the keyspace up to revision, the compacted revision it assumed)."""
        s = self._store
        if revision < 0:
            raise errors.InvalidRequest("etcdserver: revision must not be negative")
        rev = s.check_rev(revision)
        compact, codec = s.compact_rev, s.codec
        started = time.monotonic()
        h = await self._on_view(lambda v: hashing.hash_kv(v, codec, rev, compact))
        self.hash_kv_seconds.observe(time.monotonic() - started)
        return h, compact

    async def defragment(self) -> None:
        storage = self._store.storage
        before = storage.size()
        started = time.monotonic()
        try:
            # LevelDB compacts the whole range while writes go on, so health stays SERVING.
            await asyncio.to_thread(storage.compact)
        except Exception as exc:
            raise errors.Unavailable(f"etcdserver: defragment failed: {exc}") from None
        self.defrags += 1
        self.defrag_seconds.observe(time.monotonic() - started)
        log.info("defragmented in %.3fs: %d -> %d bytes", time.monotonic() - started, before, storage.size())

    def _plan(self, view: StorageView) -> tuple[int, Generator[bytes, None, None]]:
        """(bytes before the trailer, the blobs): the first pass over view, on the worker."""
        if self._snapshot_format == "metastore":
            p = snapshot.plan(view)
            return p.body_size, snapshot.encode(view, p, SNAPSHOT_CHUNK)
        m = self._member() if self._member is not None else MemberInfo(0, "")
        members = [Member(m.id, m.name, m.peer_urls, m.client_urls)] if m.id else []
        ep = etcdsnap.plan(view, members)
        return ep.body_size, etcdsnap.encode(ep, SNAPSHOT_CHUNK)

    async def snapshot(self) -> AsyncGenerator[pb.SnapshotResponse, None]:
        """The store as etcd's Snapshot stream: blobs, then one message holding their SHA-256."""
        view = self._store.storage.view()
        # One thread per stream runs every step and, last, the cleanup: if the client goes away
        # mid-step, the view is closed only after that step is done with its iterator.
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metastore-snapshot")
        loop = asyncio.get_running_loop()
        blobs: Generator[bytes, None, None] | None = None
        started = time.monotonic()
        try:
            total, gen = await loop.run_in_executor(worker, self._plan, view)
            blobs = gen
            log.info("sending a %s snapshot of %d bytes", self._snapshot_format, total + snapshot.TRAILER)
            digest = hashlib.sha256()
            sent = 0
            finished = False
            while not finished:
                # a few blobs per thread hop keep the hop cost small against the encoding
                batch = await loop.run_in_executor(worker, _take, gen, 8)
                finished = len(batch) < 8
                for blob in batch:
                    digest.update(blob)
                    sent += len(blob)
                    yield pb.SnapshotResponse(remaining_bytes=total - sent, blob=blob)
            if sent != total:
                raise errors.Unavailable(
                    f"etcdserver: snapshot size changed while sending ({sent} != {total})"
                )
            # etcd ends with one message holding the SHA-256 of all blobs (etcdctl checks it)
            yield pb.SnapshotResponse(remaining_bytes=0, blob=digest.digest())
            self.snapshots += 1
            self.snapshot_seconds.observe(time.monotonic() - started)
        finally:
            worker.submit(_close, blobs, view)
            worker.shutdown(wait=False)


def in_use(store: MVCCStore) -> int:
    """Bytes of live table data (LevelDB's own estimate) plus the write-ahead log, capped by size."""
    size = store.storage.size()
    estimate = getattr(store.storage, "size_in_use", None)
    return min(size, estimate()) if estimate is not None else size


def _close(blobs: Generator[bytes, None, None] | None, view: StorageView) -> None:
    if blobs is not None:
        blobs.close()
    view.close()


def _take(it: Iterator[bytes], n: int) -> list[bytes]:
    out: list[bytes] = []
    for blob in it:
        out.append(blob)
        if len(out) == n:
            break
    return out
