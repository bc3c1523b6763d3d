"""The integrity of a member's store: the watermark check at load, and the scrub (at start-up and
every --corrupt-check-interval).

A mismatch found by a scrub is reported to the write guard, which raises
CORRUPT through apply and refuses writes from then on; bad bytes are never
served (reads check them too, see storage/layout.py RecordCodec).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from metastore_core.mvcc.store import MVCCStore
from metastore_core.storage.base import StorageError
from metastore_core.storage.layout import CorruptRecord
from metastore_core.storage.scrub import ScrubReport, scrub
from metastore_core.storage.watermark import Mark, Watermark, WatermarkError

log = logging.getLogger(__name__)


class Integrity:
    """Runs scrubs on a worker thread and reports what they find."""

    def __init__(self, store: MVCCStore, report: Callable[[Exception], None], interval_s: float) -> None:
        self._store = store
        self._report = report
        self.interval_s = interval_s
        self.scrubs = 0

    async def check(self) -> ScrubReport:
        """Scrub every record now (off the event loop)."""
        store = self._store
        report = await asyncio.to_thread(scrub, store.storage, store.codec)
        self.scrubs += 1
        return report

    async def check_on_start(self) -> None:
        """--corrupt-check-on-start: refuse to start on any bad record."""
        t0 = time.monotonic()
        report = await self.check()
        if not report.ok:
            raise StorageError(
                "corruption found by --corrupt-check-on-start; refusing to start: "
                + "; ".join(report.problems)
            )
        log.info("corrupt check: %d records verified in %.2fs", report.records, time.monotonic() - t0)

    async def run(self) -> None:
        """The periodic scrub loop (every member checks its own storage)."""
        while True:
            await asyncio.sleep(self.interval_s)
            report = await self.check()
            if not report.ok:
                self._report(CorruptRecord("; ".join(report.problems)))


def settle_watermark(store: MVCCStore, watermark: Watermark, *, accept_lost: bool) -> None:
    """Refuse a store that came back behind its watermark (unless accept_lost), then bring the
    watermark up to the store (a kill between a batch and its watermark leaves the store ahead)."""
    mark = watermark.mark
    have, rev = store.consistent_index, store.committed_rev
    if have < mark.index:
        text = (
            f"the store came back older than its last acknowledged write: it holds index {have} "
            f"(revision {rev}), {watermark.path.name} says index {mark.index} (revision "
            f"{mark.revision}): {mark.index - have} acknowledged commands are missing (a truncated or "
            "deleted write-ahead log?)"
        )
        if not accept_lost:
            raise WatermarkError(
                f"{text}; refusing to start (--unsafe-accept-lost-writes starts at revision {rev})"
            )
        log.error("%s; starting anyway at revision %d (--unsafe-accept-lost-writes)", text, rev)
    if (have, rev) != (mark.index, mark.revision):
        watermark.write(Mark(have, rev, mark.alarms))
