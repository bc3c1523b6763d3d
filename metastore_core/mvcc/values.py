"""Newest values held in memory, within a byte budget (--value-cache-bytes).

A key's newest value is its KeyHistory.newest when it is held, else None and a read of it goes
to storage (LevelDB: its block cache, then the disk, every block checksum-verified; see
store.MVCCStore.kv_bytes), after which it is held again. Without a budget every newest value
is held, as etcd's mmap'd bbolt keeps its pages: reads of current data then touch no storage.

Eviction is CLOCK with the index as the ring: a hand walks the keys in order; a value read (or
written) since the hand last passed is spared once (its `hot` mark cleared), any other is
dropped. No list of held values is kept, so a deleted or compacted key leaves nothing behind,
and the per-key cost is one slot. Worked example, budget 3 values, hand after "a":
    hold b, c, d (hot)          held b c d          hand sweeps b c d (clears hot), evicts b
    read c; hold e (hot)        held c d e          hand at b: c is hot (spared), d dropped
A value is only ever the newest of its key: writes replace it, deletes forget it, so dropping
one costs a storage read later and never changes an answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from metastore_core.mvcc.index import Index, KeyHistory

SPARE = 64  # hot values a hand may spare per eviction before it drops one anyway


class ValueCache:
    """The held newest values and their budget; budget None holds all, 0 none."""

    def __init__(self, budget: int | None, index: Callable[[], Index]) -> None:
        self.budget = budget
        self._index = index  # the store's current index (load replaces it)
        self.bytes = 0  # bytes of the values held
        self.held = 0  # values held
        self.misses = 0  # reads that went to storage for a newest value
        self.evictions = 0
        self._hand = b""  # the key the hand stopped at

    def hold(self, h: KeyHistory, payload: bytes) -> None:
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
        h.hot = True
        self.bytes += len(payload)
        self.held += 1
        if budget is not None and self.bytes > budget:
            self._evict(budget, h)

    def forget(self, h: KeyHistory) -> None:
        """h has no newest value any more (its key was deleted)."""
        old = h.newest
        if old is not None:
            self.bytes -= len(old)
            self.held -= 1
            h.newest = None

    def fill(self, h: KeyHistory, payload: bytes) -> None:
        """At load: hold payload while the budget has room (no eviction: the index is not built
        yet, and records come oldest first); past it, hold nothing older of h either."""
        budget = self.budget
        old = h.newest
        if budget is not None and self.bytes + len(payload) - (len(old) if old else 0) > budget:
            self.forget(h)
            return
        self.hold(h, payload)
        h.hot = False

    def recount(self, histories: Iterable[KeyHistory]) -> None:
        """Count what a load left held (it sets newest directly when there is no budget)."""
        sizes = [len(h.newest) for h in histories if h.newest is not None]
        self.bytes, self.held = sum(sizes), len(sizes)

    def _evict(self, budget: int, keep: KeyHistory) -> None:
        index = self._index()
        keys = index.keys_after(self._hand)  # a fresh iterator each time: the index changes between
        spared = 0
        left = 2 * len(index) + 1  # two laps clear every mark: the walk always ends
        while self.bytes > budget and left:
            left -= 1
            k = next(keys, None)
            if k is None:  # the end of the ring: around again
                keys = index.keys_after(b"", inclusive=True)
                continue
            self._hand = k
            h = index.get(k)
            if h is None or h.newest is None or h is keep:
                continue
            if h.hot and spared < SPARE:
                h.hot = False
                spared += 1
                continue
            self.bytes -= len(h.newest)
            self.held -= 1
            h.newest = None
            h.hot = False
            self.evictions += 1
