"""etcdserverpb.Lease, plus the lease expiry and checkpoint loops.

The RPCs are thin: check, call the lessor or `Node.write`, fill the header.
Revocation (by a client or by expiry) and checkpoints are apply commands, so
they are durable before anyone hears of them and watchers get the DELETE
events from the committer like any other write.

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
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from metastore_core import errors
from metastore_core.engine.lease import check_lease_id
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server import rpc
from metastore_core.server.node import Node

log = logging.getLogger(__name__)

TICK = 0.5  # longest sleep of the expiry loop (etcd checks every 500 ms)
STALL = 0.25  # waking this much later than asked means the loop was stalled
MAX_DEFERRALS = 4  # consecutive stalled ticks after which expiry goes ahead anyway
REVOKE_BATCH = 500  # revocations applied together (they share one fsync)
CHECKPOINT_BATCH = 1000  # checkpoints per apply command


@dataclass(eq=False)
class _Stream:
    """An open KeepAlive stream: its task, and whether it is parked waiting for a request."""

    task: asyncio.Task[object] | None
    parked: bool = False


class LeaseService:
    """LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases."""

    def __init__(self, node: Node, *, checkpoint_interval: float = 5.0) -> None:
        self.node = node
        self.lessor = node.lessor
        self.clock = node.clock
        self.checkpoint_interval = checkpoint_interval
        self._streams: set[_Stream] = set()
        self._revoking: set[int] = set()  # decided to expire; a keep-alive now gets TTL 0
        self._closed = False
        # Figures for stats, metrics (etcd_debugging_lease_*_total) and tests.
        self.granted_total = 0
        self.revoked_total = 0  # by clients; expiry counts apart
        self.renewed_total = 0
        self.expired_total = 0
        self.stalls = 0
        self.last_tick = 0.0  # monotonic time the expiry loop last ran (a health checker reads it)
        self.lateness: deque[float] = deque(maxlen=4096)  # seconds past the deadline at revocation

    # ---------------------------------------------------------------- RPCs
    async def LeaseGrant(
        self, r: pb.LeaseGrantRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.LeaseGrantResponse:
        check_lease_id(r.ID)
        resp: pb.LeaseGrantResponse = await self.node.write(r)
        self.granted_total += 1
        return resp

    async def LeaseRevoke(
        self, r: pb.LeaseRevokeRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.LeaseRevokeResponse:
        check_lease_id(r.ID)
        resp: pb.LeaseRevokeResponse = await self.node.write(r)
        self.revoked_total += 1
        return resp

    async def LeaseKeepAlive(
        self, requests: AsyncIterator[pb.LeaseKeepAliveRequest], ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        stream = _Stream(asyncio.current_task())
        self._streams.add(stream)
        try:
            if self._closed:
                return
            stream.parked = True
            async for r in rpc.checked_stream(requests):
                stream.parked = False
                yield await self._keep_alive(r)
                if self._closed:
                    return
                stream.parked = True
        except asyncio.CancelledError:
            if self._closed and stream.parked:
                return  # ended by close(): finish the stream cleanly
            raise
        finally:
            self._streams.discard(stream)

    async def _keep_alive(self, r: pb.LeaseKeepAliveRequest) -> pb.LeaseKeepAliveResponse:
        check_lease_id(r.ID)
        ttl = 0 if r.ID in self._revoking else self.lessor.renew(r.ID, self.clock())
        if ttl:
            self.renewed_total += 1
        if ttl and self.lessor.needs_clear(r.ID):
            # A restart must not bring the lease back shorter than the TTL just promised.
            clear = pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=r.ID, remaining_TTL=0)])
            await self.node.write(clear)
        resp = pb.LeaseKeepAliveResponse(ID=r.ID, TTL=ttl)
        self.node.header(resp.header)
        return resp

    async def LeaseTimeToLive(
        self, r: pb.LeaseTimeToLiveRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.LeaseTimeToLiveResponse:
        check_lease_id(r.ID)
        resp = pb.LeaseTimeToLiveResponse(ID=r.ID, TTL=-1)
        found = self.lessor.time_to_live(r.ID, self.clock())
        if found is not None:
            resp.TTL, resp.grantedTTL = found
            if r.keys:
                resp.keys.extend(sorted(self.lessor.leases[r.ID].keys))
        self.node.header(resp.header)
        return resp

    async def LeaseLeases(
        self, r: pb.LeaseLeasesRequest, ctx: grpc.aio.ServicerContext
    ) -> pb.LeaseLeasesResponse:
        resp = pb.LeaseLeasesResponse(leases=[pb.LeaseStatus(ID=lid) for lid in self.lessor.leases])
        self.node.header(resp.header)
        return resp

    # ---------------------------------------------------------------- expiry
    async def run_expiry(self) -> None:
        """Revoke due leases until cancelled (a plain coroutine: the caller may restart it)."""
        deferrals = 0
        wake_at = self.clock()
        while True:
            now = self.clock()
            self.last_tick = now
            if now - wake_at > STALL and deferrals < MAX_DEFERRALS:
                # Stalled: keep-alives queued meanwhile get to run before anything is revoked.
                self.stalls += 1
                deferrals += 1
                wake_at = now + 0.05
                await asyncio.sleep(0.05)
                continue
            deferrals = 0
            due = self.lessor.expired(now, REVOKE_BATCH)
            if due:
                await self._revoke_due(due)
                wake_at = self.clock()
                await asyncio.sleep(0)
                continue
            nxt = self.lessor.next_deadline()
            delay = TICK if nxt is None else min(TICK, max(0.0, nxt - now))
            wake_at = now + delay
            await asyncio.sleep(delay)

    async def _revoke_due(self, due: list[int]) -> None:
        t0 = self.clock()
        results = await asyncio.gather(*(self._expire(lid) for lid in due), return_exceptions=True)
        if log.isEnabledFor(logging.DEBUG):
            late = list(self.lateness)[-len(due) :]
            log.debug(
                "expired %d leases in %.3fs, %.3f-%.3fs past deadline at apply",
                len(due),
                self.clock() - t0,
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
        lease, now = self.lessor.get(lease_id), self.clock()
        if lease is None or lease.expiry > now:
            return
        late = now - lease.expiry
        self._revoking.add(lease_id)
        try:
            await self.node.write(pb.LeaseRevokeRequest(ID=lease_id))
        finally:
            self._revoking.discard(lease_id)
        self.expired_total += 1
        self.lateness.append(late)

    # ---------------------------------------------------------------- checkpoints
    async def run_checkpoints(self) -> None:
        """Every interval, record remaining TTLs that a restart would get wrong by too much."""
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            due = self.lessor.checkpoints_due(self.clock(), self.checkpoint_interval)
            try:
                await self._write_checkpoints(due)
            except errors.MetastoreError as exc:  # storage failed: try again next interval
                log.warning("lease checkpoint failed: %s", exc)

    async def checkpoint(self) -> int:
        """Record every lease's exact remaining TTL (shutdown's persist phase); returns the count."""
        due = self.lessor.checkpoints_all(self.clock())
        await self._write_checkpoints(due)
        return len(due)

    async def _write_checkpoints(self, due: list[tuple[int, int]]) -> None:
        for i in range(0, len(due), CHECKPOINT_BATCH):
            cps = [
                pb.LeaseCheckpoint(ID=lid, remaining_TTL=rem) for lid, rem in due[i : i + CHECKPOINT_BATCH]
            ]
            await self.node.write(pb.LeaseCheckpointRequest(checkpoints=cps))

    # ---------------------------------------------------------------- shutdown
    def end_streams(self) -> None:
        """End every KeepAlive stream cleanly (status OK); new ones end at once."""
        self._closed = True
        for stream in list(self._streams):
            if stream.parked and stream.task is not None:
                stream.task.cancel()

    async def close(self) -> None:
        """Shutdown's drain hook: end the KeepAlive streams (so no renewal follows the checkpoint)."""
        self.end_streams()

    async def persist(self) -> None:
        """Shutdown's persist hook: checkpoint every lease's exact remaining TTL."""
        self.end_streams()  # in case the drain phase was skipped
        try:
            n = await self.checkpoint()
            log.info("checkpointed %d leases", n)
        except errors.MetastoreError as exc:
            log.warning("lease checkpoint at shutdown failed: %s", exc)
