"""Latency histograms the member keeps for /metrics (etcd's disk and mvcc durations).

Plain integers, updated where the work happens (the commit writer thread, maintenance calls)
and turned into Prometheus histograms only when /metrics is scraped. One writer per histogram:
a scrape that races an update may see a count one ahead of the sum, never a torn value.
"""

from __future__ import annotations

import bisect


def exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    """prometheus.ExponentialBuckets: start, start*factor, ... (count upper bounds)."""
    return tuple(start * factor**i for i in range(count))


# etcd's buckets for the same figures (server/wal, mvcc/backend and mvcc metrics.go, v3.5)
DISK = exponential(0.001, 2, 14)  # wal fsync and backend commit: 1 ms .. 8 s
DEFRAG = exponential(0.1, 2, 13)  # 0.1 s .. 410 s
SNAPSHOT = exponential(0.01, 2, 17)  # 10 ms .. 655 s
HASH = exponential(0.01, 2, 15)  # 10 ms .. 164 s


class Durations:
    """Cumulative-bucket counts, the sum and the count of observed durations, in seconds."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), +Inf last, as Prometheus buckets read."""
        out, acc = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out
