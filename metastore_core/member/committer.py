"""Group commit: one writer thread turns everything staged into one synced batch.

Handlers apply a command on the event loop (microseconds, in memory), then
`await committer.flush()`. While one fsync is in flight, further commands
stage behind it and share the next fsync, so throughput does not collapse
to one fsync per request. Only after the batch is on disk do readers see it
(store.mark_durable) and watchers hear of it (listeners).

The writer is one plain thread fed by a SimpleQueue, answering with
`call_soon_threadsafe`; `run_in_executor`'s extra futures and locks cost
a few per cent of a put's CPU.

A write that comes after a quiet spell (nothing in flight, no commit for
IDLE_S) is written inline on the event loop instead: with one client
writing, handing the batch to a sleeping thread and waking the loop again
costs more CPU and latency than the fsync itself on a small VM
(benchmarks/README.md, "Where a put's time goes"). Under load the thread
keeps the loop serving while the disk works. Because an inline write
blocks the loop for as long as the disk takes, any write slower than
SLOW_WRITE_S turns inline writes off for SLOW_BACKOFF_S: after that one
write, a stalling disk stalls writes only, never reads, watches or health.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from metastore_core import errors
from metastore_core.member.durations import DISK, Durations
from metastore_core.mvcc.store import Drained, MVCCStore
from metastore_core.pb.mvccpb.kv_pb2 import Event
from metastore_core.storage.base import StorageError, out_of_space
from metastore_core.storage.layout import CorruptRecord
from metastore_core.storage.watermark import Watermark

log = logging.getLogger(__name__)

Listener = Callable[[int, list[Event]], None]
T = TypeVar("T")

IDLE_S = 0.0005  # no commit for this long: the next write goes inline
SLOW_WRITE_S = 0.05  # a batch write slower than this...
SLOW_BACKOFF_S = 60.0  # ...keeps writes off the event loop for this long
INLINE_MAX = 256  # a bigger batch (a delete of many keys) is always written on the writer thread
RETRY_S = 2.0  # a store that failed a write (not corrupt) is tried again this often (guard.py)


def storage_failed(exc: BaseException) -> errors.StorageFailed:
    """The refusal of writes after exc failed a batch: what it takes to write again depends on it."""
    if out_of_space(exc):
        return errors.StorageFailed(exc)
    if isinstance(exc, CorruptRecord):
        return errors.StorageFailed(exc, "the data is repaired and the CORRUPT alarm disarmed")
    return errors.StorageFailed(exc, f"the storage takes writes again (tried every {RETRY_S:g} s)")


class Committer:
    """Makes staged writes durable, in order, sharing fsyncs between requests."""

    def __init__(self, store: MVCCStore, *, sync: bool = True, watermark: Watermark | None = None) -> None:
        self.store = store
        self.sync = sync
        # Written after each synced batch, before its waiters hear: storage/watermark.py.
        self.watermark = watermark
        self.listeners: list[Listener] = []
        self.on_failure: list[Callable[[Exception], None]] = []
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._writer, name="metastore-commit", daemon=True)
        self._thread.start()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._running = False
        self._hold = False  # set while a rollback runs, or a command is applied in steps: drain nothing
        self._exclusive = asyncio.Lock()  # held while one command is applied in steps
        self._task: asyncio.Task[None] | None = None
        self._last_done = 0.0  # monotonic time the last batch became durable
        self._inline_from = 0.0  # no inline writes before this (set by a slow write)
        self.failed: Exception | None = None
        self.batches = 0
        self.entries = 0
        self.inline_batches = 0
        # one synced LevelDB WriteBatch is both etcd's WAL fsync and its backend commit
        self.write_seconds = Durations(DISK)
        # after each batch write, on the thread that wrote: (start, end, entries); tracing spans
        self.observers: list[Callable[[float, float, int], None]] = []

    async def flush(self) -> None:
        """Return once everything staged so far is durable; raise if it cannot be."""
        if self.failed is not None:
            # Memory may hold writes the disk does not: nothing more is written (or shown to
            # readers) until recovery reloads the store from disk.
            raise storage_failed(self.failed)
        store = self.store
        if store.durable_seq >= store.staged_seq and not self._running:
            return
        if not self._running and not self._waiters and not self._hold:
            now = time.monotonic()
            if (
                now - self._last_done > IDLE_S
                and now >= self._inline_from
                and store.staged_writes <= INLINE_MAX
            ):
                d = store.drain()
                if d is not None:
                    self._write_inline(d)
                    return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((store.staged_seq, fut))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._run())
        await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._hold:
                self._wake(self.store.durable_seq)
                d = self.store.drain()
                if d is None:
                    break
                try:
                    await self._submit(functools.partial(self._write, d))
                except Exception as exc:  # the batch is not on disk: fail everyone behind it
                    self._fail(exc)
                    return
                self._durable(d)
        finally:
            self._running = False
            if self._waiters and not self._hold:  # staged after our last drain
                self._running = True
                self._task = loop.create_task(self._run())

    def _write_inline(self, d: Drained) -> None:
        """Write d on the event loop (nobody else is waiting); raise as a failed batch would."""
        try:
            self._write(d)
        except Exception as exc:
            self._fail(exc)
            raise storage_failed(exc) from exc
        self.inline_batches += 1
        self._durable(d)

    def _durable(self, d: Drained) -> None:
        """d is on disk: show it to readers, wake its waiters, tell the listeners."""
        self.store.mark_durable(d)
        self._last_done = time.monotonic()
        self.batches += 1
        self.entries += len(d.batch)
        self._wake(d.seq)
        if d.events:
            for listener in self.listeners:
                try:
                    listener(d.rev, d.events)
                except Exception:
                    log.exception("commit listener failed")

    def _submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue fn for the writer thread; the future settles on the event loop."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, fut))
        return fut

    def _writer(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, fut = job
            try:
                result, exc = fn(), None
            except BaseException as e:  # handed to the waiter, which decides
                result, exc = None, e
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                fut.get_loop().call_soon_threadsafe(_settle, fut, result, exc)

    def _write(self, d: Drained) -> None:
        start = time.monotonic()
        try:
            self.store.storage.write(d.batch, sync=self.sync)
            if self.watermark is not None and self.sync:
                try:
                    self.watermark.advance(d.index, d.rev, time.monotonic())
                except OSError as exc:  # the batch is on disk, but unconfirmed: not acknowledged
                    raise StorageError(f"cannot write the watermark: {exc}") from exc
        finally:
            now = time.monotonic()
            self.write_seconds.observe(now - start)
            for observe in self.observers:
                observe(start, now, len(d.batch))
            if now - start > SLOW_WRITE_S:  # runs on either thread; one float store is atomic
                if now >= self._inline_from:  # once per back-off, not once per slow batch
                    log.warning(
                        "a batch write took %.3fs: writes stay off the event loop for %.0fs",
                        now - start,
                        SLOW_BACKOFF_S,
                    )
                self._inline_from = now + SLOW_BACKOFF_S

    def _wake(self, seq: int) -> None:
        keep = []
        for want, fut in self._waiters:
            if want <= seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((want, fut))
        self._waiters = keep

    def _fail(self, exc: Exception) -> None:
        log.error("write batch failed, nothing of it was acknowledged: %s", exc)
        self.failed = exc
        err = storage_failed(exc)
        waiters, self._waiters = self._waiters, []
        for _, fut in waiters:
            if not fut.done():
                fut.set_exception(err)
        for hook in self.on_failure:
            try:
                hook(exc)
            except Exception:
                log.exception("commit failure hook failed")
        if not isinstance(exc, StorageError):
            log.exception("unexpected commit failure", exc_info=exc)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Held while one long command is applied in steps (member/single.py): nothing staged is
        drained meanwhile, so no part of it reaches disk, readers or watchers before all of it
        does, and every other change to the store waits in `wait_turn`."""
        async with self._exclusive:
            self._hold = True
            try:
                yield
            finally:
                self._hold = False
                if self._waiters and not self._running:  # writes that staged behind it
                    self._running = True
                    self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def exclusive_held(self) -> bool:
        return self._exclusive.locked()

    async def wait_turn(self) -> None:
        """Return once no command is being applied in steps (apply at once after this returns)."""
        while self._exclusive.locked():
            async with self._exclusive:
                pass

    async def rollback(self, reload: Callable[[], object]) -> None:
        """Drop everything staged but not yet durable and rebuild memory from disk.

        Used when an apply failed half-way: its partial changes must never be
        written. Requests staged behind it fail with UNAVAILABLE (none was acked).
        """
        self._hold = True
        try:
            while self._running:  # the batch in flight holds only whole requests: let it land
                await asyncio.sleep(0.001)
            err = errors.Unavailable(
                "etcdserver: request aborted: the store was reloaded after an internal error"
            )
            waiters, self._waiters = self._waiters, []
            for _, fut in waiters:
                if not fut.done():
                    fut.set_exception(err)
            reload()
        finally:
            self._hold = False

    @property
    def busy(self) -> bool:
        """A batch is being written (or queued to be)."""
        return self._running

    def clear_failure(self) -> None:
        """The store was reopened and reloaded (member/guard.py): writes may go on."""
        self.failed = None

    async def run_io(self, fn: Callable[[], T]) -> T:
        """Run blocking storage work on the writer thread, ordered with batch writes."""
        return await self._submit(fn)

    def close(self) -> None:
        """Finish queued work, then stop the writer thread."""
        self._jobs.put(None)
        self._thread.join()


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the waiter was cancelled
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
