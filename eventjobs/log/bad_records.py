"""Records a service could not use: counted, and logged once per kind, never once per record.

Every consumer isolates each record it reads: one it cannot decode or act on is skipped (and,
where the service can write, quarantined or tombstoned) while everything after it flows. A flood
of bad records must not flood the log either, so `BadRecords` logs the first record of each kind
with its origin and reason, then only the running count at 10, 100, 1,000 ... of that kind; the
exact counts are attributes of the service (and `counts` here), and a service that serves
Prometheus metrics passes `count` (`Metrics.skipped`: `eventjobs_records_skipped_total`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any


def origin(record: Any) -> str:
    """`topic/partition@offset` of a consumed record."""
    return f"{record.topic}/{record.partition}@{record.offset}"


def describe_key(key: bytes | None) -> str:
    """A record key for a log line: its text, or its bytes when it is not UTF-8; never an error."""
    if key is None:
        return "no key"
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return f"key {key[:80]!r}"
    return f"key {text[:200]!r}"


class BadRecords:
    """Counts skipped records by kind; logs the first of each kind, then the count at powers of ten."""

    def __init__(self, logger: logging.Logger | str, service: str, *, action: str = "skipped",
                 count: Callable[[str], None] | None = None) -> None:
        self.log = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.service = service
        self.action = action
        self.counts: Counter[str] = Counter()
        self._count = count  # also counted there (a metric), by kind

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self, kind: str, where: str, reason: str) -> None:
        """Count one bad record of `kind` found at `where` (e.g. `topic/partition@offset, key ...`)."""
        self.counts[kind] += 1
        if self._count is not None:
            self._count(kind)
        count = self.counts[kind]
        if count == 1:
            self.log.error(
                "%s %s a bad record (%s) at %s: %s; further records of this kind are counted, not logged one by one",
                self.service, self.action, kind, where, _one_line(reason),
            )
        elif power_of_ten(count):
            self.log.error("%s has %s %d bad records of kind %r so far (latest at %s)",
                           self.service, self.action, count, kind, where)


def power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
