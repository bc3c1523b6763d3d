"""Exception recovery ("panic recovery") for handlers and background tasks.

The outermost layer on every RPC: whatever a handler raises that is not a
domain error becomes errors.Internal ("internal server error: panic
recovered") for that one request, is logged with its stack, counted, and
handed to the configured handlers; the process keeps serving. A record that
fails its CRC check becomes errors.Corrupt and is reported (the member raises
the CORRUPT alarm); any other storage failure becomes errors.Unavailable
naming it (a disk problem is no panic). The same layer counts validation failures
(INVALID_ARGUMENT) and feeds the request metrics, so one wrapper observes
every call's final code.

Background work runs through `safe_spawn` (a failure is logged and counted)
or `safe_spawn_with_restart` (restarted with backoff up to N times, for
critical workers such as lease expiry); the supervisor keeps every task by
name so health can ask whether a worker is alive and shutdown can stop all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from metastore_core import errors
from metastore_core.server.layers.metrics import RequestMetrics
from metastore_core.server.methods import Behaviour, Call, Layer, MethodInfo
from metastore_core.server.status import Code, code_of
from metastore_core.storage.base import StorageError
from metastore_core.storage.layout import CorruptRecord

log = logging.getLogger("metastore.recovery")

PanicHandler = Callable[[str, BaseException], None]
TaskFactory = Callable[[], Coroutine[Any, Any, None]]

_OK = Code.OK
_INVALID = Code.INVALID_ARGUMENT
_CANCELLED = Code.CANCELLED


@dataclass
class TaskState:
    """A supervised background task."""

    name: str
    task: asyncio.Task[None]
    restarts: int = 0
    max_restarts: int = 0
    failed: bool = False  # gave up (or, without restart, died of an exception)
    last_error: str = ""

    @property
    def alive(self) -> bool:
        return not self.task.done()


class Recovery:
    """Counts and reports panics; supervises background tasks."""

    def __init__(self) -> None:
        self.panic_count = 0
        self.validation_error_count = 0
        self.oversize_count = 0  # refused as larger than --max-request-bytes
        self.task_failures = 0
        self.handlers: list[PanicHandler] = []
        self.on_corrupt: Callable[[CorruptRecord], None] | None = None
        self.tasks: dict[str, TaskState] = {}
        self.restart_backoff = 0.1

    # ------------------------------------------------------------------ panics
    def panic(self, where: str, exc: BaseException) -> None:
        """Record one recovered exception: log with stack, count, notify."""
        self.panic_count += 1
        log.error("panic recovered in %s: %r", where, exc, exc_info=exc, extra={"method": where})
        for handler in self.handlers:
            try:
                handler(where, exc)
            except Exception:
                log.exception("panic handler failed")

    def failed(self, where: str, exc: Exception) -> errors.MetastoreError:
        """Record an exception that escaped a handler; the error the caller gets instead."""
        if isinstance(exc, CorruptRecord):
            self.corrupt(exc)
            return errors.Corrupt()
        if isinstance(exc, StorageError):  # the disk failed, not the code: no panic, and retryable
            log.error("storage failed in %s: %s", where, exc)
            return errors.Unavailable(f"etcdserver: storage unavailable ({exc})")
        self.panic(where, exc)
        return errors.Internal()

    def _outcome(self, where: str, exc: BaseException) -> tuple[Code, errors.MetastoreError | None]:
        """A call ended with exc: its final code, and the domain error to raise instead (or None)."""
        if isinstance(exc, errors.MetastoreError):
            code = code_of(exc)
            if code is _INVALID:
                self.validation_error_count += 1
                if isinstance(exc, errors.RequestTooLarge):
                    self.oversize_count += 1
            return code, None
        if not isinstance(exc, Exception):  # cancelled (the client went away), generator closed
            return _CANCELLED, None
        instead = self.failed(where, exc)
        return code_of(instead), instead

    def corrupt(self, exc: CorruptRecord) -> None:
        log.error("data corruption detected: %s", exc)
        if self.on_corrupt is not None:
            try:
                self.on_corrupt(exc)
            except Exception:
                log.exception("corruption handler failed")

    # ------------------------------------------------------------------ tasks
    def safe_spawn(self, name: str, fn: TaskFactory) -> TaskState:
        """Run fn() as a background task; an exception is logged and counted, never raised."""
        return self._spawn(name, fn, 0)

    def safe_spawn_with_restart(self, name: str, fn: TaskFactory, max_restarts: int) -> TaskState:
        """Run fn() and restart it (with backoff) after a failure, up to max_restarts times."""
        return self._spawn(name, fn, max_restarts)

    def _spawn(self, name: str, fn: TaskFactory, max_restarts: int) -> TaskState:
        old = self.tasks.get(name)
        if old is not None and old.alive:
            raise ValueError(f"a task named {name!r} is already running")
        holder: list[TaskState] = []

        async def supervise() -> None:
            state = holder[0]
            delay = self.restart_backoff
            while True:
                try:
                    await fn()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.task_failures += 1
                    self.panic(f"task {name}", exc)
                    state.last_error = repr(exc)
                    if state.restarts >= state.max_restarts:
                        state.failed = True
                        if state.max_restarts:
                            log.error("task %s failed %d times; not restarting", name, state.restarts + 1)
                        return
                    state.restarts += 1
                    log.warning("restarting task %s (%d/%d)", name, state.restarts, state.max_restarts)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

        task = asyncio.get_running_loop().create_task(supervise(), name=f"metastore:{name}")
        state = TaskState(name, task, max_restarts=max_restarts)
        holder.append(state)
        self.tasks[name] = state
        return state

    async def stop_tasks(self, timeout: float = 2.0) -> None:
        """Cancel every supervised task and wait (bounded) for them to end."""
        running = [s.task for s in self.tasks.values() if not s.task.done()]
        for t in running:
            t.cancel()
        if running:
            await asyncio.wait(running, timeout=timeout)

    # ------------------------------------------------------------------ the layer
    def layer(self, metrics: RequestMetrics | None = None) -> Layer:
        """The outermost RPC layer: recovery, validation counting and request metrics."""

        def wrap(info: MethodInfo, fn: Behaviour) -> Behaviour:
            m = metrics.method(info) if metrics is not None else None
            where = info.full
            clock = time.perf_counter

            if not info.server_streaming:

                async def unary(request: Any, call: Call) -> Any:
                    start = clock()
                    code = _OK
                    if m is not None:
                        m.started += 1
                    try:
                        return await fn(request, call)
                    except BaseException as exc:
                        code, instead = self._outcome(where, exc)
                        if instead is None:
                            raise
                        raise instead from None
                    finally:
                        if m is not None:
                            m.done(code, clock() - start)

                return unary

            async def streaming(request: Any, call: Call) -> Any:
                start = clock()
                code = _OK
                if m is not None:
                    m.started += 1
                try:
                    async with aclosing(fn(request, call)) as items:
                        async for item in items:
                            yield item
                except BaseException as exc:
                    code, instead = self._outcome(where, exc)
                    if instead is None:
                        raise
                    raise instead from None
                finally:
                    if m is not None:
                        m.done(code, clock() - start)

            return streaming

        return wrap
