"""Auto-compaction policies, as etcd's `--auto-compaction-mode` / `--auto-compaction-retention`.

Pure: the caller passes the time and the current revision and gets back the revision to
compact to (or None). The server runs `tick` every `interval` seconds.

- periodic, retention R (a duration; a bare number means hours): the revision is sampled
  every min(R, 1h)/10; every min(R, 1h), once R has passed since start, compact to the newest
  sample that is at least R old, so the last R of history is always kept.
- revision, retention N: every 5 minutes compact to current - N (when that moved on).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

HOUR = 3600.0
REVISION_INTERVAL = 300.0  # etcd's revision compactor checks every 5 minutes

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": HOUR}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Go-style duration ("90s", "1h30m", "0.5h") or a bare number of hours, in seconds."""
    text = text.strip()
    try:
        return float(text) * HOUR
    except ValueError:
        pass
    pos, total = 0, 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}: want e.g. 1h, 30m, 90s or a number of hours")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError("empty duration")
    return total


@dataclass
class Periodic:
    """Keep `retention` seconds of history."""

    retention: float
    start: float
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    last_compact: float = 0.0

    def __post_init__(self) -> None:
        self.last_compact = self.start

    @property
    def period(self) -> float:
        return min(self.retention, HOUR)

    @property
    def interval(self) -> float:
        """How often tick wants to run (the sampling step)."""
        return self.period / 10

    def tick(self, now: float, rev: int) -> int | None:
        self.samples.append((now, rev))
        horizon = now - self.retention
        # drop samples that are older than the newest one that is at least `retention` old
        while len(self.samples) > 1 and self.samples[1][0] <= horizon + 1e-9:
            self.samples.popleft()
        if now - self.start + 1e-9 < self.retention or now - self.last_compact + 1e-9 < self.period:
            return None
        t, target = self.samples[0]
        if t > horizon + 1e-9:
            return None
        self.last_compact = now
        return target


@dataclass
class Revisional:
    """Keep the last `retention` revisions."""

    retention: int
    interval: float = REVISION_INTERVAL
    last: int = 0

    def tick(self, now: float, rev: int) -> int | None:
        target = rev - self.retention
        if target <= 0 or target <= self.last:
            return None
        self.last = target
        return target


Policy = Periodic | Revisional


def make_policy(mode: str, retention: str, now: float) -> Policy | None:
    """The policy for the flags, or None when auto-compaction is off (retention 0 or empty)."""
    retention = (retention or "").strip()
    if retention in ("", "0"):
        return None
    if mode == "periodic":
        seconds = parse_duration(retention)
        if seconds <= 0:
            return None
        return Periodic(seconds, now)
    if mode == "revision":
        try:
            n = int(retention)
        except ValueError:
            raise ValueError(f"invalid revision retention {retention!r}: want a whole number") from None
        return Revisional(n) if n > 0 else None
    raise ValueError(f"unknown auto-compaction mode {mode!r}: want periodic or revision")
