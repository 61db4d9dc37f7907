"""How far the projector is behind the event log, per partition: records behind and seconds.

Records behind a partition are its end offset (as Kafka last answered: the projector asks at
most every `PROJECTOR_END_OFFSETS_EVERY_S`) minus the next offset the projector will project.
That next offset is one past the last record written to ClickHouse and, once every record the
consumer returned is written, the consumer's position: the processor appends transactionally,
so the last offsets of a partition are usually transaction markers, which are never returned
as records; counted from the last projected record, a caught-up partition would stay behind.

Caught up means no record behind. The lag in seconds is 0 then; otherwise it is now minus the
log time of the last record projected on that partition (how long the projected view of it
has not been current), or, when none is known, since the projector started. It grows while
the projector is stalled (ClickHouse away, the process stopped while the log grows) and falls
to 0 when it catches up. `lag_of` is the rule, for the projector's metrics and the dashboard
alike; `LagTracker` holds what the projector knows, without I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from eventjobs.core.clock import SystemClock, from_epoch_ms


@dataclass(frozen=True)
class PartitionLag:
    """One partition of the event log, as far as the projector got."""

    partition: int
    #: the next offset to project (past the written records and the skipped markers)
    next_offset: int
    #: the log's end offset as last asked; None while Kafka has not answered
    end_offset: int | None
    #: the log time of the last record projected on the partition, if known
    last_projected_at: datetime | None
    #: `end_offset - next_offset`, at least 0; None while the end offset is unknown
    records_behind: int | None
    #: 0 when caught up, else the seconds since `last_projected_at` (or the projector's start)
    lag_s: float | None

    @property
    def caught_up(self) -> bool:
        return self.records_behind == 0


def lag_of(partition: int, next_offset: int, end_offset: int | None, last_projected_at: datetime | None,
           since: datetime, now: datetime) -> PartitionLag:
    """The rule of the module docstring. `since` stands in for `last_projected_at` when that is
    unknown (when the projector started); a time after `now` counts as now (no negative lag)."""
    if end_offset is None:
        return PartitionLag(partition, next_offset, None, last_projected_at, None, None)
    behind = max(0, end_offset - next_offset)
    lag_s = 0.0 if behind == 0 else max(0.0, (now - (last_projected_at or since)).total_seconds())
    return PartitionLag(partition, next_offset, end_offset, last_projected_at, behind, lag_s)


class LagTracker:
    """What the projector knows of each partition's progress; `lag(p)` applies `lag_of` at the time
    asked (a metric scrape reads it from another thread: each update replaces one dict entry)."""

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        now = now if now is not None else SystemClock().now
        self.now = now
        self.started_at = now()
        self.next_offsets: dict[int, int] = {}
        self.last_projected_at: dict[int, datetime] = {}
        self.end_offsets: dict[int, int] = {}

    def resumed(self, partition: int, next_offset: int, last_projected_at: datetime | None = None) -> None:
        """The projector (re)starts the partition at `next_offset` (a restart, a projection swap)."""
        self.next_offsets[partition] = next_offset
        if last_projected_at is not None:
            self.last_projected_at[partition] = last_projected_at

    def projected(self, partition: int, last_offset: int, log_time_ms: int) -> None:
        """A batch ending at `last_offset` (log time `log_time_ms`) of the partition is written."""
        self.next_offsets[partition] = max(self.next_offsets.get(partition, 0), last_offset + 1)
        self.last_projected_at[partition] = from_epoch_ms(log_time_ms)

    def passed(self, partition: int, position: int) -> None:
        """Every record before `position` is written (the consumer moved past markers too)."""
        self.next_offsets[partition] = max(self.next_offsets.get(partition, 0), position)

    def ended(self, end_offsets: dict[int, int]) -> None:
        """Kafka's answer: the log's end offset of each partition."""
        self.end_offsets.update(end_offsets)

    def lag(self, partition: int) -> PartitionLag:
        return lag_of(partition, self.next_offsets.get(partition, 0), self.end_offsets.get(partition),
                      self.last_projected_at.get(partition), self.started_at, self.now())

    def lags(self) -> list[PartitionLag]:
        return [self.lag(partition) for partition in sorted(self.next_offsets.keys() | self.end_offsets.keys())]

    def records_behind(self, partition: int) -> float:
        behind = self.lag(partition).records_behind
        return float("nan") if behind is None else float(behind)

    def lag_s(self, partition: int) -> float:
        lag_s = self.lag(partition).lag_s
        return float("nan") if lag_s is None else lag_s
