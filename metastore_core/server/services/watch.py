"""etcdserverpb.Watch: the receive and send loops around a WatchSession.

The protocol (ids, catch-up, filters, slow consumers) lives in engine/watch.py;
this file only moves requests in and responses out. The send loop is the one
place that awaits the client: while flow control holds it, live events pile up
in the session's bounded per-watcher buffers, never here.

Pacing: a write to a key 200 streams watch is 200 gRPC messages, ~40 us each in
Python. When the event loop runs late (server/looplag.py, fed also by how late
each woken stream gets to run) and many streams have output at once, a woken
stream waits about that long before it takes its output, so the revisions that
land meanwhile go out merged (engine/watch.py rule 4): under load each stream
sends fewer, bigger messages and the loop stays free for every other client. An
idle loop, or a few streams, add no delay.
(Tried and dropped: letting only a few streams send per loop turn kept the
loop thread spinning, and grpc's poller thread then waited for the GIL: health
checks got slower although the loop was never late.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from metastore_core import errors
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.looplag import LoopLag
from metastore_core.server.methods import Call
from metastore_core.server.status import GO_NAMES, code_of

TAKE = 256  # responses taken from the session per send-loop turn
PACE_FROM_S = 0.005  # a loop later than this makes streams gather events before sending...
PACE_STREAMS = 16  # ... when more streams than this have something to send
PACE_MAX_S = 0.2  # ... for at most this long


class WatchService:
    """The Watch stream; one WatchSession per call, all on the node's hub."""

    def __init__(self, node: Node, lag: LoopLag | None = None) -> None:
        self.node = node
        self.lag = lag or LoopLag()  # how late the event loop runs (server/looplag.py)
        self._closing = False
        self._awake = 0  # streams the hub woke that have not sent everything yet
        self._streams: set[asyncio.Event] = set()
        self._ended = asyncio.Event()
        self._ended.set()

    async def Watch(
        self, requests: AsyncIterator[pb.WatchRequest], call: Call
    ) -> AsyncIterator[pb.WatchResponse]:
        if self._closing:
            raise errors.Stopping()
        session = self.node.watch_open()
        wake = asyncio.Event()
        woken = [0.0]  # when the hub last woke this stream
        clock = time.monotonic

        busy = [False]  # woken by the hub and not yet back to waiting

        def on_wake() -> None:
            if not wake.is_set():
                woken[0] = clock()
                wake.set()
                if not busy[0]:
                    busy[0] = True
                    self._awake += 1

        session.wake = on_wake
        control: list[pb.WatchResponse] = []
        self._streams.add(wake)
        self._ended.clear()

        async def receive() -> None:
            try:
                async for req in requests:
                    refused = self._refused(req, call)
                    control.extend(session.receive(req) if refused is None else [refused])
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
                    raise errors.Stopping()
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
                if busy[0]:
                    busy[0] = False
                    self._awake -= 1
                wake.clear()
                await wake.wait()
                if woken[0]:  # woken by the hub: how long the loop took to get here says how busy it is
                    self.lag.observe(clock() - woken[0])
                    woken[0] = 0.0
                lag = self.lag.lag
                if lag > PACE_FROM_S and self._awake > PACE_STREAMS:
                    await asyncio.sleep(min(lag, PACE_MAX_S))
        finally:
            if busy[0]:
                self._awake -= 1
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            self.node.watch_close(session)
            self._streams.discard(wake)
            if not self._streams:
                self._ended.set()

    def _refused(self, req: pb.WatchRequest, call: Call) -> pb.WatchResponse | None:
        """A create the caller may not read: etcd's canceled reply, in request order."""
        if req.WhichOneof("request_union") != "create_request":
            return None
        c = req.create_request
        try:
            self.node.check_watch(call.auth, c.key, c.range_end)
        except errors.MetastoreError as exc:
            resp = pb.WatchResponse(
                watch_id=-1,
                created=True,
                canceled=True,
                cancel_reason=f"rpc error: code = {GO_NAMES[code_of(exc)]} desc = {exc.text}",
            )
            self.node.header(resp.header)
            return resp
        return None

    async def close(self, timeout: float = 2.0) -> None:
        """Shutdown: end every open Watch stream (UNAVAILABLE) before the server stops."""
        self._closing = True
        for wake in list(self._streams):
            wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancel
                await self._ended.wait()
