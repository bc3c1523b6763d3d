"""Read-only figures of a member, for `metastore stats`, /metrics and Status (read when asked)."""

from __future__ import annotations

from metastore_core.engine.alarms import Alarms
from metastore_core.engine.apply import OpCounts
from metastore_core.engine.lease import Lessor
from metastore_core.engine.watch import WatchHub
from metastore_core.member.committer import Committer
from metastore_core.member.compactor import AutoCompactor, Compactor
from metastore_core.member.durations import Durations
from metastore_core.member.guard import WriteGuard
from metastore_core.member.integrity import Integrity
from metastore_core.member.leases import Leases
from metastore_core.member.maintenance import Maintenance, in_use
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

__all__ = ["Durations", "MemberFigures", "Proposals"]  # the server reads histograms through here


class Proposals:
    """etcd_server_proposals_pending and _failed_total: writes in flight, and writes that were
    proposed but could not be committed (a refusal by the apply checks is not a failure)."""

    __slots__ = ("failed", "pending")

    def __init__(self) -> None:
        self.pending = 0
        self.failed = 0


class MemberFigures:
    """Every figure a member reports; each property reads the live value."""

    def __init__(
        self,
        store: MVCCStore,
        lessor: Lessor,
        alarms: Alarms,
        hub: WatchHub,
        committer: Committer,
        guard: WriteGuard,
        leases: Leases,
        compactor: Compactor,
        auto: AutoCompactor,
        maintenance: Maintenance,
        integrity: Integrity,
        ops: OpCounts,
        proposals: Proposals,
    ) -> None:
        self._store = store
        self._lessor = lessor
        self._alarms = alarms
        self._hub = hub
        self._committer = committer
        self._guard = guard
        self._leases = leases
        self._compactor = compactor
        self._auto = auto
        self._maintenance = maintenance
        self._integrity = integrity
        self.ops = ops  # etcd_mvcc_{range,put,delete,txn}_total
        self.proposals = proposals  # etcd_server_proposals_{pending,failed_total}
        # etcd's latency histograms: a synced batch is both its WAL fsync and its backend commit
        self.write_seconds: Durations = committer.write_seconds
        self.defrag_seconds: Durations = maintenance.defrag_seconds
        self.snapshot_seconds: Durations = maintenance.snapshot_seconds
        self.hash_seconds: Durations = maintenance.hash_seconds
        self.hash_kv_seconds: Durations = maintenance.hash_kv_seconds

    @property
    def member_id(self) -> int:
        return self._store.ids.member_id

    @property
    def cluster_id(self) -> int:
        return self._store.ids.cluster_id

    @property
    def revision(self) -> int:
        return self._store.committed_rev

    @property
    def compact_revision(self) -> int:
        return self._store.compact_rev

    @property
    def consistent_index(self) -> int:
        return self._store.consistent_index

    def key_count(self) -> int:
        """Live keys (walks the index: call it when asked, not per request)."""
        return self._store.key_count()

    @property
    def backend(self) -> str:
        return self._store.storage.name

    def db_size(self) -> int:
        return self._store.storage.size()

    def db_size_in_use(self) -> int:
        return in_use(self._store)

    @property
    def leases(self) -> int:
        return len(self._lessor.leases)

    @property
    def watchers(self) -> int:
        return self._hub.watcher_count

    @property
    def watch_streams(self) -> int:
        return len(self._hub.sessions)

    @property
    def watch_events_total(self) -> int:
        return self._hub.events_total

    @property
    def slow_watchers_total(self) -> int:
        return self._hub.victims_total

    @property
    def slow_watchers(self) -> int:
        """Watchers behind the store right now (catching up or fallen behind): etcd's unsynced."""
        return self._hub.unsynced_count

    @property
    def slow_watch_cancels_total(self) -> int:
        return self._hub.slow_cancels_total

    def alarm_names(self) -> list[str]:
        """Active alarms by name (NOSPACE, CORRUPT), sorted, each once."""
        return sorted({pb.AlarmType.Name(a) for _, a in self._alarms.active})  # type: ignore[arg-type]

    def alarm_list(self) -> list[str]:
        """Active alarms by name, one per (member, alarm) pair, in member order."""
        return [pb.AlarmType.Name(a) for _, a in sorted(self._alarms.active)]  # type: ignore[arg-type]

    # counters (etcd's names where etcd has the figure; see server/figures.py)
    @property
    def commit_batches_total(self) -> int:
        return self._committer.batches

    @property
    def commit_entries_total(self) -> int:
        return self._committer.entries

    @property
    def inline_batches_total(self) -> int:
        return self._committer.inline_batches

    @property
    def lease_granted_total(self) -> int:
        return self._leases.granted_total

    @property
    def lease_revoked_total(self) -> int:
        return self._leases.revoked_total

    @property
    def lease_renewed_total(self) -> int:
        return self._leases.renewed_total

    @property
    def lease_expired_total(self) -> int:
        return self._leases.expired_total

    @property
    def lease_expiry_last_tick(self) -> float:
        """Monotonic time the expiry loop last ran (0 before it first did)."""
        return self._leases.last_tick

    @property
    def compactions_total(self) -> int:
        return self._compactor.runs

    @property
    def compaction_last_seconds(self) -> float:
        return self._compactor.last_duration

    @property
    def compacted_revisions_total(self) -> int:
        return self._compactor.dropped

    @property
    def auto_compactions_total(self) -> int:
        return self._auto.compactions

    @property
    def defrags_total(self) -> int:
        return self._maintenance.defrags

    @property
    def snapshots_total(self) -> int:
        return self._maintenance.snapshots

    @property
    def storage_recoveries_total(self) -> int:
        return self._guard.recoveries

    def lease_lateness(self) -> list[float]:
        """Seconds past the deadline at each recent expiry (never negative: nothing expires early)."""
        return list(self._leases.lateness)

    @property
    def lease_expiry_stalls_total(self) -> int:
        return self._leases.stalls

    @property
    def corrupt_checks_total(self) -> int:
        return self._integrity.scrubs

    @property
    def quota_bytes(self) -> int:
        """The effective backend quota (negative: none)."""
        return self._guard.quota
