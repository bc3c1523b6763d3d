"""Resource limits: concurrent unary requests, request timeout, memory, connections.

Unary calls and streams are counted apart: an open Watch or KeepAlive stream
lives for hours and must never take a slot a unary call or a health check
needs (grpc.aio's own `maximum_concurrent_rpcs` counts streams, so it is not
used). Over a limit the call is refused at once with RESOURCE_EXHAUSTED and a
message naming the limit; nothing queues behind it.

Connections and the handshake timeout are enforced by grpc-core (server
options in app.py); this module only counts them, from /proc.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from metastore_core.server.rpc import Behaviour, Layer, MethodInfo

log = logging.getLogger("metastore.limits")

GiB = 1 << 30
MiB = 1 << 20

# Config field values of each preset (spec §4.7); explicit flags override them.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "max_connections": 10_000,
        "max_concurrent_requests": 5_000,
        "max_memory_bytes": 2 * GiB,
        "max_recv_bytes": 4 * MiB,
        "request_timeout_s": 30.0,
        "connection_timeout_s": 10.0,
        "shutdown_timeout_s": 30.0,
    },
    "high-load": {
        "max_connections": 50_000,
        "max_concurrent_requests": 20_000,
        "max_memory_bytes": 8 * GiB,
        "max_recv_bytes": 8 * MiB,
        "request_timeout_s": 60.0,
        "connection_timeout_s": 30.0,
        "shutdown_timeout_s": 60.0,
    },
    "safe": {
        "max_connections": 5_000,
        "max_concurrent_requests": 2_000,
        "max_memory_bytes": 1 * GiB,
        "max_recv_bytes": 1 * MiB,
        "request_timeout_s": 10.0,
        "connection_timeout_s": 5.0,
        "shutdown_timeout_s": 30.0,
        "enable_crc": True,
    },
}

# Methods refused while memory is at its cap (reads, deletes and compaction keep working,
# as etcd does under NOSPACE), and while the store is corrupt.
WRITE_METHODS = frozenset(
    {
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.Lease/LeaseGrant",
        "/v3lockpb.Lock/Lock",
        "/v3electionpb.Election/Campaign",
        "/v3electionpb.Election/Proclaim",
    }
)
# Operator services answer even when the daemon is saturated.
EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health", "metastore.admin.v1.Admin"})

TIMEOUT_MESSAGE = "etcdserver: request timed out"
STOPPING_MESSAGE = "etcdserver: server stopped"
CORRUPT_MESSAGE = "etcdserver: corrupt cluster"


class Limiter:
    """Live request and stream counts, and the gates that refuse calls."""

    def __init__(self, max_requests: int, request_timeout_s: float, max_memory_bytes: int) -> None:
        self.max_requests = max_requests
        self.request_timeout_s = request_timeout_s
        self.max_memory_bytes = max_memory_bytes
        self.requests = 0
        self.streams = 0
        self.peak_requests = 0
        self.refused = 0
        self.stream_counts: dict[str, int] = {}
        self._draining = False
        self._memory_full = False
        self._corrupt = False
        self._gate = False  # any of the three above: the per-call fast path tests only this
        # Request timeout: one sweeper cancels overdue calls, instead of a timer per call
        # (asyncio.timeout costs several us per call; a dict entry costs a fraction of one).
        self._inflight: dict[asyncio.Task[Any] | None, float] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ gates
    def _regate(self) -> None:
        self._gate = self._draining or self._memory_full or self._corrupt

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        self._regate()

    @property
    def memory_full(self) -> bool:
        return self._memory_full

    @memory_full.setter
    def memory_full(self, value: bool) -> None:
        self._memory_full = value
        self._regate()

    @property
    def corrupt(self) -> bool:
        return self._corrupt

    @corrupt.setter
    def corrupt(self, value: bool) -> None:
        self._corrupt = value
        self._regate()

    def refusal(self, info_full: str) -> tuple[grpc.StatusCode, str] | None:
        """Why a call may not start now (slow path, only when a gate is up)."""
        if self._draining:
            return grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE
        if info_full in WRITE_METHODS:
            if self._corrupt:
                return grpc.StatusCode.DATA_LOSS, CORRUPT_MESSAGE
            if self._memory_full:
                return (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"etcdserver: memory limit reached: {self.max_memory_bytes} bytes (--max-memory); "
                    "writes are refused until memory falls",
                )
        return None

    def too_many(self) -> str:
        self.refused += 1
        return (
            f"etcdserver: too many requests: limit of {self.max_requests} concurrent requests "
            "reached (--max-concurrent-requests)"
        )

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

    async def run_timeouts(self) -> None:
        """The sweeper: checks often enough to hold the timeout to about a tenth of itself."""
        interval = min(1.0, max(self.request_timeout_s / 10, 0.01))
        while True:
            await asyncio.sleep(interval)
            self.sweep(time.monotonic())

    # ------------------------------------------------------------------ the layer
    def layer(self) -> Layer:
        def wrap(info: MethodInfo, fn: Behaviour) -> Behaviour:
            if info.service in EXEMPT_SERVICES:
                return fn
            full = info.full
            exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
            inflight = self._inflight
            current_task = asyncio.current_task
            monotonic = time.monotonic
            if not info.server_streaming and not info.client_streaming:

                async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    if self.requests >= self.max_requests:
                        await context.abort(exhausted, self.too_many())
                    if self._gate:
                        why = self.refusal(full)
                        if why is not None:
                            await context.abort(*why)
                    self.requests += 1
                    if self.requests > self.peak_requests:
                        self.peak_requests = self.requests
                    task = current_task()
                    inflight[task] = monotonic()
                    try:
                        return await fn(request, context)
                    except asyncio.CancelledError:
                        if task not in self._expired:
                            raise  # the client went away
                        self._expired.discard(task)
                        if task is not None:
                            task.uncancel()
                        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, TIMEOUT_MESSAGE)
                    finally:
                        self.requests -= 1
                        del inflight[task]

                return unary

            if not info.server_streaming:
                # client-streaming: none in etcd's API; counted as a stream, no timeout
                async def client_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    if self._gate:
                        why = self.refusal(full)
                        if why is not None:
                            await context.abort(*why)
                    self.streams += 1
                    try:
                        return await fn(request, context)
                    finally:
                        self.streams -= 1

                return client_stream

            counts = self.stream_counts
            counts.setdefault(full, 0)

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if self._gate:
                    why = self.refusal(full)
                    if why is not None:
                        await context.abort(*why)
                self.streams += 1
                counts[full] += 1
                try:
                    async for item in fn(request, context):
                        yield item
                finally:
                    self.streams -= 1
                    counts[full] -= 1

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
    """Every interval: collect above 80 %, warn above 90 %, refuse writes at the cap."""

    def __init__(self, limiter: Limiter, interval_s: float, read: Callable[[], int] = rss_bytes) -> None:
        self.limiter = limiter
        self.interval_s = interval_s
        self.read = read
        self.used = 0
        self.level = MemoryLevel.OK

    def check(self) -> MemoryLevel:
        cap = self.limiter.max_memory_bytes
        used = self.read()
        level = memory_level(used, cap)
        if level in (MemoryLevel.COLLECT, MemoryLevel.WARN, MemoryLevel.FULL):
            gc.collect()
            used = self.read()
            level = memory_level(used, cap)
        self.used = used
        pct = 100.0 * used / cap if cap else 0.0
        full = level is MemoryLevel.FULL
        if full and not self.limiter.memory_full:
            log.error("memory %.1f%% of the %d-byte cap: refusing writes", pct, cap)
        elif not full and self.limiter.memory_full:
            log.warning("memory back to %.1f%% of the cap: accepting writes again", pct)
        elif level is MemoryLevel.WARN:
            log.warning("memory at %.1f%% of the %d-byte cap", pct, cap)
        self.limiter.memory_full = full
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
