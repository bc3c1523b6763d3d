"""grpc.health.v1.Health (Check, Watch, List) and the checkers behind it.

Exactly the gRPC health-checking protocol: "" is the whole server; Check on
an unknown name is NOT_FOUND; Watch on an unknown name sends SERVICE_UNKNOWN
and stays open, then sends the status once the name is known; List returns
at most 100 names. grpcio's own aio servicer lacks List and cannot end its
Watch streams at shutdown, so this one is ours.

The monitor runs every checker (storage: a real write and read through the
storage engine on the writer thread; lease: the expiry loop is alive) on an
interval and whenever something signals a change, and sets "" and every
served service name from the result. Shutdown sets NOT_SERVING at once,
pushes it to every watcher, ignores later updates, and then ends the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from metastore_core.server.node import Node
from metastore_core.server.recovery import Recovery
from metastore_core.storage import layout as L

log = logging.getLogger("metastore.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
OVERALL = ""
MAX_LIST = 100
_END = -1


class HealthService:
    """The Health servicer: statuses by name, and the Watch subscribers of each."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {OVERALL: SERVING}
        self._watchers: dict[str, set[asyncio.Queue[int]]] = {}
        self.shutting_down = False

    def set(self, name: str, status: int) -> None:
        """Set a name's status; ignored once shutdown has begun."""
        if self.shutting_down:
            return
        self._set(name, status)

    def _set(self, name: str, status: int) -> None:
        if self.statuses.get(name) == status:
            return
        self.statuses[name] = status
        for q in self._watchers.get(name, ()):
            q.put_nowait(status)

    def enter_shutdown(self) -> None:
        """Every name NOT_SERVING now, pushed to watchers; later set() calls are ignored."""
        self.shutting_down = True
        for name in list(self.statuses):
            self._set(name, NOT_SERVING)

    def close(self) -> None:
        """End every Watch stream (after they have been told NOT_SERVING)."""
        for queues in self._watchers.values():
            for q in queues:
                q.put_nowait(_END)

    @property
    def watcher_count(self) -> int:
        return sum(len(q) for q in self._watchers.values())

    # ------------------------------------------------------------------ RPCs
    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self.statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        name = request.service
        q: asyncio.Queue[int] = asyncio.Queue()
        self._watchers.setdefault(name, set()).add(q)
        try:
            last = self.statuses.get(name, SERVICE_UNKNOWN)
            yield health_pb2.HealthCheckResponse(status=last)
            # Shutdown may have begun while that first message was being sent: then its
            # NOT_SERVING waits in q and must still go out. Only a stream that began during
            # shutdown (its one message already said so, and nothing is queued) ends here.
            if self.shutting_down and q.empty():
                return
            while True:
                status = await q.get()
                if status == _END:
                    return
                if status != last:
                    last = status
                    yield health_pb2.HealthCheckResponse(status=status)
        finally:
            watchers = self._watchers.get(name)
            if watchers is not None:
                watchers.discard(q)
                if not watchers:
                    del self._watchers[name]

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        if len(self.statuses) > MAX_LIST:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_LIST} services to list")
        resp = health_pb2.HealthListResponse()
        for name, status in self.statuses.items():
            resp.statuses[name].status = status
        return resp


# ---------------------------------------------------------------------- checkers
@dataclass
class CheckResult:
    name: str
    ok: bool
    reason: str = ""


Checker = Callable[[], Awaitable[CheckResult]]


def storage_checker(node: Node, timeout_s: float = 5.0) -> Checker:
    """A write then a read of a probe key, on the committer's writer thread (so off the loop and
    ordered with batch writes). A sticky write failure or any I/O error fails it."""
    loop_timeout = timeout_s

    def probe() -> None:
        token = os.urandom(8)
        node.storage.write([(L.META_HEALTH_PROBE, token)], sync=False)
        if node.storage.get(L.META_HEALTH_PROBE) != token:
            raise OSError("health probe read back different bytes than it wrote")

    async def check() -> CheckResult:
        if node.committer.failed is not None:
            return CheckResult("storage", False, f"write failed: {node.committer.failed}")
        try:
            await asyncio.wait_for(node.committer.run_io(probe), loop_timeout)
        except TimeoutError:
            return CheckResult("storage", False, f"probe took longer than {loop_timeout}s")
        except Exception as exc:
            return CheckResult("storage", False, f"probe failed: {exc}")
        return CheckResult("storage", True)

    return check


def task_checker(
    name: str, recovery: Recovery, match: Callable[[str], bool], *, require_alive: bool = True
) -> Checker:
    """OK while no supervised task whose name matches has given up after failures (and, with
    require_alive, while each is still running: a loop that returned is not doing its job)."""

    async def check() -> CheckResult:
        for state in recovery.tasks.values():
            if match(state.name) and (state.failed or (require_alive and not state.alive)):
                return CheckResult(name, False, f"task {state.name} is not running: {state.last_error}")
        return CheckResult(name, True)

    return check


class HealthMonitor:
    """Runs the checkers and publishes the overall status."""

    def __init__(self, health: HealthService, checkers: list[Checker], interval_s: float = 1.0) -> None:
        self.health = health
        self.checkers = checkers
        self.interval_s = interval_s
        self.results: dict[str, CheckResult] = {}
        self.service_names: list[str] = []
        self.changed = asyncio.Event()
        self.before: list[Callable[[], None]] = []  # run at the start of every evaluation
        self.last_run = 0.0
        self.successes = 0
        self.failures = 0

    @property
    def serving(self) -> bool:
        return not self.health.shutting_down and self.health.statuses.get(OVERALL) == SERVING

    def reasons(self) -> list[str]:
        return [f"{r.name}: {r.reason}" for r in self.results.values() if not r.ok]

    def poke(self) -> None:
        """Re-evaluate now (something changed)."""
        self.changed.set()

    async def evaluate(self) -> bool:
        for hook in self.before:
            hook()
        results = await asyncio.gather(*(c() for c in self.checkers), return_exceptions=True)
        ok = True
        for r in results:
            if isinstance(r, BaseException):
                r = CheckResult("checker", False, repr(r))
            prev = self.results.get(r.name)
            if prev is not None and prev.ok != r.ok:
                if r.ok:
                    log.info("health: %s recovered", r.name)
                else:
                    log.error("health: %s failing: %s", r.name, r.reason)
            elif prev is None and not r.ok:
                log.error("health: %s failing: %s", r.name, r.reason)
            self.results[r.name] = r
            ok = ok and r.ok
        if ok:
            self.successes += 1
        else:
            self.failures += 1
        status = SERVING if ok else NOT_SERVING
        self.health.set(OVERALL, status)
        for name in self.service_names:
            self.health.set(name, status)
        self.last_run = time.monotonic()
        return ok

    async def run(self) -> None:
        while True:
            self.changed.clear()
            await self.evaluate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.interval_s)
