"""Background compaction: the physical part of a Compact, in chunks, and auto-compaction.

`MVCCStore.compact` only moves the compacted revision; this task walks the index a chunk at
a time (`compact_step`), hands each chunk's deletes to the committer (so they share fsyncs
with client writes) and yields to the event loop between chunks, so a compaction of millions
of revisions never holds the loop for more than a few milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from metastore_core import errors
from metastore_core.engine.autocompact import Policy, make_policy
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

if TYPE_CHECKING:
    from metastore_core.server.node import Node

log = logging.getLogger(__name__)

CHUNK = 2000  # index entries per step: ~1-5 ms of CPU on this kind of machine
PAUSE = 0.01  # seconds between steps


class Compactor:
    """Runs the physical part of compactions in the background, one chunk per loop turn."""

    def __init__(self, node: Node, chunk: int = CHUNK, pause: float = PAUSE) -> None:
        self.node = node
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
        if not self.node.store.compact_pending or (self._task is not None and not self._task.done()):
            return
        self._idle.clear()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait(self) -> None:
        """Return once no compaction is pending (a physical Compact waits for this)."""
        self.kick()
        await self._idle.wait()

    async def _run(self) -> None:
        store = self.node.store
        started = time.monotonic()
        target = store.compact_rev
        try:
            while store.compact_pending:
                if self.node.committer.failed is not None:
                    return  # recovery reloads the store, which finishes the compaction
                self.dropped += store.compact_step(self.chunk)
                await self.node.committer.flush()
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
    """Issues Compact commands on the schedule of --auto-compaction-mode/-retention."""

    def __init__(self, node: Node, mode: str, retention: str) -> None:
        self.node = node
        self.policy: Policy | None = make_policy(mode, retention, time.monotonic())
        self.compactions = 0

    async def run(self) -> None:
        policy = self.policy
        if policy is None:
            return
        log.info("auto-compaction: %s", policy)
        while True:
            await asyncio.sleep(policy.interval)
            target = policy.tick(time.monotonic(), self.node.store.committed_rev)
            if target is None or target <= self.node.store.compact_rev:
                continue
            try:
                await self.node.write(pb.CompactionRequest(revision=target))
                self.compactions += 1
                log.info("auto-compaction: compacted to revision %d", target)
            except errors.MetastoreError as exc:
                log.warning("auto-compaction to revision %d failed: %s", target, exc)
