"""etcdserverpb.Maintenance: Status, Alarm, Defragment, Hash, HashKV, Snapshot.

Everything that reads the whole store (hashes, snapshots) takes a storage view on the event
loop, together with the revisions it needs, and walks it on a worker thread, so a big store
neither blocks requests nor sees writes that land while it is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc

from metastore_core import errors
from metastore_core.mvcc import hashing
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.compactor import AutoCompactor
from metastore_core.server.node import ETCD_API_VERSION, Node
from metastore_core.storage import snapshot
from metastore_core.storage.base import StorageView

log = logging.getLogger(__name__)

T = TypeVar("T")
SNAPSHOT_CHUNK = 32 * 1024  # etcd sends 32 KiB blobs


def _in_use(node: Node) -> int:
    """Bytes of live table data (LevelDB's own estimate) plus the write-ahead log, capped by size."""
    size = node.storage.size()
    estimate = getattr(node.storage, "size_in_use", None)
    return min(size, estimate()) if estimate is not None else size


class MaintenanceService:
    """etcd's maintenance RPCs for a single member."""

    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.config
        self.auto = AutoCompactor(node, cfg.auto_compaction_mode, cfg.auto_compaction_retention)
        self.defrags = 0
        self.snapshots = 0

    # ---------------------------------------------------------------- lifecycle
    async def auto_compaction(self) -> None:
        """The Service task: auto-compaction on its schedule (returns at once when off)."""
        await self.auto.run()

    async def close(self) -> None:
        self.node.compactor.close()

    async def _on_view(self, fn: Callable[[StorageView], T]) -> T:
        view = self.node.storage.view()
        try:
            return await asyncio.to_thread(fn, view)
        finally:
            view.close()

    # ---------------------------------------------------------------- Status, Alarm
    async def Status(self, r: pb.StatusRequest, ctx: grpc.aio.ServicerContext) -> pb.StatusResponse:
        n = self.node
        size = n.storage.size()
        index = n.store.consistent_index
        errs = n.alarms.describe()
        if n.committer.failed is not None:
            errs.append(f"etcdserver: storage failed: {n.committer.failed}")
        resp = pb.StatusResponse(
            version=ETCD_API_VERSION,
            dbSize=size,
            dbSizeInUse=_in_use(n),
            leader=n.store.ids.member_id,
            raftIndex=index,
            raftTerm=n.store.ids.raft_term,
            raftAppliedIndex=index,
            errors=errs,
        )
        n.header(resp.header)
        return resp

    async def Alarm(self, r: pb.AlarmRequest, ctx: grpc.aio.ServicerContext) -> pb.AlarmResponse:
        n = self.node
        if r.action == pb.AlarmRequest.ACTIVATE:
            if r.alarm == pb.NONE:
                raise errors.InvalidRequest("etcdserver: cannot activate alarm NONE")
            if n.alarms.activate(r.memberID, r.alarm) and n.committer.failed is None:
                await n.committer.flush()
        elif r.action == pb.AlarmRequest.DEACTIVATE:
            changed = n.alarms.deactivate(r.memberID, r.alarm)
            if n.committer.failed is not None:
                if not n.alarms.has(pb.NOSPACE) and not n.alarms.has(pb.CORRUPT):
                    # the last alarm is gone: the operator says there is space again
                    await n.recovery.recover()
            elif changed:
                await n.committer.flush()
        elif r.action != pb.AlarmRequest.GET:
            raise errors.InvalidRequest(f"etcdserver: invalid alarm action {r.action}")
        # etcd answers alarms with no header at all
        return pb.AlarmResponse(alarms=n.alarms.get(r.alarm if r.action == pb.AlarmRequest.GET else pb.NONE))

    # ---------------------------------------------------------------- Defragment
    async def Defragment(
        self, r: pb.DefragmentRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.DefragmentResponse:
        n = self.node
        before = n.storage.size()
        started = time.monotonic()
        try:
            # LevelDB compacts the whole range while writes go on, so health stays SERVING.
            await asyncio.to_thread(n.storage.compact)
        except Exception as exc:
            raise errors.Unavailable(f"etcdserver: defragment failed: {exc}") from None
        self.defrags += 1
        log.info(
            "defragmented in %.3fs: %d -> %d bytes", time.monotonic() - started, before, n.storage.size()
        )
        return pb.DefragmentResponse()  # etcd sends no header here

    # ---------------------------------------------------------------- hashes
    async def Hash(self, r: pb.HashRequest, ctx: grpc.aio.ServicerContext) -> pb.HashResponse:
        s = self.node.store
        rev, compact, codec = s.committed_rev, s.compact_rev, s.codec
        h = await self._on_view(lambda v: hashing.hash_all(v, codec, rev, compact))
        resp = pb.HashResponse(hash=h)
        self.node.header(resp.header, rev)
        return resp

    async def HashKV(self, r: pb.HashKVRequest, ctx: grpc.aio.ServicerContext) -> pb.HashKVResponse:
        s = self.node.store
        if r.revision < 0:
            raise errors.InvalidRequest("etcdserver: revision must not be negative")
        rev = s.check_rev(r.revision)
        current, compact, codec = s.committed_rev, s.compact_rev, s.codec
        h = await self._on_view(lambda v: hashing.hash_kv(v, codec, rev, compact))
        resp = pb.HashKVResponse(hash=h, compact_revision=compact)
        self.node.header(resp.header, current)
        return resp

    # ---------------------------------------------------------------- Snapshot
    async def Snapshot(
        self, r: pb.SnapshotRequest, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SnapshotResponse]:
        view = self.node.storage.view()
        # One thread per stream runs every step and, last, the cleanup: if the client goes away
        # mid-step, the view is closed only after that step is done with its iterator.
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metastore-snapshot")
        loop = asyncio.get_running_loop()
        blobs: Generator[bytes, None, None] | None = None
        try:
            plan = await loop.run_in_executor(worker, snapshot.plan, view)
            total = plan.body_size
            log.info(
                "sending snapshot at revision %d: %d bytes", plan.header.revision, total + snapshot.TRAILER
            )
            blobs = gen = snapshot.encode(view, plan, SNAPSHOT_CHUNK)
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
                raise errors.MetastoreError(f"snapshot size changed while sending ({sent} != {total})")
            # etcd ends with one message holding the SHA-256 of all blobs (etcdctl checks it)
            yield pb.SnapshotResponse(remaining_bytes=0, blob=digest.digest())
            self.snapshots += 1
        finally:
            worker.submit(_close, blobs, view)
            worker.shutdown(wait=False)

    async def MoveLeader(
        self, r: pb.MoveLeaderRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.MoveLeaderResponse:
        await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
        raise AssertionError("unreachable")

    async def Downgrade(self, r: pb.DowngradeRequest, ctx: grpc.aio.ServicerContext) -> pb.DowngradeResponse:
        await ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "metastore: Downgrade is not supported")
        raise AssertionError("unreachable")


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
