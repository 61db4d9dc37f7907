"""Flow control by idempotency key: uniqueness windows (``unique_for``) and ``debounce``.

Why this module exists: a window must be decided by one owner, from event time, so that a replay
reaches the same decision. It builds on the idempotency key's mechanism (same key -> same job id
-> same partition -> the processor that owns it sees the first ``enqueued`` and decides the rest)
by adding the window to what the job id is derived from:

    job id = job_id_for_key(name, key + window size + window number)
    window number = floor(occurred_at in epoch ms / window size in ms)

so the windows are fixed (tumbling) intervals ``[n*W, (n+1)*W)`` of the ``enqueued`` event's
``occurred_at``. Within a window every enqueue of the key names the same job, on the same
partition; the next window names another job, so a new job runs after the window without
colliding with the retained earlier one. The id is a pure function of the event, so the caller
knows the winner's id when it enqueues, and replaying the log decides exactly as before. The
processor keeps a windowed job at least until its window ends (``housekeeping``), so its id
cannot be taken again inside the window after the job finished.

What the owner then decides (``fold``): a second enqueue of a ``unique_for`` window is refused
(``duplicate_rejected``) whatever the earlier job's state; a second enqueue of a ``debounce``
window replaces the args of the job while it has not started, and puts its start back to
``debounce`` after that enqueue (``debounced``); once started, it is refused.

Pure (no I/O): ``enqueue_verdict`` tells a producer what became of its enqueue from the job's
state in the changelog (``App.enqueue_unique``).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import NamedTuple

from eventjobs.core.clock import epoch_ms, from_epoch_ms
from eventjobs.core.ids import job_id_for_key
from eventjobs.core.state import JobState, JobStatus

__all__ = ["Verdict", "Window", "enqueue_verdict", "window_end", "window_of", "windowed_job_id"]


class Window(NamedTuple):
    """One fixed window of event time: number ``index`` of size ``size_ms``, ``[start, end)``."""

    number: int
    size_ms: int
    start: datetime
    end: datetime


def window_of(at: datetime, window_s: float) -> Window:
    """The window of ``window_s`` seconds (whole milliseconds, at least 1) that holds ``at``."""
    size_ms = max(1, round(window_s * 1000))
    index = epoch_ms(at) // size_ms
    return Window(index, size_ms, from_epoch_ms(index * size_ms), from_epoch_ms((index + 1) * size_ms))


def windowed_job_id(namespace: str, key: str, window_s: float, at: datetime) -> str:
    """The job id of key ``key`` (of job type ``namespace``) in the window of ``window_s`` that holds ``at``.

    The window size is part of the id, so two sizes for one key never name the same job.
    """
    window = window_of(at, window_s)
    return job_id_for_key(namespace, f"{key}\x1fwindow:{window.size_ms}:{window.number}")


def window_end(state: JobState) -> datetime | None:
    """When the window of a windowed job ends (from its first enqueue's time); None for other jobs."""
    options = state.options
    window_s = options.unique_for_s or options.debounce_s
    if window_s is None:
        return None
    return window_of(state.enqueued_at, window_s).end


#: The statuses in which a debounced job still takes new args (and only if it never started).
DEBOUNCE_OPEN = frozenset({JobStatus.SCHEDULED, JobStatus.PENDING})


def debounce_open(state: JobState) -> bool:
    """Whether a new enqueue may still replace the job's args: it has not started, nor been cancelled."""
    return state.status in DEBOUNCE_OPEN and state.attempts_started == 0 and not state.cancel_requested


class Verdict(enum.Enum):
    """What became of one enqueue of a windowed job."""

    WON = "won"  #: it created the job
    REPLACED = "replaced"  #: debounce: it replaced the waiting job's args and put its start back
    REFUSED = "refused"  #: another enqueue won the window (the job's id is the winner's)


def runs_again(state: JobState) -> bool:
    """Whether a later enqueue of ``state``'s window starts the job again (same id, a new run):
    its ``unique_states`` leave out the status the job ended in."""
    states = state.options.unique_states
    return states is not None and state.status.value not in states


def enqueue_verdict(state: JobState, event_id: str, replaced_id: str) -> Verdict | None:
    """The verdict on the enqueue ``event_id`` as the job's state ``state`` shows it, or None (not decided yet).

    ``replaced_id`` is the id of the ``debounced`` event that enqueue derives if it replaces the
    args. A state created by another enqueue decides a ``unique_for`` enqueue at once (the job
    exists, so it is refused); a debounce enqueue is refused once the job can take no new args
    without it having done so (it started, or was cancelled, before the enqueue was applied).
    """
    if state.enqueued_event_id == event_id:
        return Verdict.WON
    if runs_again(state):  # the enqueue will start the job again: decided once the state shows it
        return None
    if state.options.debounce_s is None:
        return Verdict.REFUSED
    if replaced_id in state.recent_event_ids:
        return Verdict.REPLACED
    return None if debounce_open(state) else Verdict.REFUSED
