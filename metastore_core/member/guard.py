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
  (LevelDB found corrupt data); a read-only, refusing or failing disk raises
  no alarm (it is neither). The alarm is also kept in the watermark, which
  needs no free space, so a restart raises it again. Every RETRY_S, and
  at once when the operator disarms the last alarm, a test write is tried and,
  once it succeeds, the store is reopened and reloaded from disk (`try_recover`);
  a corrupt store is reopened only on disarm.
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
from metastore_core.member.committer import RETRY_S, Committer, storage_failed
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage.base import out_of_space
from metastore_core.storage.layout import CorruptRecord
from metastore_core.storage.watermark import Watermark

log = logging.getLogger(__name__)

DEFAULT_QUOTA = 2 << 30  # etcd's default; --quota-backend-bytes 0 means this
MAX_QUOTA = 8 << 30  # etcd warns above this; we only log it
SIZE_TTL = 0.25  # seconds a measured backend size is trusted (a LevelDB size is a dir listing)

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
        reload: Callable[[], object],
        spawn: Spawn,
        quota: int,
        watermark: Watermark | None = None,
    ) -> None:
        self._store = store
        self._watermark = watermark
        self._recovering = asyncio.Lock()
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
            raise storage_failed(failed)

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
        return [] if failed is None else [storage_failed(failed).text]

    def _on_storage_failure(self, exc: Exception) -> None:
        alarm = failure_alarm(exc)
        if alarm is None:  # read-only, permission, I/O error: not corruption, and no space problem
            log.error("storage write failed; writes refused until it takes writes again: %s", exc)
        else:
            log.error(
                "storage write failed, %s alarm raised; writes refused until it is disarmed: %s",
                pb.AlarmType.Name(alarm),  # type: ignore[arg-type]
                exc,
            )
            self._pending = self._spawn("storage-failure-alarm", lambda: self._raise_kept(alarm))
        for hook in self.on_failure:
            try:
                hook(exc)
            except Exception:
                log.exception("storage failure hook failed")

    async def _raise_kept(self, alarm: int) -> None:
        """Raise a failure's alarm (in memory: the failed store takes no writes) and keep it in
        the watermark, which needs no free space, so that a restart raises it again."""
        await self.raise_alarm(alarm)
        watermark = self._watermark
        if watermark is not None:
            try:
                await asyncio.to_thread(watermark.set_alarms, watermark.mark.alarms | {alarm})
            except OSError as exc:
                log.error("could not keep the alarm in %s: %s", watermark.path, exc)

    async def settle_kept_alarms(self) -> None:
        """After a load: write the alarms the watermark kept (now staged) into the store, then
        drop them from the watermark. A store that still fails keeps them where they were."""
        watermark = self._watermark
        if watermark is None or not watermark.mark.alarms:
            return
        await self._committer.flush()
        await asyncio.to_thread(watermark.set_alarms, frozenset())

    async def recover(self) -> None:
        """The last alarm was disarmed: reopen the store now; raise while writes still fail."""
        problem = await self.try_recover()
        if problem is None:
            return
        alarm = failure_alarm(problem)
        if alarm is not None:
            await self.raise_alarm(alarm)  # the operator's disarm did not take
        # not UNAVAILABLE for a full disk: clients retry that dozens of times; the operator acts
        if alarm == pb.NOSPACE:
            raise errors.NoSpace(f"etcdserver: storage recovery failed: {problem}")
        if alarm == pb.CORRUPT:
            raise errors.Corrupt(f"etcdserver: storage recovery failed: {problem}")
        raise storage_failed(problem)

    async def run_recovery(self) -> None:
        """Every RETRY_S while a write failure (not corruption) keeps writes refused, try to
        recover: writes resume as soon as the disk takes one again, without a restart. Alarms
        stay until disarmed, as in etcd."""
        said = ""
        while True:
            await asyncio.sleep(RETRY_S)
            failed = self._committer.failed
            if failed is None or isinstance(failed, CorruptRecord):
                continue
            problem = await self.try_recover()
            if problem is not None and str(problem) != said:
                log.warning("storage still refuses writes: %s", problem)
            said = "" if problem is None else str(problem)

    async def try_recover(self) -> Exception | None:
        """Reopen the store and rebuild memory from disk if a test write succeeds; None when
        writes work again, else why not.

        Runs after the committer is idle and does not yield while it reloads, so no request
        sees a half-loaded store. Only writes that reached the disk survive, and none that
        failed was acknowledged, so nothing acknowledged is lost.
        """
        committer, alarms = self._committer, self._alarms
        async with self._recovering:
            while committer.busy:
                await asyncio.sleep(0.01)
            await self.settled()  # the failure's alarm is applied (and kept) first
            if committer.failed is None:
                return None
            wanted = set(alarms.active)  # what the operator left active (disarms were not durable)
            storage = self._store.storage
            problem = await asyncio.to_thread(_write_probe, storage)
            if problem is not None:
                return problem
            log.warning("recovering storage after a write failure: reopening %s", storage.name)
            try:
                reopen = getattr(storage, "reopen", None)
                if reopen is not None:
                    reopen()  # (LevelDB's write errors stick to a handle: only a new one writes)
                self._reload()
            except Exception as exc:
                log.error("storage recovery failed: %s", exc)
                return exc
            committer.clear_failure()
            member_alarms = [(pb.AlarmRequest.DEACTIVATE, ma) for ma in set(alarms.active) - wanted]
            member_alarms += [(pb.AlarmRequest.ACTIVATE, ma) for ma in wanted - set(alarms.active)]
            try:
                for action, (member, alarm) in sorted(member_alarms):
                    await self._propose(pb.AlarmRequest(action=action, memberID=member, alarm=alarm))  # type: ignore[arg-type]
                await committer.flush()
                if self._watermark is not None:  # the store holds the alarms now
                    await asyncio.to_thread(self._watermark.set_alarms, frozenset())
            except (errors.StorageFailed, OSError) as exc:
                return exc
            self.recoveries += 1
            log.warning("storage recovered at revision %d", self._store.committed_rev)
            return None


def failure_alarm(exc: BaseException) -> int | None:
    """The alarm a failed write raises: NOSPACE for a full disk, CORRUPT for corrupt data, and
    none for anything else (a read-only or failing disk is not corruption)."""
    if isinstance(exc, CorruptRecord):
        return pb.CORRUPT
    return pb.NOSPACE if out_of_space(exc) else None


PROBE_NAME = "metastore-write-probe.tmp"
PROBE_BYTES = 64 << 10


def _write_probe(storage: Any) -> OSError | None:
    """Write, sync and remove a small file where the store lives: a reopen needs the disk to
    take writes again, and closing a handle for a reopen that cannot work would leave none."""
    path = getattr(storage, "path", None)
    if path is None:
        return None
    probe = path / PROBE_NAME
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(PROBE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return None
