"""How busy the event loop is: how late it gets to run what is ready.

Everything a client asks runs on one event loop, so one kind of work that floods it (say
sending every write to 200 watch streams, one message and one sendmsg each) delays
everything else: health checks waited 176 ms at p50 in that case. The watch service reads
`lag` and, while the loop is late, lets events gather so each stream sends them merged: the
more loaded the loop, the fewer messages per event. Exported as
metastore_event_loop_lag_seconds.

`lag` is the worst lateness seen in the current and the previous WINDOW_S: it rises at once
and lets go a window or two after the loop calms, however many observations come in between.
"""

from __future__ import annotations

import asyncio
import time

INTERVAL_S = 0.01  # the timer: ~100 wake-ups a second, a fraction of a per cent of a core
WINDOW_S = 0.1


class LoopLag:
    """The loop's recent lateness in seconds, from a timer and from whoever else observes it."""

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.peak = 0.0  # the worst lateness seen since start
        self._start = 0.0
        self._current = 0.0  # worst in the window that began at _start
        self._previous = 0.0  # worst in the window before it

    @property
    def lag(self) -> float:
        now = time.monotonic()
        if now - self._start >= 2 * WINDOW_S:
            return 0.0  # nothing late was seen for two windows
        if now - self._start >= WINDOW_S:
            return self._current
        return max(self._current, self._previous)

    def observe(self, late: float) -> None:
        """Something ready ran `late` seconds after it could have."""
        now = time.monotonic()
        if now - self._start >= WINDOW_S:
            self._previous = self._current if now - self._start < 2 * WINDOW_S else 0.0
            self._current = 0.0
            self._start = now
        if late > self._current:
            self._current = late
            if late > self.peak:
                self.peak = late

    async def run(self) -> None:
        clock = time.monotonic
        while True:
            t0 = clock()
            await asyncio.sleep(self.interval_s)
            self.observe(clock() - t0 - self.interval_s)
