"""Health checkers in-process: a storage I/O error flips the daemon to NOT_SERVING and back."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metastore_core.config import Config
from metastore_core.server.app import Server
from metastore_core.storage.memory import MemoryStorage

from conftest import free_port


def _config() -> Config:
    return Config(
        backend="memory",
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
        health_check_interval_s=0.05,
    )


async def _status(endpoint: str) -> int:
    async with grpc.aio.insecure_channel(endpoint) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(resp.status)


async def test_storage_io_error_flips_not_serving_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(_config())
    await server.start()
    endpoint = f"127.0.0.1:{server.ports[0]}"
    try:
        assert await _status(endpoint) == health_pb2.HealthCheckResponse.SERVING
        storage = server.storage
        assert isinstance(storage, MemoryStorage)
        # A Watch subscriber sees every change, however quickly the next probe recovers
        # (a Check after the flip could already find it SERVING again).
        async with grpc.aio.insecure_channel(endpoint) as ch:
            stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=10)
            seen = [(await stream.read()).status]
            storage.fail_next_write = OSError("IO error: injected EIO")
            server.monitor.poke()
            while len(seen) < 3:
                seen.append((await stream.read()).status)
            stream.cancel()
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        assert seen == [serving, not_serving, serving]
        assert server.monitor.serving
        failing = [r.getMessage() for r in caplog.records if "failing" in r.getMessage()]
        assert any(m.startswith("health: storage failing") and "injected EIO" in m for m in failing), failing
    finally:
        await server.stop()


async def test_dead_lease_loop_flips_not_serving() -> None:
    server = Server(_config())
    await server.start()
    endpoint = f"127.0.0.1:{server.ports[0]}"
    try:
        lease_tasks = [s for s in server.recovery.tasks.values() if s.name.startswith("lease-")]
        assert lease_tasks, "the lease service runs its loops under supervision"
        for s in lease_tasks:
            s.task.cancel()
        await asyncio.sleep(0.01)
        server.monitor.poke()
        await asyncio.sleep(0.2)
        assert await _status(endpoint) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert any(r.startswith("lease:") for r in server.monitor.reasons())
    finally:
        await server.stop()
