"""The data directory: ours by its marker, held by one process through flock.

    <data-dir>/metastore.datadir   the marker, written once the store exists (never changed)
    <data-dir>/metastore.lock      flock'ed by the daemon that holds the dir; holds its PID
    <data-dir>/metastore.watermark the last durable index and revision (watermark.py)
    <data-dir>/metastore.index     the key index as of a clean shutdown (mvcc/checkpoint.py)
    <data-dir>/db/                 the LevelDB store, created 0700

Rules, so that a damaged or foreign directory is never "repaired" into an empty store:
- a missing or empty dir is ours to initialise: db/ is created, then the marker;
- a dir with the marker must still have its store (db/CURRENT): otherwise it is refused and
  left untouched (LevelDB's create-if-missing would start an empty store and delete the
  tables it does not know, which lost 3,000 of 3,050 keys when CURRENT was deleted);
- a dir without the marker that holds anything but our own files is refused, never chmod'ed
  (`--data-dir /tmp` must not lock other users out of /tmp); one holding a LevelDB store with
  its CURRENT, from before markers existed, is adopted.
"""

from __future__ import annotations

import fcntl
import os
from enum import Enum
from pathlib import Path

LOCK_NAME = "metastore.lock"
MARKER_NAME = "metastore.datadir"
DB_NAME = "db"
MARKER_TEXT = b"metastore data dir, format 1\n"
# Everything we ever put at the top of a data dir (server/lifecycle.py keeps its shutdown report
# here); a dir without the marker that holds nothing else is ours from before markers existed.
OWN_NAMES = frozenset(
    {LOCK_NAME, MARKER_NAME, MARKER_NAME + ".tmp", DB_NAME}
    | {
        "metastore.watermark",
        "last-shutdown.json",
        "last-shutdown.tmp",
        "metastore.index",
        "metastore.index.tmp",
    }
)
# What LevelDB leaves in a directory it failed to create a store in (no data in any of them).
_EMPTY_STORE = frozenset({"LOCK", "LOG", "LOG.old"})


class DataDirError(Exception):
    """The data dir cannot be used as it is; the message says why and what to do."""


class DataDirInUse(DataDirError):
    """Another process holds the data dir."""


class Store(Enum):
    """What acquire() found of the LevelDB store."""

    NEW = "new"  # none yet: create it, then mark the dir
    MARKED = "marked"  # the marker and the store are there
    UNMARKED = "unmarked"  # a store from before markers: open it, then mark the dir


class DataDir:
    """Owns <data-dir>: its marker, its lock file and the LevelDB folder inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = Store.NEW
        self._lock_fd: int | None = None

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    @property
    def marked(self) -> bool:
        return self.store is Store.MARKED

    def acquire(self) -> None:
        """Check the dir is ours (creating it 0700 when missing) and take its lock, or raise."""
        path = self.path
        if not path.exists():
            try:
                path.mkdir(mode=0o700, parents=True)
            except OSError as exc:
                raise DataDirError(f"cannot create data dir {path}: {exc.strerror}") from None
        elif not path.is_dir():
            raise DataDirError(f"data dir {path} is not a directory")
        names = set(os.listdir(path))
        if MARKER_NAME in names:
            if (path / MARKER_NAME).read_bytes() != MARKER_TEXT:
                raise DataDirError(f"data dir {path}: {MARKER_NAME} is damaged; refusing to use the dir")
        elif not names <= OWN_NAMES:
            raise DataDirError(
                f"data dir {path} is not empty and is not a metastore data dir (no {MARKER_NAME}); "
                "refusing to use it: give a new or empty directory"
            )
        self._lock()
        try:
            self.store = self._find_store(MARKER_NAME in names)
            if self.store is Store.NEW:
                self.db_path.mkdir(mode=0o700, exist_ok=True)
        except BaseException:
            self.release()
            raise

    def _find_store(self, marked: bool) -> Store:
        db = self.db_path
        if (db / "CURRENT").is_file():
            return Store.MARKED if marked else Store.UNMARKED
        what = f"{DB_NAME}/CURRENT" if db.is_dir() else f"{DB_NAME}/"
        if marked:
            raise DataDirError(
                f"data dir {self.path} holds a metastore store, but {what} is missing; refusing to "
                "start and leaving the dir untouched (restore a snapshot into a new dir with "
                "`metastore snapshot restore`)"
            )
        if db.is_dir() and not set(os.listdir(db)) <= _EMPTY_STORE:
            raise DataDirError(
                f"data dir {self.path}: {DB_NAME}/ holds files but no CURRENT; refusing to start and "
                "leaving the dir untouched"
            )
        return Store.NEW

    def _lock(self) -> None:
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # EROFS, EACCES: a storage problem, not corruption
            raise DataDirError(
                f"data dir {self.path} is not writable ({exc.strerror}); refusing to start"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"data dir {self.path} is in use by another metastore process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def mark(self) -> None:
        """Write the marker (durably): the store exists now, and from here on must."""
        if self.store is Store.MARKED:
            return
        tmp = self.path / (MARKER_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, MARKER_TEXT)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / MARKER_NAME)
        fsync_dir(self.path)
        self.store = Store.MARKED

    def release(self) -> None:
        """Drop the lock; the dir stays."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in path durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
