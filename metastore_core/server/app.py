"""Start-up and stop of the daemon: data dir, storage, node, reliability layer, gRPC and HTTP.

Start-up order: lock the data dir, open storage, load (and scrub, if asked),
build the RPC layers (recovery -> limits -> auth, wrapped once per method),
register services, listen, start background tasks under supervision, and
only then report SERVING. Shutdown is the four phases of lifecycle.py; the
hooks for each phase are registered here, in `_register_shutdown`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Sequence
from urllib.parse import urlparse

import grpc
from grpc_health.v1 import health_pb2_grpc

from metastore_core.config import Config, host_port
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server import faults
from metastore_core.server.authz import auth_layer
from metastore_core.server.health import (
    NOT_SERVING,
    HealthMonitor,
    HealthService,
    storage_checker,
    task_checker,
)
from metastore_core.server.httpd import HttpEndpoint
from metastore_core.server.lifecycle import (
    CLOSE_RESOURCES,
    DRAIN,
    PERSIST_STATE,
    STOP_ACCEPTING,
    Lifecycle,
    load_report,
    save_report,
)
from metastore_core.server.limits import Limiter, MemoryMonitor, count_connections
from metastore_core.server.metrics import RequestMetrics, make_registry
from metastore_core.server.node import ETCD_API_VERSION, Node
from metastore_core.server.recovery import Recovery
from metastore_core.server.rpc import Layer, message_types, service_handler
from metastore_core.server.services import Service, build_admin_service, build_services
from metastore_core.storage import Storage
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageError
from metastore_core.storage.datadir import DataDir
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage
from metastore_core.storage.scrub import scrub

log = logging.getLogger("metastore")

TASK_RESTARTS = 5


def grpc_options(config: Config) -> list[tuple[str, int]]:
    """Server options real etcd clients need (see docs/architecture.md, 'Transport')."""
    return [
        ("grpc.max_receive_message_length", config.max_recv_bytes),
        ("grpc.max_send_message_length", 2**31 - 1),
        # grpc-go clients ping every ~10 s on open streams; etcd allows pings every 5 s.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_allowed_incoming_connections", config.max_connections),
        ("grpc.server_handshake_timeout_ms", int(config.connection_timeout_s * 1000)),
        # The default backlog cancels ~30 % of a burst of thousands of new streams.
        ("grpc.server.max_pending_requests", 20000),
        ("grpc.server.max_pending_requests_hard_limit", 30000),
        # Without this a second daemon on the same port would silently share it.
        ("grpc.so_reuseport", 0),
    ]


def open_storage(config: Config, datadir: DataDir | None) -> Storage:
    if config.backend == "memory":
        return MemoryStorage()
    if config.backend == "leveldb":
        assert datadir is not None
        return LevelDBStorage(datadir.db_path)
    raise ValueError(f"unknown backend {config.backend!r}: want leveldb or memory")


def reliability_layers(recovery: Recovery, limiter: Limiter, metrics: RequestMetrics | None) -> list[Layer]:
    """recovery -> limits -> auth -> handler (the list is innermost first)."""
    return [auth_layer, limiter.layer(), recovery.layer(metrics)]


def raise_fd_limit(max_connections: int) -> None:
    """Lift the soft open-file limit toward the hard one: each connection is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + 1024  # plus the DB's files, the HTTP port and some slack
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < max_connections + 64:
        log.warning(
            "open-file limit %d is below --max-connections %d; raise it (ulimit -n) or lower the limit",
            want,
            max_connections,
        )


