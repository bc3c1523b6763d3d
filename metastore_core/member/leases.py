"""The member's leases: IDs chosen before proposing, keep-alives, and the expiry and checkpoint loops.

Revocation (by a client or by expiry) and checkpoints are commands through
the write path, so they are durable before anyone hears of them and watchers
get the DELETE events from the committer like any other write. Only the
leader runs the expiry and checkpoint loops (they ask `is_leader` each tick).

Expiry (`run_expiry`) reads the monotonic clock and sleeps until the next
deadline (at most `TICK`). If it wakes much later than it asked to, the event
loop was stalled: keep-alives may be waiting in the queue, so it lets them run
first and only then revokes what is still due. A lease is therefore never
revoked early, and is revoked within a tick of its deadline when the loop is
healthy. Each revocation re-checks the deadline when it is decided, so a
keep-alive that got in first always wins; one that comes after the decision
gets TTL 0, as for a revoked lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from metastore_core import errors
from metastore_core.engine.lease import Lessor, check_lease_id
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger(__name__)

TICK = 0.5  # longest sleep of the expiry loop (etcd checks every 500 ms)
STALL = 0.25  # waking this much later than asked means the loop was stalled
MAX_DEFERRALS = 4  # consecutive stalled ticks after which expiry goes ahead anyway
REVOKE_BATCH = 500  # revocations decided together (they share one fsync)
CHECKPOINT_BATCH = 1000  # checkpoints per command

Write = Callable[[Any], Awaitable[Any]]


class Leases:
    """Lease operations that are not plain commands, and the loops that keep leases honest."""

    def __init__(
        self,
        lessor: Lessor,
        clock: Callable[[], float],
        write: Write,
        is_leader: Callable[[], bool],
        checkpoint_interval: float,
    ) -> None:
        self._lessor = lessor
        self._clock = clock
        self._write = write
        self._is_leader = is_leader
        self.checkpoint_interval = checkpoint_interval
        self._revoking: set[int] = set()  # decided to expire; a keep-alive now gets TTL 0
        self.stopped = False  # set at shutdown: no renewal may follow the last checkpoint
        # Figures for stats and metrics (etcd_debugging_lease_*_total).
        self.granted_total = 0
        self.revoked_total = 0  # by clients; expiry counts apart
        self.renewed_total = 0
        self.expired_total = 0
        self.stalls = 0
        self.last_tick = 0.0  # monotonic time the expiry loop last ran
        self.lateness: deque[float] = deque(maxlen=4096)  # seconds past the deadline at revocation

    # ---------------------------------------------------------------- requests
    def prepare_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantRequest:
        """The command to propose: ID 0 becomes a random unused ID here, never in apply."""
        check_lease_id(r.ID)
        if r.ID:
            return r
        return pb.LeaseGrantRequest(ID=self._lessor.new_id(), TTL=r.TTL)

    async def keep_alive(self, lease_id: int) -> int:
        """Renew a lease; its full TTL, or 0 if it is gone (or being expired)."""
        check_lease_id(lease_id)
        if self.stopped:
            raise errors.Stopping()
        lessor = self._lessor
        ttl = 0 if lease_id in self._revoking else lessor.renew(lease_id, self._clock())
        if ttl:
            self.renewed_total += 1
        if ttl and lessor.needs_clear(lease_id):
            # A restart must not bring the lease back shorter than the TTL just promised.
            clear = pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=lease_id, remaining_TTL=0)])
            await self._write(clear)
        return ttl

    def time_to_live(self, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        check_lease_id(r.ID)
        resp = pb.LeaseTimeToLiveResponse(ID=r.ID, TTL=-1)
        found = self._lessor.time_to_live(r.ID, self._clock())
        if found is not None:
            resp.TTL, resp.grantedTTL = found
            if r.keys:
                resp.keys.extend(sorted(self._lessor.leases[r.ID].keys))
        return resp

    def leases(self) -> pb.LeaseLeasesResponse:
        return pb.LeaseLeasesResponse(leases=[pb.LeaseStatus(ID=lid) for lid in self._lessor.leases])

    # ---------------------------------------------------------------- expiry
    async def run_expiry(self) -> None:
        """Revoke due leases until cancelled (a plain coroutine: the caller may restart it)."""
        deferrals = 0
        wake_at = self._clock()
        while True:
            now = self._clock()
            self.last_tick = now
            if not self._is_leader():
                wake_at = now + TICK
                await asyncio.sleep(TICK)
                continue
            if now - wake_at > STALL and deferrals < MAX_DEFERRALS:
                # Stalled: keep-alives queued meanwhile get to run before anything is revoked.
                self.stalls += 1
                deferrals += 1
                wake_at = now + 0.05
                await asyncio.sleep(0.05)
                continue
            deferrals = 0
            due = self._lessor.expired(now, REVOKE_BATCH)
            if due:
                await self._revoke_due(due)
                wake_at = self._clock()
                await asyncio.sleep(0)
                continue
            nxt = self._lessor.next_deadline()
            delay = TICK if nxt is None else min(TICK, max(0.0, nxt - now))
            wake_at = now + delay
            await asyncio.sleep(delay)

    async def _revoke_due(self, due: list[int]) -> None:
        t0 = self._clock()
        results = await asyncio.gather(*(self._expire(lid) for lid in due), return_exceptions=True)
        if log.isEnabledFor(logging.DEBUG):
            late = list(self.lateness)[-len(due) :]
            log.debug(
                "expired %d leases in %.3fs, %.3f-%.3fs past deadline at apply",
                len(due),
                self._clock() - t0,
                min(late, default=0),
                max(late, default=0),
            )
        for res in results:
            if isinstance(res, errors.MetastoreError):
                # Not durable (storage failed): the lease stays due and is retried next tick.
                log.warning("lease expiry failed: %s", res)
                await asyncio.sleep(TICK)
                return
            if isinstance(res, BaseException):
                raise res

    async def _expire(self, lease_id: int) -> None:
        # The decision point: a renewal that got in before it wins; one after it gets TTL 0,
        # even if the write path awaits (quota, alarms) before it applies the revocation.
        lease, now = self._lessor.get(lease_id), self._clock()
        if lease is None or lease.expiry > now:
            return
        late = now - lease.expiry
        self._revoking.add(lease_id)
        try:
            await self._write(pb.LeaseRevokeRequest(ID=lease_id))
        finally:
            self._revoking.discard(lease_id)
        self.expired_total += 1
        self.lateness.append(late)

    # ---------------------------------------------------------------- checkpoints
    async def run_checkpoints(self) -> None:
        """Every interval, record remaining TTLs that a restart would get wrong by too much."""
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            if not self._is_leader():
                continue
            due = self._lessor.checkpoints_due(self._clock(), self.checkpoint_interval)
            try:
                await self._write_checkpoints(due)
            except errors.MetastoreError as exc:  # storage failed: try again next interval
                log.warning("lease checkpoint failed: %s", exc)

    async def checkpoint_all(self) -> int:
        """Record every lease's exact remaining TTL (shutdown's persist phase); returns the count."""
        self.stopped = True
        due = self._lessor.checkpoints_all(self._clock())
        await self._write_checkpoints(due)
        return len(due)

    async def _write_checkpoints(self, due: list[tuple[int, int]]) -> None:
        for i in range(0, len(due), CHECKPOINT_BATCH):
            cps = [
                pb.LeaseCheckpoint(ID=lid, remaining_TTL=rem) for lid, rem in due[i : i + CHECKPOINT_BATCH]
            ]
            await self._write(pb.LeaseCheckpointRequest(checkpoints=cps))
