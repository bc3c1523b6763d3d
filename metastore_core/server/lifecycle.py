"""Graceful shutdown in four phases, and the signals that start it.

    1 stop-accepting   health NOT_SERVING (pushed to watchers), no new RPCs or connections
    2 drain            in-flight unary calls finish; watch, keep-alive and health streams end
    3 persist-state    staged writes flushed and synced, lease TTLs checkpointed
    4 close-resources  background tasks and the gRPC server stopped, DB closed, lock released

Hooks are registered per phase, several per phase; the hooks of one phase
run concurrently, a failing hook is logged and the shutdown goes on. One
total timeout bounds everything: a phase that overruns it is abandoned and
the remaining phases run in "forced" mode with a short budget each, so the
DB is still closed. Every acknowledged write was fsynced before its reply,
so forcing loses nothing acknowledged. The first SIGTERM/SIGINT starts the
shutdown; a second one exits the process at once (grpclib's graceful_exit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("metastore.lifecycle")

STOP_ACCEPTING = "stop-accepting"
DRAIN = "drain"
PERSIST_STATE = "persist-state"
CLOSE_RESOURCES = "close-resources"
PHASES = (STOP_ACCEPTING, DRAIN, PERSIST_STATE, CLOSE_RESOURCES)
FORCED_PHASE_BUDGET_S = 2.0
FORCED_EXIT_CODE = 130

Hook = Callable[[], Awaitable[None]]


@dataclass
class PhaseTiming:
    """How one phase of the last shutdown went."""

    phase: str
    seconds: float
    error: str = ""


@dataclass
class ShutdownReport:
    reason: str
    started_at: float  # unix time
    phases: list[PhaseTiming] = field(default_factory=list)
    timed_out: bool = False

    @property
    def clean(self) -> bool:
        return not self.timed_out and not any(p.error for p in self.phases)


class Lifecycle:
    """Shutdown hooks by phase, the trigger, and the report of the last shutdown."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.hooks: dict[str, list[tuple[str, Hook]]] = {p: [] for p in PHASES}
        self.requested = asyncio.Event()
        self.reason = ""
        self.done = asyncio.Event()
        self.report: ShutdownReport | None = None
        self.previous: ShutdownReport | None = None  # the one before this process started
        self.on_phase: Callable[[str], None] | None = None  # told as each phase begins (systemd)
        self._running: asyncio.Task[ShutdownReport] | None = None

    def on(self, phase: str, name: str, hook: Hook) -> None:
        """Register hook to run in phase (concurrently with the phase's other hooks)."""
        if phase not in self.hooks:
            raise ValueError(f"unknown shutdown phase {phase!r}: want one of {', '.join(PHASES)}")
        self.hooks[phase].append((name, hook))

    def request(self, reason: str) -> bool:
        """Ask for a shutdown; False if one was already asked for."""
        if self.requested.is_set():
            return False
        self.reason = reason
        log.info("shutdown requested: %s", reason, extra={"reason": reason})
        self.requested.set()
        return True

    async def run(self) -> ShutdownReport:
        """Run the four phases once (later calls wait for the first)."""
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._running)

    async def _run(self) -> ShutdownReport:
        report = ShutdownReport(self.reason or "stop", time.time())
        start = time.monotonic()
        deadline = start + self.timeout_s
        forced = False
        for phase in PHASES:
            budget = deadline - time.monotonic()
            if budget <= 0:
                forced = True
            if forced:
                budget = FORCED_PHASE_BUDGET_S
            if self.on_phase is not None:
                self.on_phase(phase)
            t0 = time.monotonic()
            error = await self._run_phase(phase, budget)
            seconds = time.monotonic() - t0
            if error.startswith("timed out"):
                forced = True
                report.timed_out = True
            report.phases.append(PhaseTiming(phase, seconds, error))
            log.log(
                logging.WARNING if error else logging.INFO,
                "shutdown phase %s took %.3fs%s%s",
                phase,
                seconds,
                " (forced)" if forced else "",
                f": {error}" if error else "",
                extra={"phase": phase, "seconds": round(seconds, 6), "forced": forced, "error": error},
            )
        total = time.monotonic() - start
        log.info(
            "shutdown finished in %.3fs (%s)",
            total,
            report.reason,
            extra={"seconds": round(total, 6), "reason": report.reason, "clean": report.clean},
        )
        self.report = report
        self.done.set()
        return report

    async def _run_phase(self, phase: str, budget: float) -> str:
        hooks = self.hooks[phase]
        if not hooks:
            return ""
        tasks = [asyncio.ensure_future(h()) for _, h in hooks]
        _finished, pending = await asyncio.wait(tasks, timeout=max(budget, 0.0))
        errors: list[str] = []
        for (name, _), t in zip(hooks, tasks, strict=True):
            if t in pending:
                errors.append(f"{name} did not finish")
                t.cancel()
            elif t.exception() is not None:
                exc = t.exception()
                log.error("shutdown hook %s (%s) failed: %r", name, phase, exc, exc_info=exc)
                errors.append(f"{name}: {exc!r}")
        if pending:
            await asyncio.wait(pending, timeout=0.5)
            return f"timed out after {budget:.1f}s: " + "; ".join(errors)
        return "; ".join(errors)

    # ------------------------------------------------------------------ signals
    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._first_signal, loop, sig)

    def _first_signal(self, loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
        self.request(f"signal {sig.name}")
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(s)
            # A plain handler, not the loop's: it runs even if the loop is stuck in a hook.
            signal.signal(s, self._second_signal)

    def _second_signal(self, signum: int, frame: object) -> None:
        """Force the exit (130), unless the shutdown is already over: then exit as it ended."""
        report = self.report
        if report is not None:  # nothing left to force: the code must not change
            os._exit(0 if report.clean else 1)
        os.write(2, f"metastore: second signal ({signal.Signals(signum).name}): forced exit\n".encode())
        os._exit(FORCED_EXIT_CODE)


# ---------------------------------------------------------------------- the report on disk
REPORT_NAME = "last-shutdown.json"


def save_report(data_dir: Path, report: ShutdownReport) -> None:
    """Keep the phase timings beside the DB, for the next process's stats."""
    path = data_dir / REPORT_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(report)))
    os.replace(tmp, path)


def load_report(data_dir: Path) -> ShutdownReport | None:
    try:
        raw = json.loads((data_dir / REPORT_NAME).read_text())
        phases = [PhaseTiming(**p) for p in raw.pop("phases", [])]
        return ShutdownReport(phases=phases, **raw)
    except (OSError, ValueError, TypeError):
        return None
