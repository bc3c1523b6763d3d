"""What every restore does around the records: a new data dir, and the identity it starts with."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from metastore_core.storage import layout as L
from metastore_core.storage.base import Write
from metastore_core.storage.datadir import DataDir, fsync_dir
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.watermark import Mark, Watermark

BATCH = 4096  # records per unsynced batch while filling; the last batch (the meta) is synced


def new_id() -> int:
    """A random non-zero 63-bit member or cluster ID."""
    return secrets.randbits(63) | 1


def check_empty(data_dir: str | os.PathLike[str]) -> None:
    """Refuse a data dir that exists and is not empty (before reading a whole snapshot)."""
    target = Path(data_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"data dir {target} exists and is not empty: refusing to restore into it")


@dataclass
class Filling:
    """A new store being filled by a restore; the caller sets `mark` to where the store ends."""

    storage: LevelDBStorage
    mark: Mark = field(default_factory=lambda: Mark(0, 0))


@contextmanager
def new_store(data_dir: str | os.PathLike[str]) -> Iterator[Filling]:
    """A fresh LevelDB in a data dir that is new or empty, locked while the caller fills it.

    If the caller fails, nothing is left behind but the (empty) data dir. On success the store
    is closed, its watermark written (at the caller's mark) and then the data dir's marker, and
    the directory synced, so a daemon started next finds all of it and accepts it as ours.
    """
    check_empty(data_dir)
    target = Path(data_dir)
    created = not target.exists()
    dd = DataDir(target)
    dd.acquire()
    storage: LevelDBStorage | None = None
    try:
        storage = LevelDBStorage(dd.db_path)
        filling = Filling(storage)
        yield filling
        storage.close()
        storage = None
        Watermark.create(target, filling.mark).close()
        dd.mark()
        fsync_dir(target)
    except BaseException:
        if storage is not None:
            storage.close()
        dd.release()
        # leave the dir as we found it, so the same restore can simply be run again
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for name in os.listdir(target):
                entry = target / name
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        raise
    finally:
        dd.release()


def identity(
    *, cluster_id: int, member_id: int, raft_term: int, consistent_index: int, compact: int, crc: bool
) -> list[Write]:
    """The meta records a restored store starts from; start-up finishes the compaction at `compact`."""
    return [
        (L.META_FORMAT, L.FORMAT_VERSION),
        (L.META_CRC, L.CRC_IEEE if crc else L.CRC_NONE),
        (L.META_CLUSTER_ID, L.u64(cluster_id)),
        (L.META_MEMBER_ID, L.u64(member_id)),
        (L.META_RAFT_TERM, L.u64(raft_term)),
        (L.META_CONSISTENT_INDEX, L.u64(consistent_index)),
        (L.META_COMPACT_REV, L.u64(0)),
        (L.META_SCHEDULED_COMPACT_REV, L.u64(compact)),
    ]
