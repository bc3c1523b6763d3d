"""Short garbage collections: what survives a long full collection is frozen out of the next ones.

CPython's full collection walks every container object, and the store's index is two per
key: with 200,000 keys one full collection held the event loop for 0.17-1.3 s on this kind
of machine (more at a million), whatever the requests were doing. `gc.freeze()` moves every
live object to a generation the collector never walks; refcounting still frees them when
they go (a deleted key's history), only a reference cycle among them would stay. So after a
full collection longer than MAX_PAUSE_S, the survivors are frozen: the next full collections
walk only what was made since. Once at start-up, after a store of FREEZE_KEYS keys or more is
loaded and before serving, the same (1M keys: a full collection paused 0.24-0.30 s, each
time; frozen, 0.000 s); a smaller one collects fast enough. At stop `thaw` makes it all
collectable again (a process may start another server).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger("metastore.gc")

MAX_PAUSE_S = 0.02
FREEZE_KEYS = 50_000


class GCPauses:
    """Watches full collections (gc.callbacks) and freezes the survivors of a long one."""

    def __init__(self, max_pause_s: float = MAX_PAUSE_S) -> None:
        self.max_pause_s = max_pause_s
        self.last_pause = 0.0  # seconds the last full collection took
        self.worst_pause = 0.0
        self.freezes = 0
        self._started = 0.0

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def freeze(self) -> None:
        """Freeze everything alive now (the collection that just ended left no garbage)."""
        gc.freeze()
        self.freezes += 1

    def after_load(self, keys: int) -> None:
        """At start-up, a store of `keys` keys just loaded: from FREEZE_KEYS keys, collect once,
        then freeze what is left."""
        if keys < FREEZE_KEYS:
            return
        t0 = time.perf_counter()
        gc.collect()
        self.freeze()
        log.debug("froze %d objects after load (%.3fs)", gc.get_freeze_count(), time.perf_counter() - t0)

    def thaw(self) -> None:
        gc.unfreeze()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.last_pause = pause
        self.worst_pause = max(self.worst_pause, pause)
        if pause > self.max_pause_s:
            self.freeze()
            log.info(
                "a full garbage collection took %.3fs: froze %d objects out of the next ones",
                pause,
                gc.get_freeze_count(),
            )
