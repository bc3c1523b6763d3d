"""Graceful shutdown in four phases, and the signals that start it.

    1 stop-accepting   health NOT_SERVING (pushed to watchers), no new RPCs or connections
    2 drain            in-flight unary calls finish; watch, keep-alive and health streams end
    3 persist-state    staged writes flushed and synced, lease TTLs checkpointed
    4 close-resources  background tasks and the gRPC server stopped, DB closed, lock released

Hooks are registered per phase, several per phase; the hooks of one phase
run concurrently, a failing hook is logged and the shutdown goes on. One
total timeout bounds everything, counted from the moment the shutdown was
asked for (a signal's arrival, not the moment a busy loop got to it):
phases 1-2 must end CLOSING_RESERVE before it, so phases 3-4 always have
time to flush and close the DB; a phase that overruns its budget is
abandoned and the rest run "forced". In the daemon a watchdog thread holds
the line even if the event loop is stuck: WATCHDOG_SLACK_S past the timeout
it logs why and exits the process. Every acknowledged write was fsynced
before its reply, so forcing loses nothing acknowledged. The first
SIGTERM/SIGINT starts the shutdown; a second one exits the process at once
(grpclib's graceful_exit). Times in the log are measured from the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from metastore_core.server.logline import escape

log = logging.getLogger("metastore.lifecycle")

STOP_ACCEPTING = "stop-accepting"
DRAIN = "drain"
PERSIST_STATE = "persist-state"
CLOSE_RESOURCES = "close-resources"
PHASES = (STOP_ACCEPTING, DRAIN, PERSIST_STATE, CLOSE_RESOURCES)
CLOSING_RESERVE_S = 2.0  # at most this (and at most a quarter of the timeout) kept for phases 3-4
FORCED_PHASE_BUDGET_S = 0.25  # a phase that starts after the deadline still gets this
WATCHDOG_SLACK_S = 0.5  # past the timeout by this much, the watchdog exits the process
FORCED_EXIT_CODE = 130  # a second signal
TIMEOUT_EXIT_CODE = 1  # the shutdown ran past its timeout (as a forced shutdown reports)
BUSY_LOOP_S = 0.1  # a signal handled later than this after it arrived is logged with the delay
REASON_LIMIT = 200  # characters of a shutdown reason kept

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
        self.requested_at = 0.0  # monotonic time the shutdown was asked for
        self.watchdog = False  # arm_watchdog(): exit the process if the timeout is overrun
        self._finished = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.on_phase: Callable[[str], None] | None = None  # told as each phase begins (systemd)
        self._running: asyncio.Task[ShutdownReport] | None = None

    def on(self, phase: str, name: str, hook: Hook) -> None:
        """Register hook to run in phase (concurrently with the phase's other hooks)."""
        if phase not in self.hooks:
            raise ValueError(f"unknown shutdown phase {phase!r}: want one of {', '.join(PHASES)}")
        self.hooks[phase].append((name, hook))

    def request(self, reason: str, at: float | None = None) -> bool:
        """Ask for a shutdown (at: when it was asked, if earlier than now); False if already asked."""
        if self.requested.is_set():
            return False
        now = time.monotonic()
        self.requested_at = now if at is None else min(at, now)
        # The reason may be a client's text (the Shutdown RPC): kept and logged escaped, cut short.
        self.reason = reason = escape(reason, REASON_LIMIT)
        late = now - self.requested_at
        busy = f" ({late:.3f}s after it arrived: the event loop was busy)" if late > BUSY_LOOP_S else ""
        log.info("shutdown requested: %s%s", reason, busy, extra={"reason": reason})
        self.requested.set()
        self._start_watchdog(self.requested_at)
        return True

    def arm_watchdog(self) -> None:
        """In the daemon: past the timeout (plus slack) the process exits, whatever the loop does."""
        self.watchdog = True

    def _start_watchdog(self, at: float) -> None:
        if not self.watchdog or self._watchdog is not None:
            return
        self._watchdog = threading.Thread(
            target=self._watch, args=(at,), name="metastore-shutdown-watchdog", daemon=True
        )
        self._watchdog.start()

    def _watch(self, at: float) -> None:
        left = at + self.timeout_s + WATCHDOG_SLACK_S - time.monotonic()
        if self._finished.wait(max(left, 0.0)):
            return
        took = time.monotonic() - at
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
        # os.write, not logging: the loop's thread may hold the logging lock where it is stuck
        os.write(
            2,
            f"{stamp} ERROR metastore.lifecycle: shutdown still running "
            f"{took:.3f}s after it was asked for (--shutdown-timeout {self.timeout_s:g}s): "
            "forced exit (acknowledged writes were synced before their replies)\n".encode(),
        )
        os._exit(TIMEOUT_EXIT_CODE)

    @property
    def deadline(self) -> float:
        """Monotonic time by which the whole shutdown must be over."""
        return self.requested_at + self.timeout_s

    @property
    def drain_deadline(self) -> float:
        """Monotonic time by which phases 1-2 (stop accepting, drain) must be over."""
        return self.deadline - min(CLOSING_RESERVE_S, self.timeout_s / 4)

    async def run(self) -> ShutdownReport:
        """Run the four phases once (later calls wait for the first)."""
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._running)

    async def _run(self) -> ShutdownReport:
        if not self.requested_at:  # run() without request(): count from now
            self.requested_at = time.monotonic()
        start = self.requested_at
        report = ShutdownReport(self.reason or "stop", time.time() - (time.monotonic() - start))
        forced = False
        for phase in PHASES:
            end = self.drain_deadline if phase in (STOP_ACCEPTING, DRAIN) else self.deadline
            budget = end - time.monotonic()
            if budget <= 0:
                forced = True
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
            "shutdown finished in %.3fs of %gs (%s)",
            total,
            self.timeout_s,
            report.reason,
            extra={"seconds": round(total, 6), "reason": report.reason, "clean": report.clean},
        )
        self.report = report
        self._finished.set()
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
        """First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once.

        Plain handlers, not the loop's: Python runs them between two bytecodes even while
        the loop is busy with a long request, so the arrival time (the timeout's start) is
        true, and a second signal works even if the loop is stuck."""

        def first(signum: int, frame: object) -> None:
            arrived = time.monotonic()
            for s in (signal.SIGTERM, signal.SIGINT):
                signal.signal(s, self._second_signal)
            name = signal.Signals(signum).name
            self._start_watchdog(arrived)  # now: the loop may be too busy to start it soon
            loop.call_soon_threadsafe(self.request, f"signal {name}", arrived)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, first)

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
