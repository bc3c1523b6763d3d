"""The lessor: leases, their TTLs, the keys attached to them, and their checkpoints.

Time is passed in (monotonic seconds), never read here, so tests drive it.
Lease records live in storage (layout `l`: granted TTL and checkpointed
remaining TTL); attachments are derived from the keys' `lease` field when the
store loads.

Rules (etcd's behaviour with lease checkpointing on, which we always run):
- A deadline is `now + TTL` at grant and at every renewal. A lease is due when
  `deadline <= now`; the server revokes due leases through the apply path.
  Until that revocation is applied, a keep-alive still renews the lease, so a
  keep-alive that waited in a queue while the event loop was busy wins.
- A checkpoint records a lease's remaining TTL (whole seconds, rounded up,
  at least 1) so a restart does not hand every lease its full TTL again.
  Remaining 0 means "no checkpoint": the lease restarts with its full TTL.
  Renewing a checkpointed lease must clear its checkpoint (the caller writes
  `remaining 0`) before it answers, or a crash would bring it back shorter
  than the client was promised.
- On load, a lease's deadline is `now + R + RESTART_EXTEND`, with R the
  checkpointed remaining TTL (or the full TTL). etcd gives the same
  one-election-timeout extension when a new leader takes over. Deadlines are
  then spread so that at most `revoke_rate` leases per second fall due after
  the restart: a restart never expires every lease at once. Downtime is not
  counted (the monotonic clock does not span restarts, as in etcd).
- Worked example, TTL 60, checkpoint interval 5 s: granted at t=0; at the tick
  t=5 a restart would give 60 s, but only 55 s are left, so the lessor writes
  55. The client renews at t=20: the checkpoint is cleared (restart gives 60
  again, the true remaining is 60). A crash at t=23 restarts it with 60+1 s.
  So after a crash a lease lives at most about 2 checkpoint intervals + 2 s
  longer than it would have, and never shorter.
"""

from __future__ import annotations

import heapq
import math
import secrets
from dataclasses import dataclass, field

from metastore_core import errors
from metastore_core.mvcc.store import MVCCStore
from metastore_core.storage import layout as L

MAX_TTL = L.MAX_LEASE_TTL
DEFAULT_MIN_TTL = 2  # etcd: ceil(1.5 x election timeout) with default timing
RESTART_EXTEND = 1.0  # etcd extends leases by one election timeout (1 s) on promotion
DEFAULT_REVOKE_RATE = 1000  # etcd's lease revoke rate: at most this many due per second


def check_lease_id(lease_id: int) -> None:
    """Lease IDs are >= 0 (0 means none); refuse others with INVALID_ARGUMENT."""
    if lease_id < 0:
        raise errors.InvalidRequest(f"etcdserver: invalid lease ID {lease_id}: must be >= 0")


@dataclass(eq=False)
class Lease:
    """One lease: granted TTL, deadline on the monotonic clock, attached keys."""

    id: int
    ttl: int
    expiry: float
    keys: set[bytes] = field(default_factory=set)
    checkpoint: int = 0  # persisted remaining TTL in seconds; 0 = none (full TTL on restart)

    def remaining(self, now: float) -> float:
        return self.expiry - now

    def restart_ttl(self) -> int:
        """The TTL a restart would give this lease, from what is on disk."""
        return self.checkpoint or self.ttl


