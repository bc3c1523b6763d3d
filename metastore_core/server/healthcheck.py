"""What health means: the checkers, the monitor that publishes their verdict, and the HTTP rules.

The monitor runs every checker (storage: a real write and read through the
storage engine on the writer thread; lease: the expiry loop is alive; tasks:
no supervised task gave up) on an interval and whenever something signals a
change, and sets "" and every served service name in the Health servicer.
`/health` adds etcd's rule (503 while any alarm is active, `?exclude=NOSPACE`
ignores that one); `/readyz` is the monitor's verdict alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from metastore_core.member.node import Node
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
        if self.health.shutting_down:
            return False, "shutting down"
        active = [a for a in alarms if a not in exclude]
        if active:
            return False, "ALARM " + ",".join(active)
        return self.ready()
