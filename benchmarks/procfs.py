"""What the harness reads about a server process from /proc (Linux only)."""

from __future__ import annotations

import contextlib
import os

_TICK = os.sysconf("SC_CLK_TCK")


def _own_cpu(pid: int) -> tuple[int, int]:
    """(utime, stime) ticks of pid's threads plus its waited-for children."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[13]), int(fields[12]) + int(fields[14])


def descendants(pid: int) -> list[int]:
    """Live child processes of pid, and theirs, from /proc/<pid>/task/*/children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out.extend(kids)
                todo.extend(kids)
    return out


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of pid and every process it started: user code, and the
    kernel on its behalf. Helpers a server forks are its cost too."""
    user, system = _own_cpu(pid)
    for kid in descendants(pid):
        with contextlib.suppress(OSError):
            u, s = _own_cpu(kid)
            user, system = user + u, system + s
    return user / _TICK, system / _TICK


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of pid, in seconds."""
    user, system = cpu_split(pid)
    return user + system


def status_kib(pid: int, name: str) -> int:
    """A 'kB' line of /proc/<pid>/status, e.g. VmHWM (peak RSS) or VmRSS."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def dir_bytes(path: str) -> int:
    """Apparent size of every file under path."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # LevelDB/etcd may delete files meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
