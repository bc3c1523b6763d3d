"""etcdserverpb.Watch: the receive and send loops around a WatchSession.

The protocol (ids, catch-up, filters, slow consumers) lives in engine/watch.py;
this file only moves requests in and responses out. The send loop is the one
place that awaits the client: while gRPC flow control holds it, live events
pile up in the session's bounded per-watcher buffers, never here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from metastore_core import errors
from metastore_core.engine.watch import WatchHub, WatchLimits
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server import rpc
from metastore_core.server.node import Node

TAKE = 256  # responses taken from the session per send-loop turn


class WatchService:
    """The Watch stream; one WatchSession per call, all sharing the node's hub."""

    def __init__(self, node: Node, limits: WatchLimits | None = None) -> None:
        self.node = node
        self.hub = WatchHub(node.store, node.header, limits)
        self.progress_interval = node.config.watch_progress_notify_interval_s
        self._closing = False
        self._streams: set[asyncio.Event] = set()
        self._ended = asyncio.Event()
        self._ended.set()
        node.committer.listeners.append(self.hub.on_events)

    async def Watch(
        self, requests: AsyncIterator[Any], ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchResponse]:
        if self._closing:
            raise errors.Unavailable()
        session = self.hub.open()
        wake = asyncio.Event()
        session.wake = wake.set
        control: list[pb.WatchResponse] = []
        self._streams.add(wake)
        self._ended.clear()

        async def receive() -> None:
            try:
                async for req in rpc.checked_stream(requests):
                    control.extend(session.receive(req))
                    wake.set()
            finally:
                wake.set()

        reader = asyncio.get_running_loop().create_task(receive())
        try:
            while True:
                if self._closing:
                    # Like a stopping etcd: UNAVAILABLE, so clientv3 & co. resume the watch
                    # (from their last revision + 1) on a restarted or other server, where
                    # an OK end would close the client's watch channel for good.
                    raise errors.Unavailable()
                if control:
                    out = control[:]
                    control.clear()
                else:
                    out = session.take(TAKE)
                if out:
                    for resp in out:
                        yield resp
                    continue
                if session.has_output:
                    await asyncio.sleep(0)  # catch-up found nothing yet: let others run
                    continue
                if reader.done() and not reader.cancelled() and reader.exception() is not None:
                    reader.result()  # a malformed request ends the call with its status
                # After the client half-closes, etcd keeps the call open and its watchers
                # delivering until the client cancels; so do we.
                wake.clear()
                await wake.wait()
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            self.hub.close(session)
            self._streams.discard(wake)
            if not self._streams:
                self._ended.set()

    async def progress_loop(self) -> None:
        """Periodic progress notifications (etcd: every 10 minutes by default)."""
        while True:
            await asyncio.sleep(max(self.progress_interval, 0.05))
            self.hub.progress_tick()

    async def close(self, timeout: float = 2.0) -> None:
        """Shutdown: end every open Watch stream (UNAVAILABLE) before the server stops."""
        self._closing = True
        for wake in list(self._streams):
            wake.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ended.wait(), timeout)
