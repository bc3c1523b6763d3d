"""The daemon, composed: data dir, storage, the member, the layers, the listeners, the phases.

Start-up order: lock the data dir, open storage, load (and scrub, if asked),
build the RPC layers (recovery -> limits -> auth, wrapped once per method),
register services, listen, start the member's loops and the server's own
under supervision, and only then report SERVING. Shutdown is the four phases
of lifecycle.py; this file only says which hook runs in which phase.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from metastore_core.config import Config
from metastore_core.member.node import Node
from metastore_core.server import listeners, rpc
from metastore_core.server.catalog import OPERATOR_SERVICES, Service, build_services
from metastore_core.server.connections import Connections
from metastore_core.server.figures import Figures
from metastore_core.server.gcpauses import GCPauses
from metastore_core.server.healthcheck import HealthMonitor, storage_checker, task_checker
from metastore_core.server.http import HttpEndpoint
from metastore_core.server.layers import reliability_layers
from metastore_core.server.layers.clients import ClientLimits
from metastore_core.server.layers.limits import Limiter, MemoryMonitor
from metastore_core.server.layers.metrics import RequestMetrics, make_registry
from metastore_core.server.layers.recovery import Recovery
from metastore_core.server.lifecycle import (
    CLOSE_RESOURCES,
    DRAIN,
    PERSIST_STATE,
    STOP_ACCEPTING,
    Lifecycle,
    load_report,
    save_report,
)
from metastore_core.server.looplag import LoopLag
from metastore_core.server.methods import Layer
from metastore_core.server.services import faults
from metastore_core.server.services.health import NOT_SERVING, HealthService
from metastore_core.storage import Storage
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageError
from metastore_core.storage.datadir import DataDir
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage

log = logging.getLogger("metastore")

TASK_RESTARTS = 5
QUIET_S = 0.05  # shutdown: no call refused for this long means grpc-core's queue is empty
MAX_QUIET_WAIT_S = 1.0  # ... but stop waiting for that after this long (clients keep calling)
LEASE_LOOPS = ("lease-expiry", "lease-checkpoints")


def open_storage(config: Config, datadir: DataDir | None) -> Storage:
    if config.backend == "memory":
        return MemoryStorage()
    if config.backend == "leveldb":
        assert datadir is not None
        return LevelDBStorage(datadir.db_path)
    raise ValueError(f"unknown backend {config.backend!r}: want leveldb or memory")


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
    """One daemon: owns the data dir lock, the storage, the node, the gRPC server and the HTTP port."""

    def __init__(self, config: Config, layers: Sequence[Layer] | None = None) -> None:
        """layers=None builds the reliability layer; pass [] to serve without it (benchmarks)."""
        self.config = config
        self.ports: list[int] = []
        self.recovery = Recovery()
        self.connections = Connections(config.max_connections, self.ports)
        self.limiter = Limiter(config.max_concurrent_requests, config.request_timeout_s, self.connections)
        self.clients = ClientLimits(config.max_client_requests, config.client_rate, config.client_burst)
        self.memory = MemoryMonitor(config.max_memory_bytes, config.memory_check_interval_s)
        self.metrics = RequestMetrics()
        self.loop_lag = LoopLag()
        self.gc_pauses = GCPauses()
        self.layers: list[Layer] = (
            reliability_layers(self.recovery, self.limiter, self.metrics, self.clients)
            if layers is None
            else list(layers)
        )
        self.lifecycle = Lifecycle(config.shutdown_timeout_s)
        self.health = HealthService()
        self.monitor = HealthMonitor(self.health, [], config.health_check_interval_s)
        self.http: HttpEndpoint | None = None
        self.datadir: DataDir | None = None
        self.storage: Storage | None = None
        self.node: Node | None = None
        self.grpc: grpc.aio.Server | None = None
        self.admin: grpc.aio.Server | None = None  # --listen-admin-urls: health and admin only
        self.admin_ports: list[int] = []
        self.services: list[Service] = []
        self._grpc_stop: asyncio.Future[None] | None = None
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self._released = False
        self._spawned = itertools.count(1)

    def _spawn(self, name: str, fn: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        """Background work of the member, supervised (a failure is logged and counted)."""

        async def run() -> None:
            await fn()

        return self.recovery.safe_spawn(f"{name}-{next(self._spawned)}", run).task

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        cfg = self.config
        raise_fd_limit(cfg.max_connections)
        if cfg.backend == "leveldb":
            self.datadir = DataDir(cfg.data_dir)
            self.datadir.acquire()
            self.lifecycle.previous = load_report(self.datadir.path)
        try:
            self.storage = open_storage(cfg, self.datadir)
            self.node = node = Node(self.storage, cfg, spawn=self._spawn)
            try:
                await asyncio.to_thread(node.load)
            except L.CorruptRecord as exc:
                raise StorageError(f"data is corrupt ({exc}); refusing to start") from None
            if cfg.corrupt_check_on_start:
                await node.check_integrity_on_start()
            self.recovery.on_corrupt = node.report_corruption
            node.on_storage_failure(lambda exc: self.monitor.poke())
            self.memory.on_full = node.set_memory_full
            self.grpc = grpc.aio.server(options=listeners.grpc_options(cfg))
            figures = Figures(
                cfg,
                node,
                self.limiter,
                self.memory,
                self.recovery,
                self.monitor,
                self.lifecycle,
                self.ports,
                self.loop_lag,
                self.connections,
                self.clients,
            )
            self.services = build_services(node, cfg, self.health, figures, self.lifecycle)
            if cfg.listen_admin_urls:
                self.admin = grpc.aio.server(options=listeners.grpc_options(cfg, listeners.ADMIN_CONNECTIONS))
            for svc in self.services:
                methods = rpc.service_methods(svc.descriptor, svc.servicer, svc.modules)
                handler = rpc.handler(svc.descriptor.full_name, methods, self.layers)
                self.grpc.add_generic_rpc_handlers((handler,))
                if self.admin is not None and svc.descriptor.full_name in OPERATOR_SERVICES:
                    self.admin.add_generic_rpc_handlers((handler,))
            if faults.enabled(cfg.test_faults):
                log.warning("TEST FAULT INJECTION ENABLED: never use this outside tests")
                fault_methods = faults.FaultService(node, self.monitor).methods()
                self.grpc.add_generic_rpc_handlers((rpc.handler(faults.SERVICE, fault_methods, self.layers),))
            # NOT_SERVING for every name until the checkers have run once
            self.monitor.service_names = [
                s.descriptor.full_name for s in self.services if s.servicer is not self.health
            ]
            for name in ["", *self.monitor.service_names]:
                self.health.set(name, NOT_SERVING)
            self.ports.extend(listeners.bind_client_urls(self.grpc, cfg.listen_client_urls))
            if self.admin is not None:
                self.admin_ports = listeners.bind_client_urls(
                    self.admin, cfg.listen_admin_urls, "--listen-admin-urls"
                )
                await self.admin.start()
            await self._start_http(figures)
            await self.grpc.start()
            self._start_tasks(node)
            self._register_shutdown(node)
            await self.monitor.evaluate()
        except BaseException:
            if self.http is not None:
                await self.http.close()
            for server in (self.grpc, self.admin):
                if server is not None:
                    await server.stop(0)
            await self.recovery.stop_tasks()
            await self._release()
            raise
        f = node.figures
        log.info(
            "serving on %s (backend %s, data dir %s, revision %d, member %x)",
            ", ".join(cfg.listen_client_urls),
            cfg.backend,
            cfg.data_dir if cfg.backend == "leveldb" else "-",
            f.revision,
            f.member_id,
        )

    async def _start_http(self, figures: Figures) -> None:
        figures.register(self.metrics)
        registry = make_registry([self.metrics])
        node = figures.node
        self.http = HttpEndpoint(
            registry,
            lambda exclude: self.monitor.healthy(node.figures.alarm_names(), exclude),
            self.monitor.ready,
        )
        for url in self.config.listen_metrics_urls:
            host, port = listeners.parse_url(url, "--listen-metrics-urls")
            try:
                await self.http.start(host, port)
            except OSError as exc:
                raise OSError(f"cannot listen on {url} for metrics: {exc}") from None

    def _start_tasks(self, node: Node) -> None:
        rec = self.recovery
        for loop in node.loops():
            rec.safe_spawn_with_restart(loop.name, loop.run, TASK_RESTARTS)
        self.monitor.checkers = [
            storage_checker(node),
            task_checker("lease", rec, lambda name: name in LEASE_LOOPS),
            task_checker("tasks", rec, lambda name: name not in LEASE_LOOPS, require_alive=False),
        ]
        rec.safe_spawn_with_restart("health-monitor", self.monitor.run, 1000)
        rec.safe_spawn_with_restart("memory-monitor", self.memory.run, 1000)
        rec.safe_spawn_with_restart("request-timeouts", self.limiter.run_timeouts, 1000)
        rec.safe_spawn_with_restart("loop-lag", self.loop_lag.run, 1000)
        rec.safe_spawn_with_restart("connections", self.connections.run, 1000)
        rec.safe_spawn_with_restart("client-sweep", self.clients.run, 1000)

    # ------------------------------------------------------------------ stop
    def _register_shutdown(self, node: Node) -> None:
        lc = self.lifecycle
        lc.on(STOP_ACCEPTING, "health", self._stop_health)
        lc.on(STOP_ACCEPTING, "grpc-listeners", self._stop_accepting)
        for svc in self.services:
            if svc.close is not None:
                lc.on(DRAIN, f"{svc.descriptor.name}-streams", svc.close)
        lc.on(DRAIN, "in-flight", self._wait_in_flight)
        lc.on(PERSIST_STATE, "member", node.persist)
        lc.on(CLOSE_RESOURCES, "http", self._close_http)
        lc.on(CLOSE_RESOURCES, "server", self._close_server)

    async def _stop_health(self) -> None:
        self.health.enter_shutdown()

    async def _stop_accepting(self) -> None:
        self.limiter.start_draining()
        if self.grpc is not None and self._grpc_stop is None:
            # Calls queued in grpc-core are cancelled by its stop (CANCELLED: etcd clients do not
            # retry): keep serving until the queue has drained, each call refused UNAVAILABLE.
            lc = self.lifecycle
            await self.limiter.quiet(QUIET_S, min(lc.drain_deadline, time.monotonic() + MAX_QUIET_WAIT_S))
            grace = max(lc.drain_deadline - time.monotonic(), 0.0)
            # Refuses new RPCs and connections now; finishes once in-flight calls end.
            self._grpc_stop = asyncio.ensure_future(self.grpc.stop(grace))

    async def _wait_in_flight(self) -> None:
        if self._grpc_stop is not None:
            await asyncio.shield(self._grpc_stop)

    async def _close_http(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def _close_server(self) -> None:
        await self.recovery.stop_tasks()
        for server in (self.grpc, self.admin):  # the health/admin listener answers until the end
            if server is not None:
                await server.stop(0)
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
        self.lifecycle.arm_watchdog()  # this is the process: the timeout holds even if the loop sticks
        # ... and its garbage collector: full collections stay short (server/gcpauses.py)
        self.gc_pauses.after_load()
        self.gc_pauses.install()
        self.lifecycle.install_signal_handlers(asyncio.get_running_loop())
        await self.lifecycle.requested.wait()
        return await self.shutdown()

    async def _release(self) -> None:
        if self._released:
            return
        self._released = True
        if self.node is not None:
            self.node.close()
        elif self.storage is not None:
            self.storage.close()
        if self.datadir is not None:
            self.datadir.release()
