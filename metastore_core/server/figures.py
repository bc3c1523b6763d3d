"""The daemon's live figures in one place: `metastore stats` (Admin.GetStats) and /metrics read the same.

Member figures come from `Node.figures`; the server adds its own (limits,
memory, connections, panics, health). Names follow etcd where etcd has the
figure (its dashboards and alerts match them) and `metastore_` otherwise.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from metastore_core import __version__
from metastore_core.config import Config, is_https, split_url
from metastore_core.member.node import ETCD_API_VERSION, Node
from metastore_core.pb.metastore.admin.v1 import admin_pb2 as apb
from metastore_core.peers import is_loopback_host
from metastore_core.server.connections import Connections
from metastore_core.server.healthcheck import HealthMonitor, Probes
from metastore_core.server.layers.clients import ClientLimits
from metastore_core.server.layers.limits import Limiter, MemoryMonitor, count_connections
from metastore_core.server.layers.metrics import RequestMetrics
from metastore_core.server.layers.recovery import Recovery
from metastore_core.server.lifecycle import Lifecycle
from metastore_core.server.looplag import LoopLag

CLUSTER_VERSION = ".".join(ETCD_API_VERSION.split(".")[:2]) + ".0"  # etcd reports major.minor.0
# Names etcd spells against Prometheus' suffix conventions (gauges ending in _total, counters
# without it). `promtool check metrics` flags exactly these; dashboards and the etcd mixin need
# them as etcd spells them, so they stay (tests/integration/test_metrics_catalogue.py).
ETCD_SPELLINGS = frozenset(
    {
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_debugging_mvcc_keys_total",
        "etcd_debugging_mvcc_watcher_total",
        "etcd_debugging_mvcc_watch_stream_total",
        "etcd_debugging_mvcc_slow_watcher_total",
        "etcd_server_health_success",
        "etcd_server_health_failures",
    }
)
Read = Callable[[], float]


def exposure_warnings(config: Config, auth_enabled: bool) -> list[str]:
    """What a daemon reachable from other hosts says loudly (it keeps serving: some run so)."""
    out = []
    for url in [*config.listen_client_urls, *config.listen_client_http_urls]:
        host, _ = split_url(url)
        if is_loopback_host(host):
            continue
        if not is_https(url):
            out.append(f"{url} serves plaintext to the network: anyone on the path reads tokens and data")
        if not auth_enabled:
            out.append(f"{url} is open to the network with auth off: anyone can read and write every key")
    return out


class Figures:
    """Reads every figure on demand; nothing here is updated per request."""

    def __init__(
        self,
        config: Config,
        node: Node,
        limiter: Limiter,
        memory: MemoryMonitor,
        recovery: Recovery,
        monitor: HealthMonitor,
        lifecycle: Lifecycle,
        ports: list[int],
        loop_lag: LoopLag | None = None,
        connections: Connections | None = None,
        clients: ClientLimits | None = None,
    ) -> None:
        self.config = config
        self.node = node
        self.limiter = limiter
        self.memory = memory
        self.recovery = recovery
        self.monitor = monitor
        self.lifecycle = lifecycle
        self.ports = ports
        self.loop_lag = loop_lag or LoopLag()
        self.conns = connections or Connections(config.max_connections, ports)
        self.clients = clients or ClientLimits(config.max_client_requests, config.client_rate)

    def connections(self) -> int:
        return count_connections(self.ports)

    def _clients(self) -> float:
        return len(self.clients.clients)

    async def stats(self) -> apb.GetStatsResponse:
        """What `metastore stats` shows."""
        f, lim, rec, mon = self.node.figures, self.limiter, self.recovery, self.monitor
        resp = apb.GetStatsResponse(
            version=__version__,
            etcd_api_version=ETCD_API_VERSION,
            member_id=f.member_id,
            cluster_id=f.cluster_id,
            uptime_seconds=time.time() - self.node.started,
            connections_current=await asyncio.to_thread(self.connections),
            connections_max=self.config.max_connections,
            requests_current=lim.requests,
            requests_max=lim.max_requests,
            memory_used_bytes=self.memory.read(),
            memory_max_bytes=self.memory.max_memory_bytes,
            active_streams=lim.streams,
            panic_count=rec.panic_count,
            validation_error_count=rec.validation_error_count,
            revision=f.revision,
            compact_revision=f.compact_revision,
            key_count=f.key_count(),
            db_size_bytes=f.db_size(),
            backend=f.backend,
            alarms=f.alarm_list(),
            watchers=f.watchers,
            watch_streams=f.watch_streams,
            leases=f.leases,
            requests_refused=lim.refused,
            requests_peak=lim.peak_requests,
            connections_refused=self.conns.refused,
            connections_closed_idle=self.conns.closed_idle,
            client_requests_max=self.clients.max_in_flight,
            client_rate=self.clients.rate,
            clients=len(self.clients.clients),
            client_refused_in_flight=self.clients.refused_in_flight,
            client_refused_rate=self.clients.refused_rate,
            slow_watchers=f.slow_watchers,
            loop_lag_seconds=self.loop_lag.lag,
            loop_lag_peak_seconds=self.loop_lag.peak,
            serving=mon.serving,
            health_reasons=mon.reasons(),
            pid=os.getpid(),
            warnings=exposure_warnings(self.config, self.node.auth.enabled),
        )
        for key, c in self.clients.busiest():
            resp.busiest_clients.add(
                client=key,
                in_flight=c.in_flight,
                requests=c.requests,
                refused=c.refused_in_flight + c.refused_rate,
            )
        report = self.lifecycle.report or self.lifecycle.previous
        if report is not None:
            resp.last_shutdown_reason = report.reason
            for p in report.phases:
                resp.last_shutdown.add(phase=p.phase, seconds=p.seconds, error=p.error)
        return resp

    def register(self, m: RequestMetrics, probes: Sequence[Probes] = ()) -> None:
        """Declare every figure of /metrics, read at scrape time: the whole catalogue is here
        (the per-method grpc_server_* series are layers/metrics.py's)."""
        f, lim, rec, mon, node = self.node.figures, self.limiter, self.recovery, self.monitor, self.node
        ops, proposals = f.ops, f.proposals
        counters: list[tuple[str, str, Read]] = [
            # etcd's names (v3.5 metrics.go files), so its dashboards and the etcd mixin alerts work
            ("etcd_mvcc_range_total", "Total number of ranges seen by this member.", lambda: ops.ranges),
            ("etcd_mvcc_put_total", "Total number of puts seen by this member.", lambda: ops.puts),
            ("etcd_mvcc_delete_total", "Total number of deletes seen by this member.", lambda: ops.deletes),
            ("etcd_mvcc_txn_total", "Total number of txns seen by this member.", lambda: ops.txns),
            (
                "etcd_debugging_mvcc_events_total",
                "Total number of events sent by this member.",
                lambda: f.watch_events_total,
            ),
            (
                "etcd_debugging_lease_granted_total",
                "The total number of granted leases.",
                lambda: f.lease_granted_total,
            ),
            (
                "etcd_debugging_lease_revoked_total",
                "The total number of revoked leases.",
                lambda: f.lease_revoked_total + f.lease_expired_total,
            ),
            (
                "etcd_debugging_lease_renewed_total",
                "The number of renewed leases seen by the leader.",
                lambda: f.lease_renewed_total,
            ),
            (
                "etcd_debugging_server_lease_expired_total",
                "The total number of expired leases.",
                lambda: f.lease_expired_total,
            ),
            (
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
                lambda: proposals.failed,
            ),
            (
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
                lambda: int(node.has_leader()),
            ),
            (
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
                lambda: m.traffic.sent,
            ),
            (
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
                lambda: m.traffic.received,
            ),
            # ours (spec §4.6 and the reliability layer)
            ("metastore_panic_total", "Handler and task exceptions recovered.", lambda: rec.panic_count),
            (
                "metastore_validation_errors_total",
                "Requests refused as invalid (INVALID_ARGUMENT).",
                lambda: rec.validation_error_count,
            ),
            (
                "metastore_oversize_requests_total",
                "Requests refused as larger than --max-request-bytes; larger than --max-recv-bytes "
                "the transport refuses them uncounted.",
                lambda: rec.oversize_count,
            ),
            (
                "metastore_requests_refused_total",
                "Unary calls refused at the concurrency limit.",
                lambda: lim.refused,
            ),
            (
                "metastore_connections_refused_total",
                "Calls refused on connections opened past --max-connections.",
                lambda: self.conns.refused,
            ),
            (
                "metastore_connections_closed_idle_total",
                "Connections closed at the limit for not starting the HTTP/2 handshake.",
                lambda: self.conns.closed_idle,
            ),
            (
                "metastore_client_refused_in_flight_total",
                "Calls refused at one client's in-flight cap (--max-client-requests).",
                lambda: self.clients.refused_in_flight,
            ),
            (
                "metastore_client_refused_rate_total",
                "Calls refused at one client's rate limit (--client-rate).",
                lambda: self.clients.refused_rate,
            ),
            (
                "metastore_lease_expiry_stalls_total",
                "Expiry ticks deferred because the event loop had stalled (keep-alives go first).",
                lambda: f.lease_expiry_stalls_total,
            ),
            (
                "metastore_watch_slow_watchers_total",
                "Watchers that fell behind and caught up from the store.",
                lambda: f.slow_watchers_total,
            ),
            (
                "metastore_watch_slow_cancels_total",
                "Watchers cancelled for falling too far behind.",
                lambda: f.slow_watch_cancels_total,
            ),
            (
                "metastore_commit_batches_total",
                "Synced write batches (group commits).",
                lambda: f.commit_batches_total,
            ),
            (
                "metastore_commit_entries_total",
                "Storage writes in those batches.",
                lambda: f.commit_entries_total,
            ),
            ("metastore_compactions_total", "Compactions finished.", lambda: f.compactions_total),
            (
                "metastore_auto_compactions_total",
                "Compactions started by auto-compaction.",
                lambda: f.auto_compactions_total,
            ),
            ("metastore_defrags_total", "Defragmentations.", lambda: f.defrags_total),
            ("metastore_snapshots_total", "Snapshots sent.", lambda: f.snapshots_total),
            (
                "metastore_corrupt_checks_total",
                "Integrity scrubs of every record.",
                lambda: f.corrupt_checks_total,
            ),
            (
                "metastore_storage_recoveries_total",
                "Reopens of the store after a failed write.",
                lambda: f.storage_recoveries_total,
            ),
        ]
        for name, doc, read in counters:
            m.counter(name, doc, read)
        # etcd spells these two without _total; a Prometheus counter type would add it
        m.untyped(
            "etcd_server_health_success", "The total number of successful health checks", lambda: mon.http_ok
        )
        m.untyped(
            "etcd_server_health_failures", "The total number of failed health checks", lambda: mon.http_failed
        )
        gauges: list[tuple[str, str, Read]] = [
            (
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
                lambda: int(node.has_leader()),
            ),
            (
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                lambda: int(node.is_leader()),
            ),
            (
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                lambda: 0,
            ),
            # gauges in etcd despite the _total (they are raft indexes)
            (
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
                lambda: f.consistent_index,
            ),
            (
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
                lambda: f.consistent_index,
            ),
            (
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
                lambda: proposals.pending,
            ),
            (
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                f.db_size,
            ),
            (
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
                f.db_size_in_use,
            ),
            (
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
                lambda: f.quota_bytes,
            ),
            ("etcd_debugging_mvcc_current_revision", "The current revision of store.", lambda: f.revision),
            (
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
                lambda: f.compact_revision,
            ),
            ("etcd_debugging_mvcc_keys_total", "Total number of keys.", f.key_count),
            ("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", lambda: f.watchers),
            (
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
                lambda: f.watch_streams,
            ),
            (
                "etcd_debugging_mvcc_slow_watcher_total",
                "Total number of unsynced slow watchers.",
                lambda: f.slow_watchers,
            ),
            ("os_fd_used", "The number of used file descriptors.", lambda: len(os.listdir("/proc/self/fd"))),
            (
                "os_fd_limit",
                "The file descriptor limit.",
                lambda: resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            ),
            # ours: the names the alert rules use (spec §4.6), then the rest
            ("metastore_memory_usage_bytes", "Resident memory of the daemon.", self.memory.read),
            (
                "metastore_memory_limit_bytes",
                "Memory cap (--max-memory).",
                lambda: self.memory.max_memory_bytes,
            ),
            ("metastore_connections_current", "Established client connections.", self.connections),
            (
                "metastore_connections_limit",
                "Connection cap (--max-connections).",
                lambda: self.config.max_connections,
            ),
            ("metastore_requests_current", "Unary calls in flight.", lambda: lim.requests),
            (
                "metastore_requests_limit",
                "Concurrent unary call cap (--max-concurrent-requests).",
                lambda: lim.max_requests,
            ),
            ("metastore_streams_current", "Open streaming calls.", lambda: lim.streams),
            ("metastore_clients_current", "Clients with calls in flight or tokens spent.", self._clients),
            (
                "metastore_client_requests_limit",
                "Unary calls in flight per client (--max-client-requests; 0: none).",
                lambda: self.clients.max_in_flight,
            ),
            ("metastore_leases", "Live leases.", lambda: f.leases),
            (
                "metastore_health_serving",
                "1 while the overall health status is SERVING.",
                lambda: int(mon.serving),
            ),
            (
                "metastore_compaction_last_duration_seconds",
                "Duration of the last compaction.",
                lambda: f.compaction_last_seconds,
            ),
            (
                "metastore_event_loop_lag_seconds",
                "How late the event loop runs a 10 ms timer (recent, decaying).",
                lambda: self.loop_lag.lag,
            ),
        ]
        for name, doc, read in gauges:
            m.gauge(name, doc, read)
        m.gauge(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            lambda: 1,
            server_version=ETCD_API_VERSION,
        )
        m.gauge(
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            lambda: 1,
            cluster_version=CLUSTER_VERSION,
        )
        m.gauge(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            lambda: 1,
            server_id=f"{f.member_id:x}",
        )
        for name, doc, durations in [
            (
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                f.write_seconds,
            ),
            (
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                f.write_seconds,
            ),
            (
                "etcd_disk_backend_defrag_duration_seconds",
                "The latency distribution of backend defragmentation.",
                f.defrag_seconds,
            ),
            (
                "etcd_disk_backend_snapshot_duration_seconds",
                "The latency distribution of backend snapshots.",
                f.snapshot_seconds,
            ),
            (
                "etcd_mvcc_hash_duration_seconds",
                "The latency distribution of storage hash operation.",
                f.hash_seconds,
            ),
            (
                "etcd_mvcc_hash_rev_duration_seconds",
                "The latency distribution of storage hash by revision operation.",
                f.hash_kv_seconds,
            ),
        ]:
            m.histogram(name, doc, durations)
        m.family(lambda: _healthchecks(probes))
        m.family(self._shutdown_phases)

    def _shutdown_phases(self) -> list[Metric]:
        """metastore_shutdown_phase_seconds{phase}: this process's shutdown, or the last one's."""
        family = GaugeMetricFamily(
            "metastore_shutdown_phase_seconds",
            "Seconds each phase of the last graceful shutdown took (this process's, or the one before).",
            labels=["phase"],
        )
        report = self.lifecycle.report or self.lifecycle.previous
        for p in report.phases if report is not None else ():
            family.add_metric([p.phase], p.seconds)
        return [family]


def _healthchecks(probes: Sequence[Probes]) -> list[Metric]:
    """etcd_server_healthcheck{type,name} (1 passed at the last request) and
    etcd_server_healthchecks_total{type,name,status}, per /livez and /readyz check."""
    last = GaugeMetricFamily(
        "etcd_server_healthcheck", "The result of each kind of healthcheck.", labels=["type", "name"]
    )
    total = CounterMetricFamily(
        "etcd_server_healthchecks",
        "The total number of each kind of healthcheck.",
        labels=["type", "name", "status"],
    )
    for p in probes:
        for name in p.names:
            if name in p.last:
                last.add_metric([p.kind, name], float(p.last[name]))
            for passed, status in ((True, "success"), (False, "error")):
                total.add_metric([p.kind, name, status], float(p.totals.get((name, passed), 0)))
    return [last, total]
