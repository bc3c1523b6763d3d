"""The LevelDB backend (plyvel): the default, durable store.

Opened once per process with paranoid checks so corruption fails the open
instead of silently dropping acknowledged records. Our own flock on the data
dir (see datadir.py) guards against a second process, because a failed
second in-process open of LevelDB silently releases LevelDB's own lock.

Every read verifies LevelDB's block checksums (`verify_checksums`, off by
default in LevelDB): without it a flipped bit in a table file came back as a
wrong value with status OK. Blocks enter the block cache only through these
verified reads, so a cached block was checked too. A failed check raises
layout.CorruptRecord, which the server answers with DATA_LOSS and the CORRUPT
alarm. The cost is one CRC32C per 4 KiB block read from disk; reads of current
data are served from memory (mvcc/store.py) and never get here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import plyvel

from metastore_core.storage.base import StorageError, Write
from metastore_core.storage.layout import CorruptRecord


def storage_error(exc: plyvel.Error, context: str = "LevelDB: ") -> StorageError:
    """plyvel's error as ours: a failed checksum is CorruptRecord, anything else StorageError."""
    raw = exc.args[0] if exc.args else exc
    text = context + (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))
    return CorruptRecord(text) if isinstance(exc, plyvel.CorruptionError) else StorageError(text)


class LevelDBView:
    """A LevelDB snapshot."""

    def __init__(self, db: Any) -> None:
        self._snap = db.snapshot()

    def get(self, key: bytes) -> bytes | None:
        try:
            return self._snap.get(key, verify_checksums=True)
        except plyvel.Error as exc:
            raise storage_error(exc) from exc

    def scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        try:
            with self._snap.iterator(start=start, stop=stop, verify_checksums=True, fill_cache=False) as it:
                yield from it
        except plyvel.Error as exc:
            raise storage_error(exc) from exc

    def close(self) -> None:
        self._snap.close()


class LevelDBStorage:
    """plyvel.DB behind the Storage interface."""

    name = "leveldb"

    def __init__(self, path: Path, *, cache_bytes: int = 64 << 20, create: bool = True) -> None:
        """create=False refuses a missing store instead of starting an empty one (datadir.py)."""
        self.path = path
        self._cache_bytes = cache_bytes
        self._create = create
        self._db: Any = self._open()
        self._create = False  # a reopen must find the store it had
        self._down = ""  # why there is no handle (a reopen failed)

    @property
    def _h(self) -> Any:
        """The open handle; after a failed reopen there is none until a later one works."""
        db = self._db
        if db is None:
            raise StorageError(f"LevelDB at {self.path} is closed: reopening it failed ({self._down})")
        return db

    def _open(self) -> Any:
        path, cache_bytes = self.path, self._cache_bytes
        try:
            return plyvel.DB(
                str(path),
                create_if_missing=self._create,
                paranoid_checks=True,
                lru_cache_size=cache_bytes,
                write_buffer_size=16 << 20,
            )
        except plyvel.Error as exc:
            raise storage_error(exc, f"cannot open LevelDB at {path}: ") from exc

    def get(self, key: bytes) -> bytes | None:
        try:
            return self._h.get(key, verify_checksums=True)
        except plyvel.Error as exc:
            raise storage_error(exc) from exc

    def scan(self, start: bytes, stop: bytes, *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        try:
            with self._h.iterator(start=start, stop=stop, reverse=reverse, verify_checksums=True) as it:
                yield from it
        except plyvel.Error as exc:
            raise storage_error(exc) from exc

    def scrub_scan(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Like scan (checksums verified), but leaves the block cache alone."""
        try:
            with self._h.iterator(start=start, stop=stop, verify_checksums=True, fill_cache=False) as it:
                yield from it
        except plyvel.Error as exc:
            raise storage_error(exc) from exc

    def write(self, batch: Sequence[Write], *, sync: bool = True) -> None:
        try:
            with self._h.write_batch(sync=sync) as wb:
                for key, value in batch:
                    if value is None:
                        wb.delete(key)
                    else:
                        wb.put(key, value)
        except plyvel.Error as exc:
            raise storage_error(exc) from exc

    def view(self) -> LevelDBView:
        return LevelDBView(self._h)

    def size(self) -> int:
        total = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.is_file():
                    total += entry.stat().st_size
        return total

    def compact(self) -> None:
        try:
            self._h.compact_range()
        except plyvel.Error as exc:
            raise storage_error(exc) from exc

    def close(self) -> None:
        if self._db is not None and not self._db.closed:
            self._db.close()

    def reopen(self) -> None:
        """Close and open the DB again: after a write error (disk full, EIO) LevelDB refuses
        every later write on the same handle, and only a new handle recovers. If the open fails,
        there is no handle (StorageError on every call) until a later reopen works."""
        self.close()
        self._db = None
        try:
            self._db = self._open()
        except StorageError as exc:
            self._down = str(exc)
            raise

    def size_in_use(self) -> int:
        """LevelDB's estimate of table bytes holding keys, plus the write-ahead log(s)."""
        if self._db is None:  # no handle to ask (a reopen failed): stats and metrics go on
            return self.size()
        tables = int(self._db.approximate_size(b"", b"\xff"))
        logs = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.endswith(".log") and entry.name != "LOG" and entry.is_file():
                    logs += entry.stat().st_size
        return tables + logs
