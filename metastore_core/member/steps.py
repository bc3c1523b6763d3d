"""Driving work done in steps (engine/reads.py, Applier.apply_steps) on the event loop.

A step is a few hundred keys of work; `drive` runs steps back to back and gives the loop a
turn whenever SLICE_S has passed, so one long read or write never holds the loop for longer.
A health check crosses the loop several times, so the slice is short.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

from metastore_core.engine.reads import Steps

T = TypeVar("T")
SLICE_S = 0.002


async def drive(steps: Steps[T]) -> T:
    """Run steps to the end, giving the event loop a turn once a slice of SLICE_S has passed."""
    clock = time.perf_counter
    end = clock() + SLICE_S
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
        if clock() >= end:
            await asyncio.sleep(0)
            end = clock() + SLICE_S
