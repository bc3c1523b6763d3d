"""The Lease adapter in-process: a stalled event loop does not expire leases early."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc

from metastore_core.config import Config
from metastore_core.member.figures import MemberFigures
from metastore_core.member.guard import WriteGuard
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.server.app import Server
from metastore_core.storage import layout as L

from conftest import free_port


def _config() -> Config:
    return Config(
        backend="memory",
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
    )


def _figures(server: Server) -> MemberFigures:
    assert server.node is not None
    return server.node.figures


def _checkpoint(server: Server, lease_id: int) -> int:
    """The remaining TTL a restart would give lease_id, as stored (0: none, the full TTL)."""
    assert server.storage is not None
    record = server.storage.get(L.lease_key(lease_id))
    assert record is not None
    return L.parse_lease_value(record)[1]


def _keep_alive_from_thread(endpoint: str, lease_id: int, at: float, out: list[int]) -> threading.Thread:
    """Send one keep-alive at monotonic time `at` from another thread (its own gRPC client)."""

    def run() -> None:
        done = threading.Event()

        def requests() -> Iterator[pb.LeaseKeepAliveRequest]:
            time.sleep(max(0.0, at - time.monotonic()))
            yield pb.LeaseKeepAliveRequest(ID=lease_id)
            done.wait(10)

        with grpc.insecure_channel(endpoint) as ch:
            call = rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive(requests())
            out.append(next(call).TTL)
            done.set()
            call.cancel()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


async def test_keep_alive_queued_during_a_stall_wins_over_expiry() -> None:
    """The loop is blocked across the deadline; the keep-alive sent before it must renew."""
    server = Server(_config())
    await server.start()
    endpoint = f"127.0.0.1:{server.ports[0]}"
    svc = _figures(server)
    try:
        async with grpc.aio.insecure_channel(endpoint) as ch:
            kv, leases = rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.LeaseStub(ch)
            lease = (await leases.LeaseGrant(pb.LeaseGrantRequest(TTL=2))).ID
            t_grant = time.monotonic()
            await kv.Put(pb.PutRequest(key=b"held", value=b"v", lease=lease))
            got: list[int] = []
            sender = _keep_alive_from_thread(endpoint, lease, t_grant + 1.5, got)
            await asyncio.sleep(1.0)
            time.sleep(2.0)  # the event loop stalls from ~1 s to ~3 s; the deadline (2 s) passes
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.02)
            sender.join(5)
            assert got == [2], "the keep-alive sent before the deadline must renew the lease"
            assert svc.lease_expiry_stalls_total >= 1
            assert svc.lease_expired_total == 0
            resp = await kv.Range(pb.RangeRequest(key=b"held"))
            assert [x.key for x in resp.kvs] == [b"held"]
    finally:
        await server.stop()


async def test_expiry_is_not_early_and_checkpoints_are_taken() -> None:
    cfg = _config()
    cfg.lease_checkpoint_interval_s = 0.2
    server = Server(cfg)
    await server.start()
    endpoint = f"127.0.0.1:{server.ports[0]}"
    svc = _figures(server)
    node = server.node
    assert node is not None
    try:
        async with grpc.aio.insecure_channel(endpoint) as ch:
            leases = rpc_pb2_grpc.LeaseStub(ch)
            ids = [(await leases.LeaseGrant(pb.LeaseGrantRequest(TTL=2 + i % 2))).ID for i in range(20)]
            long = (await leases.LeaseGrant(pb.LeaseGrantRequest(TTL=60))).ID
            await asyncio.sleep(0.8)
            assert _checkpoint(server, long) in (59, 60)  # the periodic checkpoint ran
            deadline = time.monotonic() + 6
            while any(node.lease_exists(i) for i in ids) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not any(node.lease_exists(i) for i in ids)
            assert svc.lease_expired_total == 20
            assert min(svc.lease_lateness()) >= 0.0
            # A keep-alive of the checkpointed lease clears its checkpoint before answering.
            call = leases.LeaseKeepAlive()
            await call.write(pb.LeaseKeepAliveRequest(ID=long))
            assert (await call.read()).TTL == 60
            assert _checkpoint(server, long) == 0
            await call.done_writing()
    finally:
        await server.stop()


async def test_a_keep_alive_never_answers_ttl_for_a_lease_being_revoked() -> None:
    """If the write path awaits before applying a revocation, a keep-alive meanwhile gets TTL 0."""
    server = Server(_config())
    await server.start()
    endpoint = f"127.0.0.1:{server.ports[0]}"
    node = server.node
    assert node is not None
    real_check = WriteGuard.check
    entered = asyncio.Event()

    async def slow_check(guard: WriteGuard, command: object) -> None:
        if isinstance(command, pb.LeaseRevokeRequest):
            entered.set()
            await asyncio.sleep(0.3)  # e.g. a quota check that has to flush first
        await real_check(guard, command)

    WriteGuard.check = slow_check  # type: ignore[method-assign]
    try:
        async with grpc.aio.insecure_channel(endpoint) as ch:
            leases = rpc_pb2_grpc.LeaseStub(ch)
            lease = (await leases.LeaseGrant(pb.LeaseGrantRequest(TTL=2))).ID
            await asyncio.wait_for(entered.wait(), 5)  # expiry decided, revocation not applied yet
            call = leases.LeaseKeepAlive()
            await call.write(pb.LeaseKeepAliveRequest(ID=lease))
            assert (await call.read()).TTL == 0
            await call.done_writing()
            await asyncio.sleep(0.5)
            assert not node.lease_exists(lease)
    finally:
        WriteGuard.check = real_check  # type: ignore[method-assign]
        await server.stop()
