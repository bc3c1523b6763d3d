"""The write gate and the failure policy: the one owner of "may this command be applied now?".

Rules (etcd's where etcd has them):
- CORRUPT active, or a corruption just seen whose alarm is not applied yet:
  every mutating command fails with DataLoss "etcdserver: corrupt cluster";
  a txn that only compares and reads passes.
- A command that adds data (Put, a Txn with a put, LeaseGrant) fails while
  the process is at --max-memory, and while NOSPACE is active; when
  `backend size + its cost >= --quota-backend-bytes` it raises NOSPACE first.
  Deletes, compactions and reads pass: they are how an operator gets out.
- A failed batch write (LevelDB errors stick to the handle) refuses every
  later write with StorageFailed and raises NOSPACE (disk full) or CORRUPT
  (any other I/O error). When the operator disarms the last of them, the
  store is reopened and reloaded from disk (`recover`).
Alarms are raised and cleared only as AlarmRequest commands through apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from metastore_core import errors
from metastore_core.engine.alarms import Alarms
from metastore_core.engine.commands import cost, mutates
from metastore_core.member.committer import Committer
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_QUOTA = 2 << 30  # etcd's default; --quota-backend-bytes 0 means this
MAX_QUOTA = 8 << 30  # etcd warns above this; we only log it
SIZE_TTL = 0.25  # seconds a measured backend size is trusted (a LevelDB size is a dir listing)
REOPEN_MARGIN = 1 << 20

Propose = Callable[[Any], Awaitable[Any]]
Spawn = Callable[[str, Callable[[], Awaitable[None]]], "asyncio.Future[None]"]


def quota_bytes(configured: int) -> int:
    """The effective quota: 0 means the default, a negative value disables it."""
    if configured == 0:
        return DEFAULT_QUOTA
    return configured


class WriteGuard:
    """Checks every write before it is proposed; raises and clears the member's alarms."""

    def __init__(
        self,
        *,
        store: MVCCStore,
        alarms: Alarms,
        committer: Committer,
        propose: Propose,
        reload: Callable[[], None],
        spawn: Spawn,
        quota: int,
    ) -> None:
        self._store = store
        self._alarms = alarms
        self._committer = committer
        self._propose = propose
        self._reload = reload
        self._spawn = spawn
        self.quota = quota_bytes(quota)
        if self.quota > MAX_QUOTA:
            log.warning("quota-backend-bytes %d is above the suggested maximum %d", self.quota, MAX_QUOTA)
        self.memory_limit = 0  # set while memory is at its cap
        self.recoveries = 0
        self._corrupt_seen = False
        self._pending: asyncio.Future[None] | None = None  # an alarm being raised in the background
        self._size = 0
        self._size_at = float("-inf")
        self._added = 0  # cost admitted since the last measurement
        self.on_failure: list[Callable[[Exception], None]] = []
        committer.on_failure.append(self._on_storage_failure)

    # ------------------------------------------------------------ the gate
    async def check(self, command: Any) -> None:
        """Raise the error etcd would give before applying command; may raise NOSPACE."""
        alarms = self._alarms
        if (self._corrupt_seen or alarms.has(pb.CORRUPT)) and mutates(command):
            raise errors.Corrupt()
        c = cost(command)
        if c > 0:
            if self.memory_limit:
                raise errors.MemoryLimit(self.memory_limit)
            if alarms.has(pb.NOSPACE):
                raise errors.NoSpace()
            if self.quota > 0 and self.backend_size() + c >= self.quota:
                log.warning("backend size %d + %d >= quota %d: raising NOSPACE", self._size, c, self.quota)
                await self.raise_alarm(pb.NOSPACE)
                raise errors.NoSpace()
            self._added += c
        failed = self._committer.failed
        if failed is not None:
            raise errors.StorageFailed(failed)

    def backend_size(self) -> int:
        """The backend size, measured at most every SIZE_TTL seconds plus what was admitted since."""
        now = time.monotonic()
        if now - self._size_at > SIZE_TTL:
            self._size = self._store.storage.size()
            self._size_at = now
            self._added = 0
        return self._size + self._added

    def set_memory_full(self, full: bool, limit: int) -> None:
        """The memory monitor's verdict: at the cap, writes that add data are refused."""
        self.memory_limit = limit if full else 0

    # ------------------------------------------------------------ alarms
    async def raise_alarm(self, alarm: int) -> None:
        """Propose ACTIVATE for this member's alarm, unless it is active already."""
        member = self._store.ids.member_id
        if (member, alarm) in self._alarms.active:
            return
        # On a failed store the alarm is applied in memory only; writes stay refused until recovery.
        activate = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=member, alarm=alarm)  # type: ignore[arg-type]
        with contextlib.suppress(errors.StorageFailed):
            await self._propose(activate)

    def report_corruption(self, exc: Exception) -> None:
        """A record failed its check (a read or a scrub): refuse writes now and raise CORRUPT."""
        if self._corrupt_seen or self._alarms.has(pb.CORRUPT):
            return
        log.error("CORRUPT alarm raised: %s", exc)
        self._corrupt_seen = True

        async def raise_corrupt() -> None:
            await self.raise_alarm(pb.CORRUPT)
            self._corrupt_seen = False  # the alarm itself refuses writes from now on

        self._pending = self._spawn("corrupt-alarm", raise_corrupt)

    async def settled(self) -> None:
        """Wait for an alarm being raised in the background (so a caller sees it applied)."""
        if self._pending is not None and not self._pending.done():
            await asyncio.wait([self._pending])

    # ------------------------------------------------------------ storage failure
    @property
    def failure(self) -> Exception | None:
        """The error of the failed batch write, until recovery."""
        return self._committer.failed

    def describe(self) -> list[str]:
        """Extra lines for Status.errors."""
        failed = self._committer.failed
        return [] if failed is None else [errors.StorageFailed(failed).text]

    def _on_storage_failure(self, exc: Exception) -> None:
        alarm = pb.NOSPACE if "space" in str(exc).lower() else pb.CORRUPT
        log.error(
            "storage write failed, %s alarm raised; writes refused until it is disarmed: %s",
            pb.AlarmType.Name(alarm),
            exc,
        )
        self._pending = self._spawn("storage-failure-alarm", lambda: self.raise_alarm(alarm))
        for hook in self.on_failure:
            try:
                hook(exc)
            except Exception:
                log.exception("storage failure hook failed")

    async def recover(self) -> None:
        """Reopen the store and rebuild memory from disk; raises NoSpace/Corrupt if it still fails.

        Runs after the committer is idle and does not yield while it reloads, so no request
        sees a half-loaded store. Only writes that reached the disk survive, and none that
        failed was acknowledged, so nothing acknowledged is lost.
        """
        committer, alarms = self._committer, self._alarms
        while committer.busy:
            await asyncio.sleep(0.01)
        wanted = set(alarms.active)  # what the operator left active (disarms were not durable)
        storage = self._store.storage
        short = _space_shortfall(storage)
        if short:
            await self.raise_alarm(pb.NOSPACE)  # the operator's disarm did not take
            # Reopening replays the write-ahead log into a table, which needs about its size
            # again. Closing without room would leave no handle at all (reads would fail too).
            raise errors.NoSpace(
                f"etcdserver: storage recovery refused: No space left on device: reopening needs "
                f"{short} more free bytes"
            )
        log.warning("recovering storage after a write failure: reopening %s", storage.name)
        try:
            reopen = getattr(storage, "reopen", None)
            if reopen is not None:
                reopen()
            self._reload()
        except Exception as exc:
            log.error("storage recovery failed: %s", exc)
            await self.raise_alarm(pb.NOSPACE if "space" in str(exc).lower() else pb.CORRUPT)
            # not UNAVAILABLE: clients retry that dozens of times; the operator must act first
            if "space" in str(exc).lower():
                raise errors.NoSpace(f"etcdserver: storage recovery failed: {exc}") from None
            raise errors.Corrupt(f"etcdserver: storage recovery failed: {exc}") from None
        committer.clear_failure()
        member_alarms = [(pb.AlarmRequest.DEACTIVATE, ma) for ma in set(alarms.active) - wanted]
        member_alarms += [(pb.AlarmRequest.ACTIVATE, ma) for ma in wanted - set(alarms.active)]
        try:
            for action, (member, alarm) in sorted(member_alarms):
                await self._propose(pb.AlarmRequest(action=action, memberID=member, alarm=alarm))  # type: ignore[arg-type]
            await committer.flush()
        except errors.StorageFailed as exc:
            raise errors.NoSpace(f"etcdserver: storage still failing after reopen: {exc}") from None
        self.recoveries += 1
        log.warning("storage recovered at revision %d", self._store.committed_rev)


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
