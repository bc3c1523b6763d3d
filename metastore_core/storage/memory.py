"""An in-memory backend for tests and `--backend memory` (nothing survives exit)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sortedcontainers import SortedDict

from metastore_core.storage.base import StorageError, Write


class MemoryView:
    """A frozen copy of a memory store (copying is fine at test sizes)."""

    def __init__(self, data: SortedDict) -> None:
        self._data = data.copy()

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k in self._data.irange(start, stop, inclusive=(True, False)):
            yield k, self._data[k]

    def close(self) -> None:
        self._data = SortedDict()


class MemoryStorage:
    """Ordered dict storage; writes are atomic because they run under the GIL."""

    name = "memory"

    def __init__(self) -> None:
        self._data: SortedDict = SortedDict()
        self._bytes = 0  # len(key) + len(value) over every pair, kept as writes land
        self._closed = False
        # A test hook: when set, the next write raises it (simulates an I/O error).
        self.fail_next_write: Exception | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, start: bytes, stop: bytes, *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        keys = list(self._data.irange(start, stop, inclusive=(True, False), reverse=reverse))
        for k in keys:
            v = self._data.get(k)
            if v is not None:
                yield k, v

    def write(self, batch: Sequence[Write], *, sync: bool = True) -> None:
        if self._closed:
            raise StorageError("storage is closed")
        if self.fail_next_write is not None:
            err, self.fail_next_write = self.fail_next_write, None
            raise StorageError(str(err))
        data = self._data
        for key, value in batch:
            old = data.get(key)
            if old is not None:
                self._bytes -= len(key) + len(old)
            if value is None:
                if old is not None:
                    del data[key]
            else:
                data[key] = value
                self._bytes += len(key) + len(value)

    def view(self) -> MemoryView:
        return MemoryView(self._data)

    def size(self) -> int:
        return self._bytes  # summing on demand took ~25 ms per 100k keys, 4x a second

    def compact(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True
