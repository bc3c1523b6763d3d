"""The daemon's live figures in one place: `metastore stats` (Admin.GetStats) and /metrics read the same.

Member figures come from `Node.figures`; the server adds its own (limits,
memory, connections, panics, health). Names follow etcd where etcd has the
figure (its dashboards and alerts match them) and `metastore_` otherwise.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from metastore_core import __version__
from metastore_core.config import Config
from metastore_core.member.node import ETCD_API_VERSION, Node
from metastore_core.pb.metastore.admin.v1 import admin_pb2 as apb
from metastore_core.server.connections import Connections
from metastore_core.server.healthcheck import HealthMonitor
from metastore_core.server.layers.clients import ClientLimits
from metastore_core.server.layers.limits import Limiter, MemoryMonitor, count_connections
from metastore_core.server.layers.metrics import RequestMetrics
from metastore_core.server.layers.recovery import Recovery
from metastore_core.server.lifecycle import Lifecycle
from metastore_core.server.looplag import LoopLag


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

    def register(self, m: RequestMetrics) -> None:
        """Declare every gauge and counter of /metrics (read at scrape time)."""
        f, lim, rec, mon, node = self.node.figures, self.limiter, self.recovery, self.monitor, self.node
        counters: list[tuple[str, str, Callable[[], float]]] = [
            ("metastore_panic_total", "Handler and task exceptions recovered.", lambda: rec.panic_count),
            (
                "metastore_validation_errors_total",
                "Requests refused as invalid (INVALID_ARGUMENT).",
                lambda: rec.validation_error_count,
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
            ("etcd_server_health_success_total", "Successful health evaluations.", lambda: mon.successes),
            ("etcd_server_health_failures_total", "Failed health evaluations.", lambda: mon.failures),
            ("etcd_debugging_lease_granted_total", "Leases granted.", lambda: f.lease_granted_total),
            (
                "etcd_debugging_lease_revoked_total",
                "Leases revoked, by clients or by expiry.",
                lambda: f.lease_revoked_total + f.lease_expired_total,
            ),
            (
                "etcd_debugging_lease_renewed_total",
                "Lease keep-alives that renewed a lease.",
                lambda: f.lease_renewed_total,
            ),
            (
                "metastore_lease_expired_total",
                "Leases revoked because they expired.",
                lambda: f.lease_expired_total,
            ),
            (
                "metastore_lease_expiry_stalls_total",
                "Expiry ticks deferred because the event loop had stalled (keep-alives go first).",
                lambda: f.lease_expiry_stalls_total,
            ),
            ("metastore_watch_events_total", "Events published to watchers.", lambda: f.watch_events_total),
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
        gauges: list[tuple[str, str, Callable[[], float]]] = [
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
            (
                "etcd_debugging_mvcc_slow_watcher_total",
                "Watchers behind the store (they replay from it once their stream drains).",
                lambda: f.slow_watchers,
            ),
            (
                "metastore_health_serving",
                "1 while the overall health status is SERVING.",
                lambda: int(mon.serving),
            ),
            ("etcd_server_has_leader", "Whether a leader exists.", lambda: int(node.has_leader())),
            ("etcd_server_is_leader", "Whether this member is the leader.", lambda: int(node.is_leader())),
            (
                "etcd_server_proposals_committed_total",
                "Entries committed (the consistent index).",
                lambda: f.consistent_index,
            ),
            (
                "etcd_server_proposals_applied_total",
                "Entries applied (the consistent index).",
                lambda: f.consistent_index,
            ),
            ("etcd_mvcc_db_total_size_in_bytes", "Storage size on disk.", f.db_size),
            ("etcd_mvcc_db_total_size_in_use_in_bytes", "Storage bytes holding live data.", f.db_size_in_use),
            ("etcd_server_quota_backend_bytes", "Backend quota (negative: none).", lambda: f.quota_bytes),
            ("etcd_debugging_mvcc_current_revision", "Current revision.", lambda: f.revision),
            ("etcd_debugging_mvcc_compact_revision", "Compacted revision.", lambda: f.compact_revision),
            ("etcd_debugging_mvcc_keys_total", "Live keys.", f.key_count),
            ("etcd_debugging_mvcc_watcher_total", "Watchers.", lambda: f.watchers),
            ("etcd_debugging_mvcc_watch_stream_total", "Open watch streams.", lambda: f.watch_streams),
            ("etcd_debugging_lease_total", "Live leases.", lambda: f.leases),
            (
                "metastore_compaction_last_duration_seconds",
                "Duration of the last compaction.",
                lambda: f.compaction_last_seconds,
            ),
            ("os_fd_used", "Open file descriptors.", lambda: len(os.listdir("/proc/self/fd"))),
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
            "Which etcd API version is served.",
            lambda: 1,
            server_version=ETCD_API_VERSION,
        )
