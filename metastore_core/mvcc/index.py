"""The in-memory key index: for every key, the revisions where it changed.

An entry packs one change into an int: (main << 33) | (sub << 1) | tombstone,
so a key's entries sort by revision and a bisect finds the state at any main
revision. Worked example (etcd's key_index.go, in our terms), key "a":
    put@2, put@4, delete@6, put@8   entries: 2.0  4.0  6.0t  8.0
    read at 5 -> 4.0 (value of put@4); at 7 -> 6.0t (absent); at 1 -> none
    compact(5): keep the newest entry <= 5 (4.0) and everything newer:
                entries 4.0 6.0t 8.0; revision 2 is gone from disk.
    compact(7): the newest entry <= 7 is a tombstone, so the whole older
                generation goes: entries 8.0.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from sortedcontainers import SortedList


def pack(main: int, sub: int, tombstone: bool = False) -> int:
    return (main << 33) | (sub << 1) | int(tombstone)


def entry_main(entry: int) -> int:
    return entry >> 33


def entry_sub(entry: int) -> int:
    return (entry >> 1) & 0xFFFFFFFF


def is_tombstone(entry: int) -> bool:
    return bool(entry & 1)


class KeyHistory:
    """Revisions of one key, oldest first, plus its newest generation's figures."""

    __slots__ = ("clock", "create", "entries", "lease", "newest", "version")

    def __init__(
        self, entries: list[int] | None = None, create: int = 0, version: int = 0, lease: int = 0
    ) -> None:
        self.entries: list[int] = [] if entries is None else entries
        self.create = create  # create_revision of the newest live generation (0 when deleted)
        self.version = version
        self.lease = lease
        # The serialized KeyValue of entries[-1] when that is a put and the value cache holds it,
        # else None (values.py). Most reads are of the newest value; holding it here saves a
        # storage read per key (a 100-key range spent 70 % of its time in LevelDB gets) at the
        # price of the live data set in memory, as etcd's mmap'd bbolt has it. Never held with
        # CRC on: those reads check the disk.
        self.newest: bytes | None = None
        self.clock = 0  # where it stands in the value cache's ring, with a budget (values.py)

    def at(self, main: int) -> int | None:
        """The newest entry at or below main revision, if it is not a tombstone."""
        entries = self.entries
        last = entries[-1]
        if last >> 33 <= main:
            return None if last & 1 else last
        i = bisect_left(entries, (main + 1) << 33) - 1
        if i < 0:
            return None
        e = entries[i]
        return None if e & 1 else e

    @property
    def alive(self) -> bool:
        return bool(self.entries) and not self.entries[-1] & 1

    def compact(self, main: int, limit: int | None = None) -> list[int]:
        """Drop history older than main (see the module doc); returns dropped entries.

        With limit, drop at most that many of the oldest: reads at or above main give the same
        answer whether the rest goes now or in a later call, so a long history can be cut in
        pieces."""
        entries = self.entries
        i = bisect_left(entries, (main + 1) << 33)  # entries[:i] are <= main
        if i == 0:
            return []
        keep_from = i - 1
        if entries[keep_from] & 1:  # newest <= main is a tombstone: drop it too
            keep_from = i
        if limit is not None and keep_from > limit:
            keep_from = limit
        dropped = entries[:keep_from]
        del entries[:keep_from]
        return dropped


class Index:
    """key -> KeyHistory, with the keys kept sorted for range scans."""

    def __init__(self) -> None:
        self._map: dict[bytes, KeyHistory] = {}
        self._sorted: SortedList = SortedList()

    @classmethod
    def from_histories(cls, histories: dict[bytes, KeyHistory]) -> Index:
        """An index over histories built elsewhere (start-up: one sort, not one insert per key)."""
        index = cls()
        index._map = histories
        index._sorted = SortedList(histories)
        return index

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: bytes) -> KeyHistory | None:
        return self._map.get(key)

    def get_or_add(self, key: bytes) -> KeyHistory:
        h = self._map.get(key)
        if h is None:
            h = self._map[key] = KeyHistory()
            self._sorted.add(key)
        return h

    def remove(self, key: bytes) -> None:
        if self._map.pop(key, None) is not None:
            self._sorted.remove(key)

    def keys(self, key: bytes, end: bytes) -> Iterator[bytes]:
        """Keys in etcd's range: end b"" is key alone, b"\\0" is every key >= key."""
        if not end:
            if key in self._map:
                yield key
            return
        if end == b"\0":
            yield from self._sorted.irange(key, None)
        else:
            yield from self._sorted.irange(key, end, inclusive=(True, False))

    def span(self, key: bytes, end: bytes) -> int:
        """How many keys (live or not) etcd's range holds: a bound on a walk's work, in O(log n)."""
        if not end:
            return int(key in self._map)
        lo = self._sorted.bisect_left(key)
        hi = len(self._sorted) if end == b"\0" else self._sorted.bisect_left(end)
        return max(hi - lo, 0)

    def chunk(self, key: bytes, end: bytes, after: bytes | None, n: int) -> list[tuple[bytes, KeyHistory]]:
        """Up to n (key, history) of etcd's range, ascending, starting after `after` (None: at key).

        A walk in chunks resumes by key, so keys added or removed between chunks are simply
        seen or not, never skipped twice or repeated."""
        if not end:
            h = self._map.get(key)
            return [(key, h)] if h is not None and after is None else []
        stop = None if end == b"\0" else end
        keys = self._sorted.irange(key if after is None else after, stop, inclusive=(after is None, False))
        m = self._map
        out = []
        for k in keys:
            h = m.get(k)
            if h is not None:
                out.append((k, h))
                if len(out) >= n:
                    break
        return out

    def keys_after(self, key: bytes, inclusive: bool = False) -> Iterator[bytes]:
        """Keys after key (or from it), ascending (b"" gives every key); do not mutate while iterating."""
        return iter(self._sorted.irange(key, None, inclusive=(inclusive, False)))

    def histories(self, key: bytes, end: bytes) -> Iterator[tuple[bytes, KeyHistory]]:
        """(key, history) in etcd's range, ascending; zip/map keep the loop in C (range reads)."""
        keys = list(self.keys(key, end))
        return zip(keys, map(self._map.__getitem__, keys), strict=True)

    def history_values(self, key: bytes, end: bytes) -> Iterator[KeyHistory]:
        """The histories of histories(key, end), without their keys."""
        return map(self._map.__getitem__, list(self.keys(key, end)))

    def columns(self) -> tuple[list[bytes], list[KeyHistory]]:
        """Every key in order, and their histories in the same order (copies: safe to keep)."""
        keys = list(self._sorted)
        return keys, list(map(self._map.__getitem__, keys))

    def all(self) -> Iterator[tuple[bytes, KeyHistory]]:
        m = self._map
        for k in self._sorted:
            yield k, m[k]
