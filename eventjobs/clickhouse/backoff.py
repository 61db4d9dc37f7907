"""Capped exponential backoff for reconnecting to ClickHouse (the projector never skips, it waits)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays of 0.2 s, 0.4 s, 0.8 s ... capped at `cap_s`; `reset()` after a success.

    The projector calls `next_delay_s()` after every failed write and sleeps that long before
    trying the same batch again, so an outage costs latency, never data.
    """

    base_s: float = 0.2
    cap_s: float = 10.0
    failures: int = 0

    def next_delay_s(self) -> float:
        """The delay before the next try, counting this failure."""
        delay = min(self.base_s * (2.0 ** min(self.failures, 30)), self.cap_s)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Forget past failures (call after a successful write)."""
        self.failures = 0
