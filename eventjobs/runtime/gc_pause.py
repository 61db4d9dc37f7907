"""Pausing CPython's cyclic garbage collector while a fold builds many objects that outlive it.

Used by the projector around each batch, by the processor around a partition's restore
(which decodes one state per job: 61.6 s of CPU for a million states with the collector on,
26.6 s with it off, `docs/benchmarks.md`) and by the schedule service while it loads its
partitions (`LoadPause`). No I/O and no clock, so it sits with the core.

Why this module exists: folding a batch decodes thousands of events and builds as many states
and rows, and most of them outlive the batch. Every 700 allocations the collector's youngest
generation is scanned, and everything the batch made so far is still young, so a 20,000-event
batch was scanned over and over: measured on the read side's log, folding ran at 40,000 events/s
with the collector on and 61,000 with it paused (`docs/benchmarks.md`). The folds create no
reference cycles, and reference counting frees everything as usual while paused; a cycle made
elsewhere meanwhile (an exception's traceback, say) waits for the first collection after the
batch.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SERVICE_THRESHOLDS", "LoadPause", "collector_paused", "tune_for_service"]

#: The cyclic collector's thresholds in a long-running service (CPython's default: 700, 10, 10).
SERVICE_THRESHOLDS = (50_000, 20, 100)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block, if it is enabled (process-wide, as gc is).

    Re-enables it afterwards only if this call disabled it, so a caller who turned the collector
    off, or an overlapping pause in another thread, is left as it was (at worst that pause ends
    early, which costs speed, never memory).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def tune_for_service() -> None:
    """Collect less often in a long-running service, and never scan what start-up made.

    A processor or a worker allocates container objects for every event (decoded models, dicts,
    futures) that reference counting frees at once; yet every 700 of them made the collector scan
    its youngest generation, every 10th such scan the middle one, and every 100th the whole heap,
    which holds the processor's table of retained jobs and the timer index. Measured at full load
    (`benchmarks/bench_throughput.py`, docs/benchmarks.md): 26 % of the processor's and of the
    worker's CPU went to the collector with the default thresholds, 3 % with these. Cycles are
    still collected, after 50,000 allocations instead of 700; `gc.freeze()` moves what start-up
    made (modules, the app, its handlers) where no collection scans it again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVICE_THRESHOLDS)


class LoadPause:
    """Pauses the cyclic collector while a service loads state that outlives the load, across
    awaits, and then moves what the load made where no collection scans it (`gc.freeze`).

    Loading 100,000 schedules makes millions of container objects; with the collector on, the
    scans of a growing heap held the event loop for 0.5 to 2 s at a time, and pausing alone only
    moves that scan to the first collection after the pause (everything made meanwhile is still
    in the youngest generation). Frozen objects are still freed by reference counting when they
    are dropped; what a freeze keeps for good is only cyclic garbage made during the pause (a
    caught exception's traceback, say), a bounded amount per load. Like `collector_paused`, it
    leaves a collector that someone else turned off as it was.
    """

    def __init__(self) -> None:
        self.paused = False

    def start(self) -> None:
        if not self.paused and gc.isenabled():
            gc.disable()
            self.paused = True

    def end(self) -> None:
        if self.paused:
            gc.freeze()
            gc.enable()
            self.paused = False
