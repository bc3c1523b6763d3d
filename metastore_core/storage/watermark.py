"""The watermark: the last durable write, kept outside LevelDB in <data-dir>/metastore.watermark.

LevelDB silently drops a truncated tail of its write-ahead log (a cut last record reads as the
end of the log) and does not miss a deleted log file; a store damaged that way opens fine,
older than what was acknowledged (26 acknowledged writes vanished in the issue's test). Every
batch already carries the consistent index (layout.META_CONSISTENT_INDEX); the watermark keeps
a second copy where the log's damage cannot reach it, and start-up refuses a store that comes
back behind it.

The guarantee: the committer writes the watermark (one pwrite, into the page cache) after each
synced batch and before anyone hears of it, and syncs it at most SYNC_INTERVAL_S later (and at
close), so:
- while the machine stays up, every acknowledged write is at or below the watermark the next
  start reads: a store that lost any of them to outside damage (a truncated or deleted log) is
  refused;
- after a power loss the watermark may be up to SYNC_INTERVAL_S behind (never ahead: it is
  written after the batch is synced), so only damage to the log in that last second before the
  loss would go unnoticed, and a crash never causes a false refusal.
Syncing the watermark on every batch as well (a second fdatasync per batch) cost one client
26-43 % of its puts per second (put@1, same-run A/B) for that last second after a power loss.
With --unsafe-no-fsync nothing is synced per batch; the watermark is written at shutdown only.

It also carries the alarm types this member raised while its store could not take a write
(disk full): the store never saw those alarms, so this is where a restart finds them. They stay
until the store holds them (member/guard.py clears them after a successful write).

Layout: two 512-byte slots (one sector each, so a torn write spoils at most one), written in
turn; each holds
    magic 8 bytes b"MSTWMRK1", seq u64, index u64, revision u64, alarms u32 (bit n = alarm
    type n), crc u32 (CRC32 of the bytes before it), zero padding.
The valid slot with the higher seq is the watermark. The file keeps its size, so a write needs
no free space: it works on a full disk.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from metastore_core.storage.base import StorageError
from metastore_core.storage.datadir import fsync_dir

NAME = "metastore.watermark"
SYNC_INTERVAL_S = 1.0  # a written watermark reaches the disk at most this much later
MAGIC = b"MSTWMRK1"
SLOT = 512
_BODY = struct.Struct(">8sQQQI")
_CRC = struct.Struct(">I")


class WatermarkError(StorageError):
    """The watermark is missing or unreadable, or the store is behind it."""


@dataclass(frozen=True)
class Mark:
    """The newest durable (consistent index, revision), and alarms the store could not take."""

    index: int
    revision: int
    alarms: frozenset[int] = field(default_factory=frozenset)


def _encode(seq: int, mark: Mark) -> bytes:
    bits = sum(1 << a for a in mark.alarms)
    body = _BODY.pack(MAGIC, seq, mark.index, mark.revision, bits)
    return (body + _CRC.pack(zlib.crc32(body))).ljust(SLOT, b"\0")


def _decode(slot: bytes) -> tuple[int, Mark] | None:
    """(seq, mark) of a valid slot, or None."""
    if len(slot) < _BODY.size + _CRC.size:
        return None
    body = slot[: _BODY.size]
    (crc,) = _CRC.unpack_from(slot, _BODY.size)
    magic, seq, index, revision, bits = _BODY.unpack(body)
    if magic != MAGIC or crc != zlib.crc32(body):
        return None
    return seq, Mark(index, revision, frozenset(a for a in range(32) if bits >> a & 1))


class Watermark:
    """The open watermark file of one data dir."""

    def __init__(self, path: Path, fd: int, seq: int, mark: Mark) -> None:
        self.path = path
        self._fd = fd
        self._seq = seq
        self.mark = mark  # the last one written (or read at open)
        self._lock = threading.Lock()  # the writer thread, the loop and recovery all write it
        self._dirty = False  # written since the last sync
        self._synced_at = 0.0

    @classmethod
    def create(cls, data_dir: Path, mark: Mark) -> Watermark:
        """Write a new watermark file (both slots) into data_dir, durably."""
        path = data_dir / NAME
        tmp = data_dir / (NAME + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _encode(1, mark) + _encode(0, mark))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.replace(tmp, path)
        fsync_dir(data_dir)
        return cls(path, fd, 1, mark)

    @classmethod
    def open(cls, data_dir: Path) -> Watermark:
        """Open data_dir's watermark; WatermarkError when it is missing or both slots are bad."""
        path = data_dir / NAME
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise WatermarkError(f"{path} is missing") from None
        try:
            slots = [_decode(os.pread(fd, SLOT, i * SLOT)) for i in range(2)]
        except BaseException:
            os.close(fd)
            raise
        valid = [s for s in slots if s is not None]
        if not valid:
            os.close(fd)
            raise WatermarkError(f"{path} is damaged (no valid slot)")
        seq, mark = max(valid, key=lambda s: s[0])
        return cls(path, fd, seq, mark)

    def write(self, mark: Mark, *, sync: bool = True) -> None:
        """Replace the watermark (the older slot), durably unless sync is off."""
        with self._lock:
            self._write(mark, sync)

    def advance(self, index: int, revision: int, now: float) -> None:
        """Raise the durable index and revision (never lower them); alarms stay as they are.

        Written at once, synced when the last sync is SYNC_INTERVAL_S old (see the module doc)."""
        with self._lock:
            if index > self.mark.index:
                self._write(Mark(index, revision, self.mark.alarms), False)
            if self._dirty and now - self._synced_at >= SYNC_INTERVAL_S:
                self._sync(now)

    def sync(self, now: float) -> None:
        """Make the last written watermark durable (a periodic tick, and close)."""
        with self._lock:
            if self._dirty:
                self._sync(now)

    def _sync(self, now: float) -> None:
        os.fdatasync(self._fd)
        self._dirty = False
        self._synced_at = now

    def set_alarms(self, alarms: frozenset[int]) -> None:
        """Replace the alarms kept here (the store could not take them, or now has them)."""
        with self._lock:
            if alarms != self.mark.alarms:
                self._write(Mark(self.mark.index, self.mark.revision, alarms), True)

    def _write(self, mark: Mark, sync: bool) -> None:
        seq = self._seq + 1
        os.pwrite(self._fd, _encode(seq, mark), (seq % 2) * SLOT)
        self._dirty = True
        if sync:
            self._sync(self._synced_at)
        self._seq = seq
        self.mark = mark

    def close(self) -> None:
        if self._fd >= 0:
            if self._dirty:
                os.fdatasync(self._fd)
                self._dirty = False
            os.close(self._fd)
            self._fd = -1
