"""metastore.admin.v1.Admin: the operator RPCs behind `metastore stats` and `metastore stop`."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import grpc

from metastore_core import __version__
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.metastore.admin.v1 import admin_pb2 as apb
from metastore_core.server.limits import count_connections
from metastore_core.server.node import ETCD_API_VERSION

if TYPE_CHECKING:
    from metastore_core.server.app import Server


def watch_figures(server: Server) -> tuple[int, int]:
    """(watchers, watch streams): from the Watch servicer if it reports them, else stream counts."""
    streams = server.limiter.stream_counts.get("/etcdserverpb.Watch/Watch", 0)
    watchers = streams
    for svc in server.services:
        stats = getattr(svc.servicer, "stats", None)
        if svc.descriptor.full_name == "etcdserverpb.Watch" and callable(stats):
            try:
                figures: dict[str, Any] = stats()
                watchers = int(figures.get("watchers", watchers))
                streams = int(figures.get("streams", streams))
            except Exception:
                pass
    return watchers, streams


class AdminService:
    """GetStats and Shutdown."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def GetStats(self, r: apb.GetStatsRequest, ctx: grpc.aio.ServicerContext) -> apb.GetStatsResponse:
        s = self.server
        node = s.node
        assert node is not None
        store = node.store
        connections = await asyncio.to_thread(count_connections, s.ports)
        key_count = store.key_count()
        watchers, watch_streams = watch_figures(s)
        resp = apb.GetStatsResponse(
            version=__version__,
            etcd_api_version=ETCD_API_VERSION,
            member_id=store.ids.member_id,
            cluster_id=store.ids.cluster_id,
            uptime_seconds=time.time() - node.started,
            connections_current=connections,
            connections_max=s.config.max_connections,
            requests_current=s.limiter.requests,
            requests_max=s.limiter.max_requests,
            memory_used_bytes=s.memory.read(),
            memory_max_bytes=s.limiter.max_memory_bytes,
            active_streams=s.limiter.streams,
            panic_count=s.recovery.panic_count,
            validation_error_count=s.recovery.validation_error_count,
            revision=store.committed_rev,
            compact_revision=store.compact_rev,
            key_count=key_count,
            db_size_bytes=node.storage.size(),
            backend=node.storage.name,
            alarms=[pb.AlarmType.Name(a) for _, a in sorted(node.alarms.active)],  # type: ignore[arg-type]
            watchers=watchers,
            watch_streams=watch_streams,
            leases=len(node.lessor.leases),
            requests_refused=s.limiter.refused,
            requests_peak=s.limiter.peak_requests,
            serving=s.monitor.serving,
            health_reasons=s.monitor.reasons(),
            pid=os.getpid(),
        )
        report = s.lifecycle.report or s.lifecycle.previous
        if report is not None:
            resp.last_shutdown_reason = report.reason
            for p in report.phases:
                resp.last_shutdown.add(phase=p.phase, seconds=p.seconds, error=p.error)
        return resp

    async def Shutdown(self, r: apb.ShutdownRequest, ctx: grpc.aio.ServicerContext) -> apb.ShutdownResponse:
        reason = r.reason or "admin Shutdown RPC"
        accepted = self.server.lifecycle.request(f"admin: {reason}")
        return apb.ShutdownResponse(accepted=accepted, pid=os.getpid())
