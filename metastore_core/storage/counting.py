"""A file wrapper that reports how far a sequential reader has got (for progress bars)."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

REPORT_EVERY = 1 << 20  # bytes between reports


class CountingReader:
    """Reads from f and calls progress(bytes read so far + base) about once a MiB, and at the end."""

    def __init__(self, f: BinaryIO, progress: Callable[[int], None] | None, base: int = 0) -> None:
        self._f = f
        self._progress = progress
        self._base = base
        self._next = REPORT_EVERY

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if self._progress is not None:
            at_end = n < 0 or len(data) < n  # the last read: the bar reaches its end
            if at_end or self._f.tell() >= self._next:
                self._next = self._f.tell() + REPORT_EVERY
                self._progress(self._base + self._f.tell())
        return data

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)
