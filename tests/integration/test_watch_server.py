"""The Watch adapter in-process: disconnects free watchers, shutdown ends streams cleanly."""

from __future__ import annotations

import asyncio
import time

import grpc

from metastore_core.config import Config
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.server.app import Server

from conftest import free_port


def _config() -> Config:
    return Config(
        backend="memory",
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
    )


async def _open(ch: grpc.aio.Channel, n: int) -> grpc.aio.StreamStreamCall:
    call = rpc_pb2_grpc.WatchStub(ch).Watch()
    for i in range(n):
        key = b"k%d" % i
        await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=key + b"0")))
        assert (await call.read()).created
    return call


async def test_client_disconnect_frees_every_watcher_and_task() -> None:
    server = Server(_config())
    await server.start()
    endpoint = f"127.0.0.1:{server.ports[0]}"
    assert server.node is not None
    figures = server.node.figures
    try:
        await asyncio.sleep(0.1)
        baseline_tasks = len(asyncio.all_tasks())
        async with grpc.aio.insecure_channel(endpoint) as ch:
            calls = [await _open(ch, 10) for _ in range(10)]
            assert figures.watchers == 100 and figures.watch_streams == 10
            await rpc_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=b"k1", value=b"v"))
            for c in calls:
                assert (await c.read()).events
        # The channel is closed: the server sees the streams cancelled.
        deadline = time.monotonic() + 5
        while (figures.watchers or figures.watch_streams) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert figures.watchers == 0 and figures.watch_streams == 0
        while len(asyncio.all_tasks()) > baseline_tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(asyncio.all_tasks()) <= baseline_tasks
    finally:
        await server.stop()


async def test_shutdown_ends_open_watch_streams_without_waiting_the_grace() -> None:
    server = Server(_config())
    await server.start()
    endpoint = f"127.0.0.1:{server.ports[0]}"
    async with grpc.aio.insecure_channel(endpoint) as ch:
        call = await _open(ch, 3)
        t0 = time.monotonic()
        await server.stop(grace=20)
        assert time.monotonic() - t0 < 5
        # As when etcd stops: UNAVAILABLE, which clients treat as "reconnect and resume".
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
        assert await call.details() == "etcdserver: server stopped"
