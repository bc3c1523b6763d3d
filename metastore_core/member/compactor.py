"""Background compaction: the physical part of a Compact, in chunks, and auto-compaction.

`MVCCStore.compact` (in apply) only moves the compacted revision; the
compactor walks the index a chunk at a time (`compact_step`), hands each
chunk's deletes to the committer (so they share fsyncs with client writes)
and yields to the event loop between chunks, so a compaction of millions of
revisions never holds the loop for more than a few milliseconds. Every member
compacts its own storage after applying a Compact; only the leader proposes
automatic compactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from metastore_core import errors
from metastore_core.engine.autocompact import Policy
from metastore_core.member.committer import Committer
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger(__name__)

# A step holds the loop for its whole chunk: 1,000 entries (~10 ms under load) with 5 ms pauses
# kept put@64's p99 during a 1M-revision compaction at 1.45x the quiet one in 19 s; 2,000 with 10
# ms took 16-19 s at 1.26-1.63x; 1,000 with 10 ms gave 1.03x but took 30 s (benchmarks/README.md).
CHUNK = 1000  # index entries per step
PAUSE = 0.005  # seconds between steps


class Compactor:
    """Runs the physical part of compactions in the background, one chunk per loop turn."""

    def __init__(
        self, store: MVCCStore, committer: Committer, chunk: int = CHUNK, pause: float = PAUSE
    ) -> None:
        self._store = store
        self._committer = committer
        self.chunk = chunk
        self.pause = pause
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0
        self.runs = 0
        self.last_duration = 0.0

    def kick(self) -> None:
        """Start the walk if a compaction is pending and no walk is running."""
        if not self._store.compact_pending or (self._task is not None and not self._task.done()):
            return
        self._idle.clear()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait(self) -> None:
        """Return once no compaction is pending (a physical Compact waits for this)."""
        self.kick()
        await self._idle.wait()

    async def _run(self) -> None:
        store = self._store
        started = time.monotonic()
        target = store.compact_rev
        try:
            while store.compact_pending:
                if self._committer.failed is not None:
                    return  # recovery reloads the store, which finishes the compaction
                await self._committer.wait_turn()  # not inside a command applied in steps
                self.dropped += store.compact_step(self.chunk)
                await self._committer.flush()
                # a pause between batches leaves the writer thread idle for client writes, which
                # would otherwise queue behind one compaction fsync after another
                await asyncio.sleep(self.pause)
            self.runs += 1
            self.last_duration = time.monotonic() - started
            log.info("finished compaction at revision %d in %.3fs", target, self.last_duration)
        except errors.MetastoreError as exc:
            log.error("compaction stopped: %s", exc)
        finally:
            self._idle.set()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class AutoCompactor:
    """Proposes Compact commands on the schedule of --auto-compaction-mode/-retention (leader only)."""

    def __init__(
        self,
        store: MVCCStore,
        policy: Policy | None,
        write: Callable[[Any], Awaitable[Any]],
        is_leader: Callable[[], bool],
    ) -> None:
        self._store = store
        self.policy = policy
        self._write = write
        self._is_leader = is_leader
        self.compactions = 0

    async def run(self) -> None:
        policy = self.policy
        if policy is None:
            return
        log.info("auto-compaction: %s", policy)
        while True:
            await asyncio.sleep(policy.interval)
            target = policy.tick(time.monotonic(), self._store.committed_rev)
            if not self._is_leader() or target is None or target <= self._store.compact_rev:
                continue
            try:
                await self._write(pb.CompactionRequest(revision=target))
                self.compactions += 1
                log.info("auto-compaction: compacted to revision %d", target)
            except errors.MetastoreError as exc:
                log.warning("auto-compaction to revision %d failed: %s", target, exc)
