"""The lessor: leases, their TTLs and the keys attached to them.

Time is passed in (monotonic seconds), never read here, so tests drive it.
Lease records live in storage (layout `l`); attachments are derived from
the keys' `lease` field when the store loads.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from metastore_core import errors
from metastore_core.mvcc.store import MVCCStore
from metastore_core.storage import layout as L

MAX_TTL = 9_000_000_000
DEFAULT_MIN_TTL = 2  # etcd: ceil(1.5 x election timeout) with default timing


@dataclass
class Lease:
    """One lease: granted TTL, deadline on the monotonic clock, attached keys."""

    id: int
    ttl: int
    expiry: float
    keys: set[bytes] = field(default_factory=set)
    remaining_at_load: int = 0  # checkpointed remaining TTL, 0 if none

    def remaining(self, now: float) -> float:
        return self.expiry - now


class Lessor:
    """Grants, finds, attaches and revokes leases."""

    def __init__(self, store: MVCCStore, *, min_ttl: int = DEFAULT_MIN_TTL) -> None:
        self.store = store
        self.min_ttl = min_ttl
        self.leases: dict[int, Lease] = {}

    def load(self, now: float) -> None:
        """Rebuild leases from storage and the index; every lease gets at least its full TTL."""
        self.leases = {}
        start = L.LEASE_PREFIX
        for key, value in self.store.storage.scan(start, L.prefix_end(start)):
            ttl, remaining = L.parse_lease_value(value)
            lease_id = L.parse_lease_key(key)
            self.leases[lease_id] = Lease(lease_id, ttl, now + ttl, remaining_at_load=remaining)
        for k, h in self.store.index.all():
            if h.alive and h.lease:
                lease = self.leases.get(h.lease)
                if lease is not None:
                    lease.keys.add(k)

    def get(self, lease_id: int) -> Lease | None:
        return self.leases.get(lease_id)

    def require(self, lease_id: int) -> Lease:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise errors.LeaseNotFound()
        return lease

    def new_id(self) -> int:
        while True:
            lease_id = secrets.randbits(63)
            if lease_id and lease_id not in self.leases:
                return lease_id

    def grant(self, lease_id: int, ttl: int, now: float) -> Lease:
        """Create a lease (id 0 picks one); TTL below the minimum is raised to it."""
        if ttl > MAX_TTL:
            raise errors.LeaseTTLTooLarge()
        if lease_id == 0:
            lease_id = self.new_id()
        elif lease_id in self.leases:
            raise errors.LeaseExists()
        ttl = max(ttl, self.min_ttl)
        lease = Lease(lease_id, ttl, now + ttl)
        self.leases[lease_id] = lease
        self.store.stage(L.lease_key(lease_id), L.lease_value(ttl, 0))
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

    def renew(self, lease_id: int, now: float) -> int:
        """Reset a lease to its full TTL; returns the TTL, or 0 if it does not exist."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        lease.expiry = now + lease.ttl
        return lease.ttl

    def expired(self, now: float) -> list[int]:
        """IDs of leases whose deadline has passed."""
        return [lid for lid, lease in self.leases.items() if lease.expiry <= now]
