"""The small interface every storage backend implements.

The MVCC engine needs only this: point reads, ordered scans, one atomic
batch write (optionally synced), a point-in-time view, a size, a full
compaction and close. One conformance suite (tests/unit/test_storage.py)
runs against every backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

# One write: (key, value) puts the value, (key, None) deletes the key.
Write = tuple[bytes, bytes | None]


class StorageError(Exception):
    """An I/O failure of the backend; the write that raised was not applied."""


# How an operating system says a disk is full (ENOSPC, EDQUOT), in LevelDB's IOError text too.
_NO_SPACE = ("No space left on device", "Disk quota exceeded")


def out_of_space(exc: BaseException) -> bool:
    """True when exc says the disk (or a quota) is full."""
    text = str(exc)
    return any(words in text for words in _NO_SPACE)


class StorageView(Protocol):
    """A consistent read-only view of the store at one moment."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None: ...


class Storage(Protocol):
    """An ordered map of bytes to bytes with atomic batches."""

    name: str

    def get(self, key: bytes) -> bytes | None:
        """The value of key, or None."""
        ...

    def scan(self, start: bytes, stop: bytes, *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with start <= key < stop, in key order (or reversed)."""
        ...

    def write(self, batch: Sequence[Write], *, sync: bool = True) -> None:
        """Apply every write of batch atomically; with sync, durable on return."""
        ...

    def view(self) -> StorageView:
        """A point-in-time view that later writes do not change."""
        ...

    def size(self) -> int:
        """Bytes the store takes (on disk for LevelDB)."""
        ...

    def compact(self) -> None:
        """Reclaim space left by deleted keys."""
        ...

    def close(self) -> None:
        """Release the backend; no call may follow."""
        ...
