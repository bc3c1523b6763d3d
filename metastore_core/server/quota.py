"""The write guard: alarms, the backend quota and a failed store, checked before every write.

Rules (etcd's, see docs/etcd-compat-notes §3.11):
- CORRUPT active: every mutating command fails with DataLoss "etcdserver: corrupt cluster".
- A command that adds data (Put, a Txn with a put, LeaseGrant) fails with ResourceExhausted
  "etcdserver: mvcc: database space exceeded" while NOSPACE is active, and raises NOSPACE
  first when `backend size + cost >= --quota-backend-bytes`. Deletes, compactions and reads
  pass: they are how an operator gets out.
- After a storage I/O failure (LevelDB errors stick to the handle) every write is refused
  until the operator disarms the alarm and `StorageRecovery` reopens the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from metastore_core import errors
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

if TYPE_CHECKING:
    from metastore_core.server.node import Node

log = logging.getLogger(__name__)

DEFAULT_QUOTA = 2 << 30  # etcd's default; --quota-backend-bytes 0 means this
MAX_QUOTA = 8 << 30  # etcd warns above this; we only log it
KV_OVERHEAD = 64  # bytes a stored revision costs beyond its key and value (key, framing, index)
LEASE_OVERHEAD = 64
SIZE_TTL = 0.25  # seconds a measured backend size is trusted (a LevelDB size is a dir listing)


def quota_bytes(configured: int) -> int:
    """The effective quota: 0 means the default, a negative value disables it."""
    if configured == 0:
        return DEFAULT_QUOTA
    return configured


def _put_cost(r: pb.PutRequest) -> int:
    return len(r.key) + len(r.value) + KV_OVERHEAD


def _txn_cost(r: pb.TxnRequest) -> int:
    def branch(ops: Any) -> int:
        total = 0
        for op in ops:
            kind = op.WhichOneof("request")
            if kind == "request_put":
                total += _put_cost(op.request_put)
            elif kind == "request_txn":
                total += _txn_cost(op.request_txn)
        return total

    return max(branch(r.success), branch(r.failure))


def cost(command: Any) -> int:
    """Bytes a write command may add to the backend; 0 for commands that only remove."""
    if isinstance(command, pb.PutRequest):
        return _put_cost(command)
    if isinstance(command, pb.TxnRequest):
        return _txn_cost(command)
    if isinstance(command, pb.LeaseGrantRequest):
        return LEASE_OVERHEAD
    return 0


def _txn_mutates(r: pb.TxnRequest) -> bool:
    for op in (*r.success, *r.failure):
        kind = op.WhichOneof("request")
        if kind in ("request_put", "request_delete_range"):
            return True
        if kind == "request_txn" and _txn_mutates(op.request_txn):
            return True
    return False


def mutates(command: Any) -> bool:
    """False only for a Txn that can do nothing but read."""
    if isinstance(command, pb.TxnRequest):
        return _txn_mutates(command)
    return True


class WriteGuard:
    """Checks alarms, the quota and storage health before a command is applied."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.quota = quota_bytes(node.config.quota_backend_bytes)
        if self.quota > MAX_QUOTA:
            log.warning("quota-backend-bytes %d is above the suggested maximum %d", self.quota, MAX_QUOTA)
        self._size = 0
        self._size_at = float("-inf")
        self._added = 0  # cost admitted since the last measurement

    def backend_size(self) -> int:
        """The backend size, measured at most every SIZE_TTL seconds plus what was admitted since."""
        now = time.monotonic()
        if now - self._size_at > SIZE_TTL:
            self._size = self.node.storage.size()
            self._size_at = now
            self._added = 0
        return self._size + self._added

    async def check(self, command: Any) -> None:
        """Raise the error etcd would give before applying command; may raise NOSPACE."""
        node = self.node
        alarms = node.alarms
        if alarms.has(pb.CORRUPT) and mutates(command):
            raise errors.Corrupt()
        c = cost(command)
        if c > 0:
            if alarms.has(pb.NOSPACE):
                raise errors.NoSpace()
            if self.quota > 0 and self.backend_size() + c >= self.quota:
                log.warning(
                    "backend size %d + %d >= quota %d: raising NOSPACE", self.backend_size(), c, self.quota
                )
                if alarms.activate(node.store.ids.member_id, pb.NOSPACE):
                    # if this flush fails the alarm stays in memory; the store failure has its own
                    with contextlib.suppress(errors.MetastoreError):
                        await node.committer.flush()
                raise errors.NoSpace()
            self._added += c
        failed = node.committer.failed
        if failed is not None:
            raise errors.Unavailable(
                f"etcdserver: storage failed ({failed}); writes are refused until there is space "
                "again and the alarm is disarmed (etcdctl alarm disarm)"
            )