class Lessor:
    """Grants, renews, checkpoints and finds due leases; revocation goes through the applier."""

    def __init__(
        self,
        store: MVCCStore,
        *,
        min_ttl: int = DEFAULT_MIN_TTL,
        revoke_rate: int = DEFAULT_REVOKE_RATE,
    ) -> None:
        self.store = store
        self.min_ttl = min_ttl
        self.revoke_rate = revoke_rate
        self.leases: dict[int, Lease] = {}
        # (deadline, id); stale entries (renewed or removed leases) are skipped lazily.
        self._due: list[tuple[float, int]] = []

    # ---------------------------------------------------------------- load
    def load(self, now: float) -> None:
        """Rebuild leases from storage and the index (the restart rule is in the module doc)."""
        self.leases = {}
        codec = self.store.codec
        start = L.LEASE_PREFIX
        for key, value in self.store.storage.scan(start, L.prefix_end(start)):
            ttl, remaining = L.parse_lease_value(codec.decode(value, key))
            lease_id = L.parse_lease_key(key)
            lease = Lease(lease_id, ttl, 0.0, checkpoint=max(remaining, 0))
            lease.expiry = now + lease.restart_ttl() + RESTART_EXTEND
            self.leases[lease_id] = lease
        self._spread()
        for k, h in self.store.index.all():
            if h.alive and h.lease:
                owner = self.leases.get(h.lease)
                if owner is not None:
                    owner.keys.add(k)
        self._rebuild_due()

    def _spread(self) -> None:
        """Push deadlines later so that no 1-second window holds more than revoke_rate of them."""
        rate = self.revoke_rate
        if len(self.leases) <= rate:
            return
        ordered = sorted(self.leases.values(), key=lambda x: x.expiry)
        for i in range(rate, len(ordered)):
            # Any rate+1 consecutive deadlines must span at least a second.
            ordered[i].expiry = max(ordered[i].expiry, ordered[i - rate].expiry + 1.0)

    def _rebuild_due(self) -> None:
        self._due = [(lease.expiry, lid) for lid, lease in self.leases.items()]
        heapq.heapify(self._due)

    def _push(self, lease: Lease) -> None:
        heapq.heappush(self._due, (lease.expiry, lease.id))
        if len(self._due) > 2 * len(self.leases) + 1024:
            self._rebuild_due()  # renewals leave stale entries behind; keep the heap bounded

    # ---------------------------------------------------------------- lookups
    def get(self, lease_id: int) -> Lease | None:
        return self.leases.get(lease_id)

    def keys_of(self, lease_id: int) -> list[bytes]:
        """The keys attached to a lease, sorted (none for an unknown lease)."""
        lease = self.leases.get(lease_id)
        return sorted(lease.keys) if lease is not None else []

    def require(self, lease_id: int) -> Lease:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise errors.LeaseNotFound()
        return lease

    def new_id(self) -> int:
        """A random unused ID, for the proposer to put in a grant (apply never draws one)."""
        while True:
            lease_id = secrets.randbits(63)
            if lease_id and lease_id not in self.leases:
                return lease_id

    def time_to_live(self, lease_id: int, now: float) -> tuple[int, int] | None:
        """(remaining whole seconds, truncated as etcd does; granted TTL), or None if unknown."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return None
        return max(0, int(lease.remaining(now))), lease.ttl

    def next_deadline(self) -> float | None:
        """The earliest deadline that may still be live (a stale one is harmless: it wakes early)."""
        return self._due[0][0] if self._due else None

    # ---------------------------------------------------------------- changes (apply path)
    def grant(self, lease_id: int, ttl: int, now: float) -> Lease:
        """Create a lease with the proposer's ID; TTL below the minimum is raised to it."""
        check_lease_id(lease_id)
        if ttl > MAX_TTL:
            raise errors.LeaseTTLTooLarge()
        if lease_id in self.leases:
            raise errors.LeaseExists()
        ttl = max(ttl, self.min_ttl)
        lease = Lease(lease_id, ttl, now + ttl)
        self.leases[lease_id] = lease
        self._persist(lease)
        self._push(lease)
        return lease

    def remove(self, lease_id: int) -> Lease:
        """Forget a lease (its keys are deleted by the caller in the same revision)."""
        lease = self.require(lease_id)
        del self.leases[lease_id]
        self.store.stage(L.lease_key(lease_id), None)
        return lease

    def attach(self, lease_id: int, key: bytes) -> None:
        self.leases[lease_id].keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def set_checkpoint(self, lease_id: int, remaining: int) -> bool:
        """Record a lease's remaining TTL (0 clears it); False if the lease is gone."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return False
        lease.checkpoint = max(0, remaining)
        self._persist(lease)
        return True

    def _persist(self, lease: Lease) -> None:
        record = self.store.codec.encode(L.lease_value(lease.ttl, lease.checkpoint))
        self.store.stage(L.lease_key(lease.id), record)

    # ---------------------------------------------------------------- time (server side)
    def renew(self, lease_id: int, now: float) -> int:
        """Reset a lease to its full TTL; returns the TTL, or 0 if it does not exist.

        If the lease has a checkpoint, the caller must clear it (apply a
        checkpoint of 0) before answering; see `needs_clear`.
        """
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        lease.expiry = now + lease.ttl
        self._push(lease)
        return lease.ttl

    def needs_clear(self, lease_id: int) -> bool:
        """True if a restart would give this lease less than its full TTL."""
        lease = self.leases.get(lease_id)
        return lease is not None and lease.checkpoint > 0

    def is_due(self, lease_id: int, now: float) -> bool:
        lease = self.leases.get(lease_id)
        return lease is not None and lease.expiry <= now

    def expired(self, now: float, limit: int | None = None) -> list[int]:
        """IDs of leases whose deadline has passed, earliest first (at most limit).

        They stay due until revoked: a caller that fails to revoke one finds it
        again on the next call.
        """
        out: list[int] = []
        seen: set[int] = set()
        due = self._due
        while due and due[0][0] <= now and (limit is None or len(out) < limit):
            _, lid = heapq.heappop(due)
            lease = self.leases.get(lid)
            if lease is None or lid in seen or lease.expiry > now:
                continue  # revoked, duplicate, or renewed since
            seen.add(lid)
            out.append(lid)
        for lid in out:
            heapq.heappush(due, (self.leases[lid].expiry, lid))
        return out

    def checkpoints_due(self, now: float, interval: float) -> list[tuple[int, int]]:
        """(id, remaining) for leases whose on-disk restart TTL is off by more than allowed.

        Off means: a restart would give more than `interval` seconds beyond the
        true remaining TTL, or less than the true remaining TTL minus the
        restart extension.
        """
        out = []
        for lid, lease in self.leases.items():
            left = lease.remaining(now)
            on_disk = lease.restart_ttl()
            if on_disk - left > interval or on_disk < left - RESTART_EXTEND:
                out.append((lid, checkpoint_value(left)))
        return out

    def checkpoints_all(self, now: float) -> list[tuple[int, int]]:
        """(id, remaining) for every lease: the exact checkpoint taken at shutdown."""
        return [(lid, checkpoint_value(lease.remaining(now))) for lid, lease in self.leases.items()]


def checkpoint_value(left: float) -> int:
    """Remaining seconds as stored: rounded up (never early), at least 1 (0 means none)."""
    return max(1, math.ceil(left))
