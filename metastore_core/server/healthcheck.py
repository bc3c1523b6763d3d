"""What health means: the checkers, the monitor that publishes their verdict, and the HTTP rules.

The monitor runs every checker (storage: a real write and read through the
storage engine on the writer thread; lease: the expiry loop is alive; tasks:
no supervised task gave up) on an interval and whenever something signals a
change, and sets "" and every served service name in the Health servicer.
`/health` adds etcd's rule (503 while any alarm is active, `?exclude=NOSPACE`
ignores that one). `/livez` and `/readyz` run named checks on each request, as
etcd 3.6 does (`?verbose` lists them, `?exclude=NAME` skips one, `/readyz/NAME`
runs one):

    livez   serializable_read  a read of the store answers
            background_tasks   no supervised loop (lease expiry, health monitor...) gave up
    readyz  data_corruption    no CORRUPT alarm
            serializable_read, linearizable_read (through the read barrier), non_learner
            storage, lease     the monitor's last verdict (the gRPC health status)
            shutdown           not shutting down
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.layers.recovery import Recovery
from metastore_core.server.services.health import NOT_SERVING, OVERALL, SERVING, HealthService

log = logging.getLogger("metastore.health")


@dataclass
class CheckResult:
    name: str
    ok: bool
    reason: str = ""


Checker = Callable[[], Awaitable[CheckResult]]


def storage_checker(node: Node) -> Checker:
    """A sticky write failure or a failed write/read probe fails it."""

    async def check() -> CheckResult:
        reason = await node.probe_storage()
        return CheckResult("storage", reason is None, reason or "")

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
        self.last_run = 0.0
        self.http_ok = 0  # /health answers, as etcd_server_health_success and _failures count them
        self.http_failed = 0

    @property
    def serving(self) -> bool:
        return not self.health.shutting_down and self.health.statuses.get(OVERALL) == SERVING

    def reasons(self) -> list[str]:
        return [f"{r.name}: {r.reason}" for r in self.results.values() if not r.ok]

    def poke(self) -> None:
        """Re-evaluate now (something changed)."""
        self.changed.set()

    async def evaluate(self) -> bool:
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
                async with asyncio.timeout(self.interval_s):  # not wait_for: it can swallow a cancel
                    await self.changed.wait()

    # ------------------------------------------------------------------ HTTP verdicts
    def ready(self) -> tuple[bool, str]:
        """/readyz: serving, or why not."""
        if self.health.shutting_down:
            return False, "shutting down"
        if not self.serving:
            return False, "; ".join(self.reasons()) or "not serving"
        return True, ""

    def healthy(self, alarms: list[str], exclude: set[str]) -> tuple[bool, str]:
        """/health as etcd: unhealthy while any alarm not excluded is active, or not serving."""
        ok, why = self._healthy(alarms, exclude)
        if ok:
            self.http_ok += 1
        else:
            self.http_failed += 1
        return ok, why

    def _healthy(self, alarms: list[str], exclude: set[str]) -> tuple[bool, str]:
        if self.health.shutting_down:
            return False, "shutting down"
        active = [a for a in alarms if a not in exclude]
        if active:
            return False, "ALARM " + ",".join(active)
        return self.ready()


# ---------------------------------------------------------------------- /livez and /readyz
Probe = Callable[[], Awaitable[str | None]]  # None when the check passes, else why it failed


class Probes:
    """The named checks behind /livez or /readyz, run in order on every request (etcd's
    CheckRegistry); counted per name for etcd_server_healthcheck{,s_total}."""

    def __init__(self, kind: str, checks: Sequence[tuple[str, Probe]]) -> None:
        self.kind = kind
        self.checks = dict(checks)
        self.names = [name for name, _ in checks]
        self.last: dict[str, bool] = {}
        self.totals: dict[tuple[str, bool], int] = {}

    async def run(self, names: Sequence[str]) -> tuple[bool, str]:
        """(all passed, etcd's verbose text: one `[+]name ok` or `[-]name failed: why` per line)."""
        ok, lines = True, []
        for name in names:
            try:
                why = await self.checks[name]()
            except Exception as exc:
                why = repr(exc)
            passed = why is None
            self.last[name] = passed
            self.totals[name, passed] = self.totals.get((name, passed), 0) + 1
            ok = ok and passed
            lines.append(f"[+]{name} ok\n" if passed else f"[-]{name} failed: {why}\n")
        return ok, "".join(lines)


def read_probe(node: Node, serializable: bool) -> Probe:
    """etcd's readCheck: a one-key, keys-only Range (linearizable: through the read barrier)."""

    async def check() -> str | None:
        await node.range(pb.RangeRequest(key=b"health", keys_only=True, limit=1, serializable=serializable))
        return None

    return check


def livez(node: Node, recovery: Recovery) -> Probes:
    """Liveness: would restarting the process help? A read must answer and no loop may have given up."""
    tasks = task_checker("tasks", recovery, lambda name: True, require_alive=False)

    async def background_tasks() -> str | None:
        r = await tasks()
        return None if r.ok else r.reason

    return Probes(
        "livez", [("serializable_read", read_probe(node, True)), ("background_tasks", background_tasks)]
    )


def readyz(node: Node, monitor: HealthMonitor) -> Probes:
    """Readiness: should this member get requests? etcd's checks plus the monitor's verdicts."""

    async def data_corruption() -> str | None:
        return "alarm activated: CORRUPT" if "CORRUPT" in node.figures.alarm_names() else None

    async def non_learner() -> str | None:
        return None  # a single member is never a learner

    def verdict(name: str) -> Probe:
        async def check() -> str | None:
            r = monitor.results.get(name)
            if r is None:
                return "not checked yet"
            return None if r.ok else r.reason

        return check

    async def shutdown() -> str | None:
        return "shutting down" if monitor.health.shutting_down else None

    return Probes(
        "readyz",
        [
            ("data_corruption", data_corruption),
            ("serializable_read", read_probe(node, True)),
            ("linearizable_read", read_probe(node, False)),
            ("non_learner", non_learner),
            ("storage", verdict("storage")),
            ("lease", verdict("lease")),
            ("shutdown", shutdown),
        ],
    )
