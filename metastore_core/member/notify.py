"""Wake coroutines when committed changes touch a key range (for Lock and Election waits)."""

from __future__ import annotations

import asyncio

from metastore_core.engine.keyrange import in_range
from metastore_core.pb.mvccpb.kv_pb2 import Event


class KeyNotifier:
    """A listener of committed events; `changed(key, end)` is an event set on the next change in range."""

    def __init__(self) -> None:
        self._waits: list[tuple[bytes, bytes, asyncio.Event]] = []

    def changed(self, key: bytes, end: bytes = b"") -> asyncio.Event:
        ev = asyncio.Event()
        self._waits.append((key, end, ev))
        return ev

    def forget(self, ev: asyncio.Event) -> None:
        self._waits = [w for w in self._waits if w[2] is not ev]

    def on_events(self, rev: int, events: list[Event]) -> None:
        if not self._waits:
            return
        keep = []
        for start, end, ev in self._waits:
            if any(in_range(e.kv.key, start, end) for e in events):
                ev.set()
            else:
                keep.append((start, end, ev))
        self._waits = keep
