"""Resource limits: concurrent unary requests, request timeout, memory, connections.

Unary calls and streams are counted apart: an open Watch or KeepAlive stream
lives for hours and must never take a slot a unary call or a health check
needs (grpc.aio's own `maximum_concurrent_rpcs` counts streams, so it is not
used). Over a limit the call is refused at once with RESOURCE_EXHAUSTED and a
message naming the limit; nothing queues behind it. Methods whose policy says
so (health, admin) are not counted. Memory at its cap refuses writes that add
data: the monitor here measures, the member's write guard refuses.

Connections: grpc-core caps them (--max-connections plus a reserve, listeners.py)
and times handshakes out; a connection first seen past --max-connections has its
calls refused here (server/connections.py), so health and admin keep the reserve.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import Any

from metastore_core import errors
from metastore_core.server.connections import Connections
from metastore_core.server.methods import Behaviour, Call, Layer, MethodInfo

log = logging.getLogger("metastore.limits")


class Limiter:
    """Live request and stream counts, and the gates that refuse calls."""

    def __init__(
        self, max_requests: int, request_timeout_s: float, connections: Connections | None = None
    ) -> None:
        self.max_requests = max_requests
        self.connections = connections  # admission past --max-connections, when given
        self.request_timeout_s = request_timeout_s
        self.requests = 0
        self.streams = 0
        self.peak_requests = 0
        self.refused = 0
        self.draining = False  # shutdown began: every new call is refused
        self.last_refused_draining = 0.0  # monotonic time a call was last refused for draining
        # Request timeout: one sweeper cancels overdue calls, instead of a timer per call
        # (asyncio.timeout costs several us per call; a dict entry costs a fraction of one).
        self._inflight: dict[asyncio.Task[Any] | None, float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._draining_since = 0.0

    def sweep(self, now: float) -> int:
        """Cancel every unary call older than the request timeout; returns how many."""
        limit = now - self.request_timeout_s
        n = 0
        for task, started in list(self._inflight.items()):
            if started <= limit and task is not None and task not in self._expired and not task.done():
                self._expired.add(task)
                task.cancel()
                n += 1
        return n

    def refuse_draining(self) -> errors.Stopping:
        """The refusal of a call that arrives during shutdown (UNAVAILABLE: clients retry)."""
        self.last_refused_draining = time.monotonic()
        return errors.Stopping()

    async def quiet(self, quiet_s: float, until: float) -> None:
        """Return once no call was refused for draining in the last quiet_s (or at until).

        Calls that reached grpc-core but not yet a handler are cancelled (CANCELLED, which
        etcd clients do not retry) by the grpc server's stop; while the server still runs,
        each one reaches the limits layer and is refused with UNAVAILABLE instead."""
        while True:
            now = time.monotonic()
            if now >= until or now - max(self.last_refused_draining, self._draining_since) >= quiet_s:
                return
            await asyncio.sleep(min(quiet_s / 2, max(until - now, 0.0)))

    def start_draining(self) -> None:
        """Shutdown began: refuse every new call from now on."""
        self.draining = True
        self._draining_since = time.monotonic()

    async def run_timeouts(self) -> None:
        """The sweeper: checks often enough to hold the timeout to about a tenth of itself."""
        interval = min(1.0, max(self.request_timeout_s / 10, 0.01))
        while True:
            await asyncio.sleep(interval)
            self.sweep(time.monotonic())

    # ------------------------------------------------------------------ the layer
    def layer(self) -> Layer:
        def wrap(info: MethodInfo, fn: Behaviour) -> Behaviour:
            if not info.policy.limits:
                return fn
            inflight = self._inflight
            current_task = asyncio.current_task
            monotonic = time.monotonic
            conns = self.connections
            if not info.server_streaming and not info.client_streaming:

                async def unary(request: Any, call: Call) -> Any:
                    if self.requests >= self.max_requests:
                        self.refused += 1
                        raise errors.TooManyRequests(self.max_requests)
                    if self.draining:
                        raise self.refuse_draining()
                    if conns is not None:
                        conns.admit(call.peer())
                    self.requests += 1
                    if self.requests > self.peak_requests:
                        self.peak_requests = self.requests
                    task = current_task()
                    inflight[task] = monotonic()
                    try:
                        return await fn(request, call)
                    except asyncio.CancelledError:
                        if task not in self._expired:
                            raise  # the client went away
                        self._expired.discard(task)
                        if task is not None:
                            task.uncancel()
                        raise errors.RequestTimeout() from None
                    finally:
                        self.requests -= 1
                        del inflight[task]

                return unary

            if not info.server_streaming:
                # client-streaming: none in etcd's API; counted as a stream, no timeout
                async def client_stream(request: Any, call: Call) -> Any:
                    if self.draining:
                        raise self.refuse_draining()
                    if conns is not None:
                        conns.admit(call.peer())
                    self.streams += 1
                    try:
                        return await fn(request, call)
                    finally:
                        self.streams -= 1

                return client_stream

            async def streaming(request: Any, call: Call) -> Any:
                if self.draining:
                    raise self.refuse_draining()
                if conns is not None:
                    conns.admit(call.peer())
                self.streams += 1
                try:
                    async with aclosing(fn(request, call)) as items:
                        async for item in items:
                            yield item
                finally:
                    self.streams -= 1

            return streaming

        return wrap


# ---------------------------------------------------------------------- memory
class MemoryLevel(enum.Enum):
    OK = "ok"
    COLLECT = "collect"  # above 80 % of the cap: collect garbage
    WARN = "warn"  # above 90 %: warn
    FULL = "full"  # at the cap: refuse writes


def memory_level(used: int, cap: int) -> MemoryLevel:
    """What the monitor should do at this usage (pure)."""
    if cap <= 0:
        return MemoryLevel.OK
    if used >= cap:
        return MemoryLevel.FULL
    if used > cap * 0.9:
        return MemoryLevel.WARN
    if used > cap * 0.8:
        return MemoryLevel.COLLECT
    return MemoryLevel.OK


_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class MemoryMonitor:
    """Every interval: collect above 80 %, warn above 90 %; at the cap tell `on_full` (writes stop)."""

    def __init__(
        self,
        max_memory_bytes: int,
        interval_s: float,
        on_full: Callable[[bool, int], None] | None = None,
        read: Callable[[], int] = rss_bytes,
    ) -> None:
        self.max_memory_bytes = max_memory_bytes
        self.interval_s = interval_s
        self.on_full = on_full
        self.read = read
        self.used = 0
        self.level = MemoryLevel.OK
        self.full = False

    def check(self) -> MemoryLevel:
        cap = self.max_memory_bytes
        used = self.read()
        level = memory_level(used, cap)
        if level in (MemoryLevel.COLLECT, MemoryLevel.WARN, MemoryLevel.FULL):
            gc.collect()
            used = self.read()
            level = memory_level(used, cap)
        self.used = used
        pct = 100.0 * used / cap if cap else 0.0
        full = level is MemoryLevel.FULL
        if full and not self.full:
            log.error("memory %.1f%% of the %d-byte cap: refusing writes", pct, cap)
        elif not full and self.full:
            log.warning("memory back to %.1f%% of the cap: accepting writes again", pct)
        elif level is MemoryLevel.WARN:
            log.warning("memory at %.1f%% of the %d-byte cap", pct, cap)
        if full != self.full and self.on_full is not None:
            self.on_full(full, cap)
        self.full = full
        self.level = level
        return level

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.interval_s)


# ---------------------------------------------------------------------- connections
def count_connections(ports: Sequence[int]) -> int:
    """Established TCP connections to our listening ports (IPv4 and IPv6), from /proc."""
    want = {f"{p:04X}" for p in ports}
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split(None, 4)
                    # local address "ADDR:PORT", state "01" is ESTABLISHED
                    if len(parts) > 3 and parts[3] == "01" and parts[1].rsplit(":", 1)[1] in want:
                        n += 1
        except OSError:
            continue
    return n
