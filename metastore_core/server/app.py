"""The daemon, composed: data dir, storage, the member, the layers, the listeners, the phases.

Start-up order: lock the data dir, open storage, load (and scrub, if asked),
build the RPC layers (recovery -> limits -> auth, wrapped once per method),
register services, listen, start the member's loops and the server's own
under supervision, and only then report SERVING. Shutdown is the four phases
of lifecycle.py; this file only says which hook runs in which phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import resource
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection

from metastore_core import errors
from metastore_core.config import Config, is_https, split_url
from metastore_core.member.node import ETCD_API_VERSION, Node
from metastore_core.server import listeners, rpc
from metastore_core.server.catalog import OPERATOR_SERVICES, Service, build_services
from metastore_core.server.connections import Connections
from metastore_core.server.figures import Figures, exposure_warnings
from metastore_core.server.front import FrontListener, Relayed
from metastore_core.server.gcpauses import GCPauses
from metastore_core.server.healthcheck import HealthMonitor, livez, readyz, storage_checker, task_checker
from metastore_core.server.http import HttpEndpoint, HttpServer, Limits, Router
from metastore_core.server.http import gateway as gw
from metastore_core.server.http.metrics_port import health_route
from metastore_core.server.layers import reliability_layers
from metastore_core.server.layers.auth import AuthLayer
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
from metastore_core.server.methods import Layer, Method, service_methods
from metastore_core.server.services import faults
from metastore_core.server.services.health import NOT_SERVING, HealthService
from metastore_core.server.systemd import Notifier
from metastore_core.server.tls import Certificates, TLSFiles, auto_tls
from metastore_core.server.tracing import Tracing
from metastore_core.storage import Storage
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageError
from metastore_core.storage.datadir import DataDir, Store
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage
from metastore_core.storage.watermark import Mark, Watermark, WatermarkError

log = logging.getLogger("metastore")

TASK_RESTARTS = 5
QUIET_S = 0.05  # shutdown: no call refused for this long means grpc-core's queue is empty
MAX_QUIET_WAIT_S = 1.0  # ... but stop waiting for that after this long (clients keep calling)
LEASE_LOOPS = ("lease-expiry", "lease-checkpoints")
TLS_CHECK_S = 2.0  # how often the certificate files are checked for changes
GATEWAY_IDLE_S = 60.0  # a kept-alive gateway connection may wait this long for its next request
GATEWAY_BODIES = 8  # full-size request bodies the gateway holds at once (64 MiB by default)


def open_storage(config: Config, datadir: DataDir | None) -> Storage:
    if config.backend == "memory":
        return MemoryStorage()
    if config.backend == "leveldb":
        assert datadir is not None
        return LevelDBStorage(datadir.db_path, create=datadir.store is Store.NEW)
    raise ValueError(f"unknown backend {config.backend!r}: want leveldb or memory")


def open_watermark(config: Config, datadir: DataDir, storage: Storage) -> Watermark:
    """The data dir's watermark; a new one (from the store's own index) for a new or adopted dir."""
    if datadir.marked:
        try:
            return Watermark.open(datadir.path)
        except WatermarkError as exc:
            if not config.unsafe_accept_lost_writes:
                raise WatermarkError(
                    f"{exc}: cannot tell whether acknowledged writes were lost; refusing to start "
                    "(--unsafe-accept-lost-writes starts with a new watermark)"
                ) from None
            log.error("%s; writing a new one (--unsafe-accept-lost-writes)", exc)
    index = L.parse_u64(storage.get(L.META_CONSISTENT_INDEX) or L.u64(0))
    return Watermark.create(datadir.path, Mark(index, 0))


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

    def __init__(
        self, config: Config, layers: Sequence[Layer] | None = None, tracing: Tracing | None = None
    ) -> None:
        """layers=None builds the reliability layer; pass [] to serve without it (benchmarks).
        tracing=None follows --experimental-enable-distributed-tracing (tests pass their own)."""
        self.config = config
        self.ports: list[int] = []  # client ports, in --listen-client-urls order, then the gateway's
        self.recovery = Recovery()
        # gRPC's own client ports: the ones whose HTTP/2 handshakes server/connections.py watches
        self.grpc_ports: list[int] = []
        self.connections = Connections(config.max_connections, self.grpc_ports)
        self.limiter = Limiter(config.max_concurrent_requests, config.request_timeout_s, self.connections)
        self.clients = ClientLimits(config.max_client_requests, config.client_rate, config.client_burst)
        self.memory = MemoryMonitor(config.max_memory_bytes, config.memory_check_interval_s)
        self.metrics = RequestMetrics()
        self.loop_lag = LoopLag()
        self.gc_pauses = GCPauses()
        self.auth = AuthLayer(client_cert_auth=config.client_cert_auth)
        self.layers: list[Layer] = (
            reliability_layers(self.recovery, self.limiter, self.metrics, self.auth, self.clients)
            if layers is None
            else list(layers)
        )
        self.tracing = tracing or Tracing.from_config(config)
        if self.tracing is not None:  # off, nothing is added to the request path
            self.layers.append(self.tracing.layer())
        self.lifecycle = Lifecycle(config.shutdown_timeout_s)
        self.systemd = Notifier()
        self.lifecycle.on_phase = lambda phase: self.systemd.status(f"shutting down: {phase}")
        self.health = HealthService()
        self.monitor = HealthMonitor(self.health, [], config.health_check_interval_s)
        self.http: HttpEndpoint | None = None
        self.gateway: HttpServer | None = None  # the JSON gateway, /version, /health
        self.front: FrontListener | None = None  # one client port for gRPC and the gateway
        self.relayed = Relayed()
        self.datadir: DataDir | None = None
        self.storage: Storage | None = None
        self.node: Node | None = None
        self.grpc: grpc.aio.Server | None = None
        self.admin: grpc.aio.Server | None = None  # --listen-admin-urls: health and admin only
        self.admin_ports: list[int] = []
        self.tls: Certificates | None = None
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
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
        self.systemd.status("starting: loading the store")
        raise_fd_limit(cfg.max_connections)
        if cfg.backend == "leveldb":
            self.datadir = DataDir(cfg.data_dir)
            self.datadir.acquire()
            self.lifecycle.previous = load_report(self.datadir.path)
        try:
            self.storage = open_storage(cfg, self.datadir)
            watermark = None if self.datadir is None else open_watermark(cfg, self.datadir, self.storage)
            self.node = node = Node(self.storage, cfg, spawn=self._spawn, watermark=watermark)
            self.auth.node = node
            try:
                keys = await asyncio.to_thread(node.load)
            except L.CorruptRecord as exc:
                raise StorageError(f"data is corrupt ({exc}); refusing to start") from None
            self.gc_pauses.after_load(keys)  # before serving: its one full collection pauses nothing
            if self.datadir is not None:
                self.datadir.mark()  # the store exists: from now on a missing one is refused
            if cfg.corrupt_check_on_start:
                await node.check_integrity_on_start()
            try:
                await node.settle_kept_alarms()
            except (errors.StorageFailed, OSError) as exc:  # the alarm stands, writes are refused
                log.error("could not write the alarms kept in the watermark: %s", exc)
            if self.tracing is not None:
                node.observe_commits(self.tracing.commit)
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
            served: dict[str, Method] = {}
            for svc in self.services:
                methods = service_methods(svc.descriptor, svc.servicer, svc.modules)
                served.update((m.info.full, m) for m in methods)
                handler = rpc.handler(
                    svc.descriptor.full_name, methods, self.layers, self.relayed.peer, self.metrics.traffic
                )
                self.grpc.add_generic_rpc_handlers((handler,))
                if self.admin is not None and svc.descriptor.full_name in OPERATOR_SERVICES:
                    self.admin.add_generic_rpc_handlers((handler,))
            if cfg.grpc_reflection:
                # grpcurl list/describe; names what is served (not the test-only fault service)
                names = [svc.descriptor.full_name for svc in self.services] + [reflection.SERVICE_NAME]
                reflection.enable_server_reflection(names, self.grpc)
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
            self.tls = self._certificates()
            await self._start_gateway(served)
            await self._bind_client_urls()
            if self.gateway is not None:  # client connections over HTTP count too
                self.ports.extend(self.gateway.ports)
            if self.admin is not None:
                creds = self.tls.grpc_credentials() if self.tls is not None else None
                self.admin_ports = listeners.bind_client_urls(
                    self.admin, cfg.listen_admin_urls, creds, "--listen-admin-urls"
                )
                await self.admin.start()
            await self._start_http(figures)
            await self.grpc.start()
            self._start_tasks(node)
            self._register_shutdown(node)
            await self.monitor.evaluate()
        except BaseException:
            for port in (self.front, self.gateway, self.http):
                if port is not None:
                    await port.close()
            for server in (self.grpc, self.admin):
                if server is not None:
                    await server.stop(0)
            await self.recovery.stop_tasks()
            await self._release()
            raise
        for warning in self.warnings():
            log.warning("%s", warning)
        f = node.figures
        data_dir = str(cfg.data_dir) if cfg.backend == "leveldb" else "-"
        log.info(
            "serving on %s (backend %s, data dir %s, revision %d, member %x)",
            ", ".join(cfg.listen_client_urls),
            cfg.backend,
            data_dir,
            f.revision,
            f.member_id,
            extra={
                "listen-client-urls": cfg.listen_client_urls,
                "listen-metrics-urls": cfg.listen_metrics_urls,
                "backend": cfg.backend,
                "data-dir": data_dir,
                "revision": f.revision,
                "member-id": f"{f.member_id:x}",
            },
        )
        self.systemd.ready(f"serving on {', '.join(cfg.listen_client_urls)} at revision {f.revision}")

    def warnings(self) -> list[str]:
        """Exposure warnings, as the log at start and `metastore stats` show them."""
        return exposure_warnings(self.config, self.node is not None and self.node.auth.enabled)

    def _certificates(self) -> Certificates | None:
        cfg = self.config
        urls = [*cfg.listen_client_urls, *cfg.listen_client_http_urls, *cfg.listen_metrics_urls]
        if not any(is_https(u) for u in urls):
            return None
        if cfg.cert_file:
            ca = Path(cfg.trusted_ca_file) if cfg.trusted_ca_file else None
            files = TLSFiles(Path(cfg.cert_file), Path(cfg.key_file), ca, cfg.client_cert_auth)
        elif cfg.auto_tls:
            if self.datadir is not None:
                where = self.datadir.path / "fixtures" / "client"
            else:
                self._tls_dir = tempfile.TemporaryDirectory(prefix="metastore-tls-")
                where = Path(self._tls_dir.name)
            files = auto_tls(where, [split_url(u)[0] for u in urls])
        else:
            raise ValueError("https:// URLs need --cert-file and --key-file, or --auto-tls")
        return Certificates(files)

    async def _watch_certificates(self) -> None:
        while True:
            await asyncio.sleep(TLS_CHECK_S)
            if self.tls is not None:
                await asyncio.to_thread(self.tls.reload)

    def _shared(self, url: str) -> bool:
        """Does this client URL also serve the gateway (through the front listener)?"""
        return self.config.gateway_on_client_urls and not is_https(url)

    async def _bind_client_urls(self) -> None:
        """gRPC on every client URL, in order; shared ones through the front listener, which relays
        gRPC connections to a private loopback port of the gRPC server."""
        assert self.grpc is not None
        creds = self.tls.grpc_credentials() if self.tls is not None else None
        urls = self.config.listen_client_urls
        if any(self._shared(u) for u in urls):
            assert self.gateway is not None
            private = listeners.bind_client_urls(self.grpc, ["http://127.0.0.1:0"])[0]
            cfg = self.config
            self.front = FrontListener(
                self.gateway, private, self.relayed, cfg.connection_timeout_s, cfg.max_connections
            )
        elif self.config.gateway_on_client_urls:
            log.warning(
                "--gateway-on-client-urls: https:// client URLs serve gRPC only; serve the gateway "
                "on --listen-client-http-urls https://..."
            )
        for url in urls:
            if self._shared(url):
                assert self.front is not None
                host, port = listeners.parse_url(url, "--listen-client-urls")
                try:
                    self.ports.append(await self.front.start(host, port))
                except OSError as exc:
                    raise OSError(f"cannot listen on {url}: {exc}") from None
            else:
                bound = listeners.bind_client_urls(self.grpc, [url], creds)
                self.ports.extend(bound)
                self.grpc_ports.extend(bound)

    async def _start_gateway(self, served: dict[str, Method]) -> None:
        """etcd's JSON gateway, /version and /health on --listen-client-http-urls (and on the
        client URLs with --gateway-on-client-urls)."""
        cfg = self.config
        if not cfg.listen_client_http_urls and not any(self._shared(u) for u in cfg.listen_client_urls):
            return
        node = self.node
        assert node is not None
        major_minor = ".".join(ETCD_API_VERSION.split(".")[:2])
        routes = [
            *gw.gateway_routes(served, self.layers),
            gw.version_route(ETCD_API_VERSION, major_minor + ".0"),
            health_route(lambda exclude: self.monitor.healthy(node.figures.alarm_names(), exclude)),
        ]
        limits = Limits(
            # JSON spells a message out (base64 adds a third), so the body may exceed the gRPC cap
            max_body_bytes=2 * cfg.max_recv_bytes,
            max_bodies_bytes=GATEWAY_BODIES * 2 * cfg.max_recv_bytes,
            request_timeout=cfg.connection_timeout_s,
            idle_timeout=GATEWAY_IDLE_S,
            max_connections=cfg.max_connections,
            read_size=64 << 10,
        )
        self.gateway = HttpServer(Router(routes), limits, refusal=gw.refusal)
        await self._listen(self.gateway, cfg.listen_client_http_urls, "--listen-client-http-urls")

    async def _start_http(self, figures: Figures) -> None:
        node = figures.node
        probes = [livez(node, self.recovery), readyz(node, self.monitor)]
        figures.register(self.metrics, probes)
        registry = make_registry([self.metrics])
        self.http = HttpEndpoint(
            registry,
            lambda exclude: self.monitor.healthy(node.figures.alarm_names(), exclude),
            probes,
        )
        await self._listen(self.http, self.config.listen_metrics_urls, "--listen-metrics-urls")

    async def _listen(self, server: HttpServer, urls: list[str], flag: str) -> None:
        """Start an HTTP port on every URL of flag; https:// ones with the certificate set."""
        for url in urls:
            host, port = listeners.parse_url(url, flag)
            context = self.tls.ssl_context() if self.tls is not None and is_https(url) else None
            try:
                await server.start(host, port, context)
            except OSError as exc:
                raise OSError(f"cannot listen on {url} ({flag}): {exc}") from None

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
        if self.tls is not None:
            rec.safe_spawn_with_restart("tls-reload", self._watch_certificates, 1000)
        if self.systemd.enabled and self.systemd.watchdog_s > 0:

            def alive() -> bool:  # pings stop once a supervised loop gives up: systemd restarts us
                return not any(t.failed for t in rec.tasks.values())

            rec.safe_spawn_with_restart("systemd-watchdog", lambda: self.systemd.run_watchdog(alive), 1000)

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
        for port in (self.front, self.gateway):
            if port is not None:
                port.stop_accepting()
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
        while self.limiter.requests:  # unary calls through the gateway (the phase's timeout bounds it)
            await asyncio.sleep(0.01)

    async def _close_http(self) -> None:
        for port in (self.front, self.gateway, self.http):
            if port is not None:
                await port.close()

    async def _close_server(self) -> None:
        await self.recovery.stop_tasks()
        for server in (self.grpc, self.admin):  # the health/admin listener answers until the end
            if server is not None:
                await server.stop(0)
        await self._release()
        if self.tracing is not None:  # export what is still buffered
            await asyncio.to_thread(self.tracing.shutdown)

    async def stop(self, grace: float | None = None) -> None:
        """Run the graceful shutdown now (tests and embedding); returns when it is over."""
        if grace is not None:
            self.lifecycle.timeout_s = grace
        self.lifecycle.request("stop() called")
        await self.shutdown()

    async def shutdown(self) -> int:
        """Run the four phases; returns the exit code (0 when clean)."""
        self.systemd.stopping(f"shutting down: {self.lifecycle.reason or 'stop'}")
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
        self.gc_pauses.install()
        loop = asyncio.get_running_loop()
        self.lifecycle.install_signal_handlers(loop)
        if self.tls is not None:  # SIGHUP: re-read the certificates now (etcd users expect it)
            loop.add_signal_handler(signal.SIGHUP, self.tls.reload, True)
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
        self.gc_pauses.thaw()
        if self.datadir is not None:
            self.datadir.release()
        if self._tls_dir is not None:
            with contextlib.suppress(OSError):
                self._tls_dir.cleanup()
