"""Pausing CPython's cyclic garbage collector while a fold builds many objects that outlive it.

Used by the projector around each batch and by the processor around a partition's restore
(which decodes one state per job: 61.6 s of CPU for a million states with the collector on,
26.6 s with it off, `docs/benchmarks.md`). No I/O and no clock, so it sits with the core.

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

__all__ = ["collector_paused"]


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
