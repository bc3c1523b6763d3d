"""Every service the daemon serves, in one list: a servicer per proto service (add new ones here).

Servicers take domain requests with a `Call` and return domain replies or
raise domain errors; none of them sees a transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2

from metastore_core.config import Config
from metastore_core.member.concurrency import Contenders
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2
from metastore_core.pb.metastore.admin.v1 import admin_pb2
from metastore_core.pb.v3electionpb import v3election_pb2
from metastore_core.pb.v3lockpb import v3lock_pb2
from metastore_core.server.figures import Figures
from metastore_core.server.lifecycle import Lifecycle
from metastore_core.server.services.admin import AdminService
from metastore_core.server.services.auth import AuthService
from metastore_core.server.services.cluster import ClusterService
from metastore_core.server.services.election import ElectionService
from metastore_core.server.services.health import HealthService
from metastore_core.server.services.kv import KVService
from metastore_core.server.services.lease import LeaseService
from metastore_core.server.services.lock import LockService
from metastore_core.server.services.maintenance import MaintenanceService
from metastore_core.server.services.watch import WatchService

# What the health/admin listener (--listen-admin-urls) serves.
OPERATOR_SERVICES = ("grpc.health.v1.Health", "metastore.admin.v1.Admin")


@dataclass
class Service:
    """A servicer object and the proto service it implements."""

    descriptor: ServiceDescriptor
    servicer: Any
    modules: tuple[Any, ...]
    # Shutdown's drain phase: end the service's open streams cleanly before the server stops.
    close: Callable[[], Awaitable[None]] | None = None


def build_services(
    node: Node, config: Config, health: HealthService, figures: Figures, lifecycle: Lifecycle
) -> list[Service]:
    etcd = rpc_pb2.DESCRIPTOR.services_by_name
    watch = WatchService(node, figures.loop_lag)
    lease = LeaseService(node)
    contenders = Contenders(node)
    return [
        Service(etcd["KV"], KVService(node, config.limits), (rpc_pb2,)),
        Service(etcd["Maintenance"], MaintenanceService(node), (rpc_pb2,)),
        Service(etcd["Cluster"], ClusterService(node), (rpc_pb2,)),
        Service(etcd["Auth"], AuthService(node), (rpc_pb2,)),
        Service(etcd["Watch"], watch, (rpc_pb2,), close=watch.close),
        Service(etcd["Lease"], lease, (rpc_pb2,), close=lease.close),
        Service(v3lock_pb2.DESCRIPTOR.services_by_name["Lock"], LockService(node, contenders), (v3lock_pb2,)),
        Service(
            v3election_pb2.DESCRIPTOR.services_by_name["Election"],
            ElectionService(node, contenders),
            (v3election_pb2,),
        ),
        Service(
            admin_pb2.DESCRIPTOR.services_by_name["Admin"], AdminService(figures, lifecycle), (admin_pb2,)
        ),
        Service(
            health_pb2.DESCRIPTOR.services_by_name["Health"], health, (health_pb2,), close=health.end_streams
        ),
    ]