class Server:
    """One daemon: owns the data dir lock, the node, the gRPC server and the HTTP port."""

    def __init__(self, config: Config, layers: Sequence[Layer] | None = None) -> None:
        """layers=None builds the reliability layer; pass [] to serve without it (benchmarks)."""
        self.config = config
        self.recovery = Recovery()
        self.limiter = Limiter(
            config.max_concurrent_requests, config.request_timeout_s, config.max_memory_bytes
        )
        self.memory = MemoryMonitor(self.limiter, config.memory_check_interval_s)
        self.metrics = RequestMetrics()
        self.layers: list[Layer] = (
            reliability_layers(self.recovery, self.limiter, self.metrics) if layers is None else list(layers)
        )
        self.lifecycle = Lifecycle(config.shutdown_timeout_s)
        self.health = HealthService()
        self.monitor = HealthMonitor(self.health, [], config.health_check_interval_s)
        self.http: HttpEndpoint | None = None
        self.datadir: DataDir | None = None
        self.node: Node | None = None
        self.grpc: grpc.aio.Server | None = None
        self.ports: list[int] = []
        self.services: list[Service] = []
        self._grpc_stop: asyncio.Future[None] | None = None
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self._node_closed = False

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        cfg = self.config
        raise_fd_limit(cfg.max_connections)
        if cfg.backend == "leveldb":
            self.datadir = DataDir(cfg.data_dir)
            self.datadir.acquire()
            self.lifecycle.previous = load_report(self.datadir.path)
        try:
            storage = open_storage(cfg, self.datadir)
            self.node = node = Node(storage, cfg)
            try:
                await asyncio.to_thread(node.load)
            except L.CorruptRecord as exc:
                raise StorageError(f"data is corrupt ({exc}); refusing to start") from None
            if cfg.corrupt_check_on_start:
                await self._scrub_on_start()
            self.limiter.corrupt = node.alarms.has(pb.CORRUPT)
            self.recovery.corrupt_handlers.append(self._on_corrupt)
            node.committer.on_failure.append(lambda exc: self.monitor.poke())

            self.grpc = grpc.aio.server(options=grpc_options(cfg))
            self.services = [*build_services(node), build_admin_service(self)]
            for svc in self.services:
                types = message_types(*svc.modules)
                self.grpc.add_generic_rpc_handlers(
                    (service_handler(svc.descriptor, svc.servicer, types, self.layers),)
                )
            if faults.enabled(cfg.test_faults):
                log.warning("TEST FAULT INJECTION ENABLED: never use this outside tests")
                self.grpc.add_generic_rpc_handlers((faults.fault_handler(self.layers, node, self.monitor),))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)  # outside the layers
            # NOT_SERVING for every name until the checkers have run once
            self.monitor.service_names = [svc.descriptor.full_name for svc in self.services]
            for name in ["", *self.monitor.service_names]:
                self.health.set(name, NOT_SERVING)
            for url in cfg.listen_client_urls:
                addr = host_port(url)
                try:
                    port = self.grpc.add_insecure_port(addr)
                except RuntimeError as exc:
                    raise OSError(f"cannot listen on {addr}: {exc}") from None
                if not port:
                    raise OSError(f"cannot listen on {addr}: address in use?")
                self.ports.append(port)
            await self._start_http()
            await self.grpc.start()
            self._start_tasks()
            self._register_shutdown()
            await self.monitor.evaluate()
        except BaseException:
            if self.http is not None:
                await self.http.close()
            if self.grpc is not None:
                await self.grpc.stop(0)
            await self.recovery.stop_tasks()
            await self._release()
            raise
        store = node.store
        log.info(
            "serving on %s (backend %s, data dir %s, revision %d, member %x)",
            ", ".join(cfg.listen_client_urls),
            cfg.backend,
            cfg.data_dir if cfg.backend == "leveldb" else "-",
            store.committed_rev,
            store.ids.member_id,
        )

    async def _scrub_on_start(self) -> None:
        node = self.node
        assert node is not None
        t0 = time.monotonic()
        report = await asyncio.to_thread(scrub, node.storage, node.store.codec)
        if not report.ok:
            raise StorageError(
                "corruption found by --corrupt-check-on-start; refusing to start: "
                + "; ".join(report.problems)
            )
        log.info("corrupt check: %d records verified in %.2fs", report.records, time.monotonic() - t0)

    async def _start_http(self) -> None:
        registry = make_registry([self.metrics])
        self._register_gauges()
        self.http = HttpEndpoint(registry, self._http_health, self._http_ready)
        for url in self.config.listen_metrics_urls:
            parsed = urlparse(url if "://" in url else "http://" + url)
            if not parsed.hostname or parsed.port is None:
                raise ValueError(f"bad metrics URL {url!r}: want http://HOST:PORT")
            try:
                await self.http.start(parsed.hostname, parsed.port)
            except OSError as exc:
                raise OSError(f"cannot listen on {url} for metrics: {exc}") from None

    def _start_tasks(self) -> None:
        node = self.node
        assert node is not None
        rec = self.recovery
        for svc in self.services:
            for task in svc.tasks:
                rec.safe_spawn_with_restart(f"{svc.descriptor.name}.{task.__name__}", task, TASK_RESTARTS)
        self.monitor.checkers = [
            storage_checker(node),
            task_checker("lease", rec, lambda name: name.startswith("Lease.")),
            task_checker("tasks", rec, lambda name: not name.startswith("Lease."), require_alive=False),
        ]
        self.monitor.before.append(self._sync_alarm_gate)
        rec.safe_spawn_with_restart("health-monitor", self.monitor.run, 1000)
        rec.safe_spawn_with_restart("memory-monitor", self.memory.run, 1000)
        rec.safe_spawn_with_restart("request-timeouts", self.limiter.run_timeouts, 1000)
        if self.config.corrupt_check_interval_s > 0:
            rec.safe_spawn_with_restart("corrupt-check", self._periodic_scrub, 1000)

    # ------------------------------------------------------------------ corruption
    def _sync_alarm_gate(self) -> None:
        if self.node is not None:
            self.limiter.corrupt = self.node.alarms.has(pb.CORRUPT)

    def _on_corrupt(self, exc: Exception) -> None:
        """A CRC mismatch: raise CORRUPT, refuse writes from now on (reads of good data go on)."""
        node = self.node
        if node is None:
            return
        self.limiter.corrupt = True
        if node.alarms.activate(node.store.ids.member_id, pb.CORRUPT):
            log.error("CORRUPT alarm raised: %s", exc)
            self.recovery.safe_spawn(f"persist-corrupt-alarm-{time.monotonic_ns()}", node.committer.flush)

    async def _periodic_scrub(self) -> None:
        node = self.node
        assert node is not None
        while True:
            await asyncio.sleep(self.config.corrupt_check_interval_s)
            report = await asyncio.to_thread(scrub, node.storage, node.store.codec)
            if not report.ok:
                self._on_corrupt(L.CorruptRecord("; ".join(report.problems)))

    # ------------------------------------------------------------------ figures
    def _register_gauges(self) -> None:
        m = self.metrics
        rec, lim, cfg = self.recovery, self.limiter, self.config

        def node() -> Node:
            assert self.node is not None
            return self.node

        m.counter("metastore_panic_total", "Handler and task exceptions recovered.", lambda: rec.panic_count)
        m.counter(
            "metastore_validation_errors_total",
            "Requests refused as invalid (INVALID_ARGUMENT).",
            lambda: rec.validation_error_count,
        )
        m.counter(
            "metastore_requests_refused_total",
            "Unary calls refused at the concurrency limit.",
            lambda: lim.refused,
        )
        m.gauge("metastore_memory_usage_bytes", "Resident memory of the daemon.", self.memory.read)
        m.gauge("metastore_memory_limit_bytes", "Memory cap (--max-memory).", lambda: lim.max_memory_bytes)
        m.gauge(
            "metastore_connections_current",
            "Established client connections.",
            lambda: count_connections(self.ports),
        )
        m.gauge(
            "metastore_connections_limit", "Connection cap (--max-connections).", lambda: cfg.max_connections
        )
        m.gauge("metastore_requests_current", "Unary calls in flight.", lambda: lim.requests)
        m.gauge(
            "metastore_requests_limit",
            "Concurrent unary call cap (--max-concurrent-requests).",
            lambda: lim.max_requests,
        )
        m.gauge("metastore_streams_current", "Open streaming calls.", lambda: lim.streams)
        m.gauge("metastore_health_serving", "1 while the overall health status is SERVING.", self._serving)
        m.gauge("etcd_server_has_leader", "Whether a leader exists (always, single node).", lambda: 1)
        m.gauge("etcd_server_is_leader", "Whether this member is the leader.", lambda: 1)
        m.gauge(
            "etcd_server_version",
            "Which etcd API version is served.",
            lambda: 1,
            server_version=ETCD_API_VERSION,
        )
        m.gauge("etcd_mvcc_db_total_size_in_bytes", "Storage size.", lambda: node().storage.size())
        m.gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes", "Storage size in use.", lambda: node().storage.size()
        )
        m.gauge("etcd_server_quota_backend_bytes", "Backend quota.", lambda: cfg.quota_backend_bytes)
        m.gauge(
            "etcd_debugging_mvcc_current_revision", "Current revision.", lambda: node().store.committed_rev
        )
        m.gauge(
            "etcd_debugging_mvcc_compact_revision", "Compacted revision.", lambda: node().store.compact_rev
        )
        m.gauge("etcd_debugging_mvcc_keys_total", "Live keys.", lambda: node().store.key_count())
        m.gauge("etcd_debugging_lease_total", "Live leases.", lambda: len(node().lessor.leases))
        m.gauge(
            "etcd_debugging_mvcc_watch_stream_total",
            "Open watch streams.",
            lambda: lim.stream_counts.get("/etcdserverpb.Watch/Watch", 0),
        )
        m.counter(
            "etcd_server_health_success_total",
            "Successful health evaluations.",
            lambda: self.monitor.successes,
        )
        m.counter(
            "etcd_server_health_failures_total", "Failed health evaluations.", lambda: self.monitor.failures
        )
        m.gauge("os_fd_used", "Open file descriptors.", lambda: len(os.listdir("/proc/self/fd")))

    def _serving(self) -> int:
        return 1 if self.monitor.serving else 0

    def alarm_names(self) -> list[str]:
        if self.node is None:
            return []
        return sorted({pb.AlarmType.Name(a) for _, a in self.node.alarms.active})  # type: ignore[arg-type]

    def _http_health(self, exclude: set[str]) -> tuple[bool, str]:
        if self.health.shutting_down:
            return False, "shutting down"
        alarms = [a for a in self.alarm_names() if a not in exclude]
        if alarms:
            return False, "ALARM " + ",".join(alarms)
        if not self.monitor.serving:
            return False, "; ".join(self.monitor.reasons()) or "not serving"
        return True, ""

    def _http_ready(self) -> tuple[bool, str]:
        if self.health.shutting_down:
            return False, "shutting down"
        if not self.monitor.serving:
            return False, "; ".join(self.monitor.reasons()) or "not serving"
        return True, ""

    # ------------------------------------------------------------------ stop
    def _register_shutdown(self) -> None:
        lc = self.lifecycle
        lc.on(STOP_ACCEPTING, "health", self._stop_health)
        lc.on(STOP_ACCEPTING, "grpc-listeners", self._stop_accepting)
        for svc in self.services:
            if svc.close is not None:
                lc.on(DRAIN, f"{svc.descriptor.name}-streams", svc.close)
        lc.on(DRAIN, "health-streams", self._end_health_streams)
        lc.on(DRAIN, "in-flight", self._wait_in_flight)
        for svc in self.services:
            if svc.persist is not None:
                lc.on(PERSIST_STATE, f"{svc.descriptor.name}-state", svc.persist)
        lc.on(PERSIST_STATE, "storage", self._persist_storage)
        lc.on(CLOSE_RESOURCES, "http", self._close_http)
        lc.on(CLOSE_RESOURCES, "server", self._close_server)

    async def _stop_health(self) -> None:
        self.health.enter_shutdown()

    async def _stop_accepting(self) -> None:
        self.limiter.draining = True
        if self.grpc is not None and self._grpc_stop is None:
            # Refuses new RPCs and connections now; finishes once in-flight calls end.
            self._grpc_stop = asyncio.ensure_future(self.grpc.stop(self.config.shutdown_timeout_s))

    async def _end_health_streams(self) -> None:
        self.health.close()

    async def _wait_in_flight(self) -> None:
        if self._grpc_stop is not None:
            await asyncio.shield(self._grpc_stop)

    async def _persist_storage(self) -> None:
        node = self.node
        if node is None:
            return
        await node.committer.flush()
        if not node.config.fsync:  # batches were written without fsync: sync once now
            ci = node.store.consistent_index
            await node.committer.run_io(
                lambda: node.storage.write([(L.META_CONSISTENT_INDEX, L.u64(ci))], sync=True)
            )

    async def _close_http(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def _close_server(self) -> None:
        await self.recovery.stop_tasks()
        if self.grpc is not None:
            await self.grpc.stop(0)
        await self._release()

    async def stop(self, grace: float | None = None) -> None:
        """Run the graceful shutdown now (tests and embedding); returns when it is over."""
        if grace is not None:
            self.lifecycle.timeout_s = grace
        self.lifecycle.request("stop() called")
        await self.shutdown()

    async def shutdown(self) -> int:
        """Run the four phases; returns the exit code (0 when clean)."""
        report = await self.lifecycle.run()
        if self.datadir is not None:
            try:
                save_report(self.datadir.path, report)
            except OSError as exc:
                log.warning("could not keep the shutdown report: %s", exc)
        self.exit_code = 0 if report.clean else 1
        self.stopped.set()
        log.info("stopped")
        return self.exit_code

    async def serve_until_stopped(self) -> int:
        """Serve until a signal, `metastore stop` or the Shutdown RPC; then shut down."""
        self.lifecycle.install_signal_handlers(asyncio.get_running_loop())
        await self.lifecycle.requested.wait()
        return await self.shutdown()

    async def _release(self) -> None:
        if self.node is not None and not self._node_closed:
            self._node_closed = True
            self.node.close()
        if self.datadir is not None:
            self.datadir.release()
