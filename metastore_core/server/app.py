"""Start-up and stop of the daemon: data dir, storage, node, gRPC server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from metastore_core.server.config import Config, host_port
from metastore_core.server.node import Node
from metastore_core.server.rpc import Layer, message_types, service_handler
from metastore_core.server.services import Service, build_services
from metastore_core.storage import Storage
from metastore_core.storage.datadir import DataDir
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage

log = logging.getLogger("metastore")


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


class Server:
    """One daemon: owns the data dir lock, the node and the gRPC server."""

    def __init__(self, config: Config, layers: Sequence[Layer] = ()) -> None:
        self.config = config
        self.layers = layers
        self.datadir: DataDir | None = None
        self.node: Node | None = None
        self.grpc: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.ports: list[int] = []
        self.services: list[Service] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        if cfg.backend == "leveldb":
            self.datadir = DataDir(cfg.data_dir)
            self.datadir.acquire()
        try:
            storage = open_storage(cfg, self.datadir)
            self.node = Node(storage, cfg)
            await asyncio.to_thread(self.node.load)
            self.grpc = grpc.aio.server(options=grpc_options(cfg))
            self.services = build_services(self.node)
            for svc in self.services:
                types = message_types(*svc.modules)
                self.grpc.add_generic_rpc_handlers(
                    (service_handler(svc.descriptor, svc.servicer, types, self.layers),)
                )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
            for url in cfg.listen_client_urls:
                addr = host_port(url)
                try:
                    port = self.grpc.add_insecure_port(addr)
                except RuntimeError as exc:
                    raise OSError(f"cannot listen on {addr}: {exc}") from None
                if not port:
                    raise OSError(f"cannot listen on {addr}: address in use?")
                self.ports.append(port)
            await self.grpc.start()
            for svc in self.services:
                for task in svc.tasks:
                    self.tasks.append(asyncio.create_task(task()))
            await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        except BaseException:
            await self._release()
            raise
        store = self.node.store
        log.info(
            "serving on %s (backend %s, data dir %s, revision %d, member %x)",
            ", ".join(cfg.listen_client_urls),
            cfg.backend,
            cfg.data_dir if cfg.backend == "leveldb" else "-",
            store.committed_rev,
            store.ids.member_id,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving, finish in-flight requests, persist and close."""
        if self.stopped.is_set():
            return
        grace = self.config.shutdown_timeout_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        for svc in self.services:
            if svc.close is not None:
                await svc.close()
        for task in self.tasks:
            task.cancel()
        if self.grpc is not None:
            await self.grpc.stop(grace)
        if self.node is not None:
            await self.node.committer.flush()
        await self._release()
        self.stopped.set()
        log.info("stopped")

    async def _release(self) -> None:
        if self.node is not None:
            self.node.close()
        if self.datadir is not None:
            self.datadir.release()