class StorageRecovery:
    """Raise an alarm when a batch write fails; reopen and reload once the operator disarms it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.recoveries = 0
        node.committer.on_failure.append(self._on_failure)

    def _on_failure(self, exc: Exception) -> None:
        alarm = pb.NOSPACE if "space" in str(exc).lower() else pb.CORRUPT
        if self.node.alarms.activate(self.node.store.ids.member_id, alarm):
            log.error(
                "storage write failed, %s alarm raised; writes refused until it is disarmed: %s",
                pb.AlarmType.Name(alarm),
                exc,
            )

    @property
    def failed(self) -> bool:
        return self.node.committer.failed is not None

    async def recover(self) -> None:
        """Reopen the store and rebuild memory from disk; raises Unavailable if it still fails.

        Runs on the event loop without yielding after the committer is idle, so no request sees a
        half-loaded store. Only writes that reached the disk survive, and none that failed was
        acknowledged, so nothing acknowledged is lost.
        """
        node = self.node
        committer = node.committer
        while getattr(committer, "_running", False):
            await asyncio.sleep(0.01)
        wanted = set(node.alarms.active)
        short = _space_shortfall(node.storage)
        if short:
            # Reopening replays the write-ahead log into a table, which needs about its size
            # again. Closing without room would leave no handle at all (reads would fail too).
            exc = OSError(f"No space left on device: reopening needs {short} more free bytes")
            self._on_failure(exc)
            raise errors.NoSpace(f"etcdserver: storage recovery refused: {exc}")
        log.warning("recovering storage after a write failure: reopening %s", node.storage.name)
        try:
            reopen = getattr(node.storage, "reopen", None)
            if reopen is not None:
                reopen()
            node.load()
        except Exception as exc:
            log.error("storage recovery failed: %s", exc)
            self._on_failure(exc)
            # not UNAVAILABLE: clients retry that dozens of times; the operator must act first
            if "space" in str(exc).lower():
                raise errors.NoSpace(f"etcdserver: storage recovery failed: {exc}") from None
            raise errors.Corrupt(f"etcdserver: storage recovery failed: {exc}") from None
        committer.failed = None
        # Make the persisted alarms what the operator left active (disarms were not persisted).
        for m, a in set(node.alarms.active) - wanted:
            node.alarms.deactivate(m, a)
        for m, a in wanted - set(node.alarms.active):
            node.alarms.activate(m, a)
        try:
            await committer.flush()
        except errors.MetastoreError as exc:
            raise errors.NoSpace(f"etcdserver: storage still failing after reopen: {exc}") from None
        self.recoveries += 1
        log.warning("storage recovered at revision %d", node.store.committed_rev)


REOPEN_MARGIN = 1 << 20


def _space_shortfall(storage: Any) -> int:
    """Bytes missing for a LevelDB reopen (its logs' size plus a margin); 0 when enough or unknown."""
    path = getattr(storage, "path", None)
    if path is None:
        return 0
    try:
        logs = sum(e.stat().st_size for e in os.scandir(path) if e.name.endswith(".log") and e.is_file())
        st = os.statvfs(path)
    except OSError:
        return 0
    need = logs + REOPEN_MARGIN
    free = st.f_bavail * st.f_frsize
    return max(0, need - free)
