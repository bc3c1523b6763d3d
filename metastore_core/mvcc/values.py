"""Newest values held in memory, within a byte budget (--value-cache-bytes).

A key's newest value is its KeyHistory.newest when it is held, else None and a read of it goes
to storage (LevelDB: its block cache, then the disk, every block checksum-verified; see
store.MVCCStore.kv_bytes), after which it is held again. Without a budget every newest value
is held, as etcd's mmap'd bbolt keeps its pages: reads of current data then touch no storage,
and none of the bookkeeping below runs.

With a budget, eviction is CLOCK over a ring (a deque) of the histories whose values are held;
KeyHistory.clock says where a history stands: OUT (not in the ring), IN, or READ (read or written
since the hand last passed). The hand takes the ring's head: a READ one is spared once (back to
IN, to the tail), an IN one is dropped. A history whose value went meanwhile (its key deleted)
simply leaves the ring when the hand meets it, so each eviction costs O(1) amortised whatever
the size of the index. Worked example, room for 3 values:
    hold a, b, c (READ)        ring a b c        hold d: a, b, c spared (IN), a dropped
    read c; hold e             ring b c d e      hand: b dropped (IN); c READ stays
A value is only ever the newest of its key: writes replace it, deletes forget it, so dropping
one costs a storage read later and never changes an answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from metastore_core.mvcc.index import KeyHistory

OUT, IN, READ = 0, 1, 2  # KeyHistory.clock


class ValueCache:
    """The held newest values and their budget; budget None holds all, 0 none."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.bytes = 0  # bytes of the values held
        self.held = 0  # values held
        self.misses = 0  # reads that went to storage for a newest value
        self.evictions = 0
        self._ring: deque[KeyHistory] = deque()  # held (and lately forgotten) histories, hand first

    def hold(self, h: KeyHistory, payload: bytes, clock: int = READ) -> None:
        """payload is h's newest value now (written, loaded, or read from storage)."""
        old = h.newest
        if old is not None:
            self.bytes -= len(old)
            self.held -= 1
        budget = self.budget
        if budget is not None and len(payload) > budget:
            h.newest = None
            return
        h.newest = payload
        self.bytes += len(payload)
        self.held += 1
        if budget is None:
            return
        if h.clock == OUT:
            self._ring.append(h)
        h.clock = clock
        if self.bytes > budget:
            self._evict(budget, h)

    def forget(self, h: KeyHistory) -> None:
        """h has no newest value any more (its key was deleted); it leaves the ring lazily."""
        old = h.newest
        if old is not None:
            self.bytes -= len(old)
            self.held -= 1
            h.newest = None

    def fill(self, h: KeyHistory, payload: bytes) -> None:
        """At load: hold payload while the budget has room (no eviction: records come oldest
        first); past it, hold nothing older of h either."""
        budget = self.budget
        old = h.newest
        if budget is not None and self.bytes + len(payload) - (len(old) if old else 0) > budget:
            self.forget(h)
            return
        self.hold(h, payload, IN)

    def recount(self, histories: Iterable[KeyHistory]) -> None:
        """Count what a load left held (it sets newest directly when there is no budget)."""
        sizes = [len(h.newest) for h in histories if h.newest is not None]
        self.bytes, self.held = sum(sizes), len(sizes)

    def _evict(self, budget: int, keep: KeyHistory) -> None:
        ring = self._ring
        left = 2 * len(ring) + 1  # two laps clear every mark: the walk always ends
        while self.bytes > budget and left:
            left -= 1
            h = ring.popleft()
            if h.newest is None:  # forgotten since it was held
                h.clock = OUT
            elif h is keep or h.clock == READ:
                if h is not keep:
                    h.clock = IN
                ring.append(h)
            else:
                self.bytes -= len(h.newest)
                self.held -= 1
                h.newest = None
                h.clock = OUT
                self.evictions += 1
