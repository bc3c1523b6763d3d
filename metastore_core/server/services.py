"""Every gRPC service the daemon serves, in one list (add new services here)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from metastore_core.engine.watch import WatchLimits
from metastore_core.pb.etcdserverpb import rpc_pb2
from metastore_core.pb.v3electionpb import v3election_pb2
from metastore_core.pb.v3lockpb import v3lock_pb2
from metastore_core.server.cluster import ClusterService
from metastore_core.server.concurrency import Contenders
from metastore_core.server.election import ElectionService
from metastore_core.server.kv import KVService
from metastore_core.server.lease import LeaseService
from metastore_core.server.lock import LockService
from metastore_core.server.maintenance import MaintenanceService
from metastore_core.server.node import Node
from metastore_core.server.watch import WatchService


@dataclass
class Service:
    """A servicer object and the proto service it implements."""

    descriptor: ServiceDescriptor
    servicer: Any
    modules: tuple[Any, ...]
    # Background loops the service needs while the daemon runs (e.g. lease expiry).
    tasks: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Called at shutdown before the gRPC server stops: end open streams cleanly.
    close: Callable[[], Awaitable[None]] | None = None
    # Called in shutdown phase 3 (persist state), after every stream has ended.
    persist: Callable[[], Awaitable[None]] | None = None


def build_services(node: Node) -> list[Service]:
    etcd = rpc_pb2.DESCRIPTOR.services_by_name
    cfg = node.config
    watch = WatchService(
        node,
        WatchLimits(
            buffer_events=cfg.watch_buffer_events,
            max_lag_revisions=cfg.watch_max_lag_revisions,
            fragment_bytes=cfg.max_request_bytes,
        ),
    )
    lease = LeaseService(node, checkpoint_interval=cfg.lease_checkpoint_interval_s)
    maintenance = MaintenanceService(node)
    contenders = Contenders(node)
    return [
        Service(etcd["KV"], KVService(node), (rpc_pb2,)),
        Service(
            etcd["Maintenance"],
            maintenance,
            (rpc_pb2,),
            tasks=[maintenance.auto_compaction],
            close=maintenance.close,
        ),
        Service(etcd["Cluster"], ClusterService(node), (rpc_pb2,)),
        Service(etcd["Watch"], watch, (rpc_pb2,), tasks=[watch.progress_loop], close=watch.close),
        Service(
            etcd["Lease"],
            lease,
            (rpc_pb2,),
            tasks=[lease.run_expiry, lease.run_checkpoints],
            close=lease.close,
            persist=lease.persist,
        ),
        Service(v3lock_pb2.DESCRIPTOR.services_by_name["Lock"], LockService(node, contenders), (v3lock_pb2,)),
        Service(
            v3election_pb2.DESCRIPTOR.services_by_name["Election"],
            ElectionService(node, contenders),
            (v3election_pb2,),
        ),
    ]


def build_admin_service(server: Any) -> Service:
    """metastore.admin.v1.Admin: needs the whole server (stats, shutdown), not only the node."""
    from metastore_core.pb.metastore.admin.v1 import admin_pb2
    from metastore_core.server.admin import AdminService

    return Service(admin_pb2.DESCRIPTOR.services_by_name["Admin"], AdminService(server), (admin_pb2,))
