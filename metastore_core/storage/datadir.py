"""The data directory: created 0700, held by one process through flock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "metastore.lock"
DB_NAME = "db"


class DataDirError(Exception):
    """The data dir cannot be used: not a directory, not writable, or held by another process."""


class DataDirInUse(DataDirError):
    """Another process holds the data dir."""


class DataDir:
    """Owns <data-dir>: its lock file and the LevelDB folder inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    def acquire(self) -> None:
        """Create the dir (mode 0700) and take its lock, failing at once if held."""
        if self.path.exists() and not self.path.is_dir():
            raise DataDirError(f"data dir {self.path} is not a directory")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirError(f"cannot use data dir {self.path}: {exc.strerror or exc}") from None
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

    def release(self) -> None:
        """Drop the lock; the dir stays."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
