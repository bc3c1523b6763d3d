"""The node: engine objects plus the committer, shared by every service adapter."""

from __future__ import annotations

import time
from typing import Any

from metastore_core import errors
from metastore_core.config import Config
from metastore_core.engine.alarms import Alarms
from metastore_core.engine.apply import Applier
from metastore_core.engine.lease import Lessor
from metastore_core.engine.ranges import range_at
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.committer import Committer
from metastore_core.server.compactor import Compactor
from metastore_core.server.quota import StorageRecovery, WriteGuard
from metastore_core.storage import Storage

ETCD_API_VERSION = "3.5.0"  # the etcd API level we speak; clients switch features on it


class Node:
    """One member: store, lessor, alarms, apply path and group commit."""

    def __init__(self, storage: Storage, config: Config) -> None:
        self.config = config
        self.limits = config.limits
        self.storage = storage
        self.store = MVCCStore(storage, crc=config.enable_crc)
        self.lessor = Lessor(self.store)
        self.alarms = Alarms(self.store)
        self.clock = time.monotonic
        self.applier = Applier(self.store, self.lessor, self.clock)
        self.committer = Committer(self.store, sync=config.fsync)
        self.started = time.time()
        # Maintenance: quota/alarm checks before writes, background compaction, I/O failure recovery.
        self.store.incremental_compaction = True
        self.guard = WriteGuard(self)
        self.compactor = Compactor(self)
        self.recovery = StorageRecovery(self)

    def load(self) -> None:
        """Rebuild every in-memory structure from storage."""
        self.store.load()
        self.lessor.load(self.clock())
        self.alarms.load()

    # ---------------------------------------------------------------- headers
    def header(self, into: pb.ResponseHeader, revision: int | None = None) -> None:
        ids = self.store.ids
        into.cluster_id = ids.cluster_id
        into.member_id = ids.member_id
        into.raft_term = ids.raft_term
        if revision is not None:
            into.revision = revision
        elif not into.revision:
            into.revision = self.store.committed_rev

    # ---------------------------------------------------------------- requests
    def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        rev = self.store.check_rev(r.revision)
        resp = range_at(self.store, r, rev)
        self.header(resp.header, self.store.committed_rev)
        return resp

    async def write(self, command: Any) -> Any:
        """Apply one write command and answer once it is durable."""
        await self.guard.check(command)
        if self.committer.failed is not None:
            raise errors.Unavailable(f"etcdserver: storage failed: {self.committer.failed}")
        staged = self.store.staged_seq
        try:
            resp = self.applier.apply(command)
        except Exception:
            # Checks run before changes, so a refusal stages nothing. Anything else that
            # escaped mid-apply (a bug, a CRC failure) may have: never let it reach disk.
            if self.store.staged_seq != staged:
                await self.committer.rollback(self.load)
            raise
        await self.committer.flush()
        if isinstance(command, pb.CompactionRequest):
            self.compactor.kick()
            if command.physical:
                await self.compactor.wait()
        self.header(resp.header)
        return resp

    def close(self) -> None:
        self.committer.close()
        self.storage.close()
