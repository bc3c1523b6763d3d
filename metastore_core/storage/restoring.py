"""What every restore does around the records: a new data dir, and the identity it starts with."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metastore_core.storage import layout as L
from metastore_core.storage.base import Write
from metastore_core.storage.datadir import DataDir
from metastore_core.storage.leveldb import LevelDBStorage

BATCH = 4096  # records per unsynced batch while filling; the last batch (the meta) is synced


def new_id() -> int:
    """A random non-zero 63-bit member or cluster ID."""
    return secrets.randbits(63) | 1


def check_empty(data_dir: str | os.PathLike[str]) -> None:
    """Refuse a data dir that exists and is not empty (before reading a whole snapshot)."""
    target = Path(data_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"data dir {target} exists and is not empty: refusing to restore into it")


@contextmanager
def new_store(data_dir: str | os.PathLike[str]) -> Iterator[LevelDBStorage]:
    """A fresh LevelDB in a data dir that is new or empty, locked while the caller fills it.

    If the caller fails, nothing is left behind but the (empty) data dir; on success the store
    is closed and the directory synced, so a daemon started next finds all of it.
    """
    check_empty(data_dir)
    target = Path(data_dir)
    dd = DataDir(target)
    dd.acquire()
    storage: LevelDBStorage | None = None
    try:
        storage = LevelDBStorage(dd.db_path)
        yield storage
        storage.close()
        storage = None
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        if storage is not None:
            storage.close()
        shutil.rmtree(dd.db_path, ignore_errors=True)
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
