"""Size budgets: how large args, results, errors and reasons may be, derived from one limit.

Why this module exists: every record the system writes must fit the one configured limit
``max_event_bytes`` (``EVENTJOBS_MAX_EVENT_BYTES``, default 1 MiB), and some records combine
what several events carried. The processor's job state holds the job's args and options, its
result, its last error (message and traceback), a reason and the progress message all at once;
the derived ``failed`` and ``dead_lettered`` events and the dead-letter record copy the error
and add a reason. So each part gets a budget, and the budgets add up to less than the limit.
Writers enforce them where the data enters (``LogWriter.append`` for args, ``outcome_event`` for
results and errors, the command builders for reasons), and ``codec.admit`` refuses records of
other producers that exceed them, so a record over the limit cannot arise in the processor.

The arithmetic, with ``L = max_event_bytes`` (all sizes are bytes of JSON as orjson writes it,
so one character costs 1 to 6 bytes: ``\\u0001`` is 6):

* ``RESERVE = 128 KiB`` holds everything whose size is bounded by the event schema, whatever
  ``L`` is: the progress message (10,000 characters, at most 60,002 bytes), a free-text reason
  (``MAX_REASON_BYTES`` = 16 KiB), an error type (500 characters, 3,002 bytes) twice (the last
  error and the "not retryable: <type>" reason), a worker id (1,202), eight recent event ids
  plus five other ids of at most 128 characters (13 x 770), about 14 timestamps and the field
  names and numbers of a state (about 3 KB): about 94 KB in all, so 128 KiB leaves 30 KB spare.
* ``U = L - RESERVE`` is shared out: the enqueued event (args, options, idempotency key and its
  envelope) ``3/8 U``; a result ``3/8 U``; an error message ``1/16 U``; a traceback ``1/16 U``.
  That is ``7/8 U``, so at least ``U/8`` of the limit stays free as headroom.

For the default ``L = 1,048,576``: ``U = 917,504``; enqueued event (args) 344,064; result
344,064; message 57,344; traceback 57,344; headroom 114,688 + what the reserve does not use.
The state of a job is at most args + result + message + traceback + reserve = 933,888 bytes
(about 89 % of L). A derived ``failed`` / ``dead_lettered`` event, the dead-letter record and
an ``attempt_failed`` event carry at most message + traceback + a reason + an envelope (under
200 KB); ``completed`` and ``attempt_succeeded`` a result + an envelope; a ready record the
enqueued event's args and options. Each fits ``L``; the topics' ``max.message.bytes`` (2 MiB)
adds the room for Kafka's own record and batch headers.

``L`` must be at least ``MIN_MAX_EVENT_BYTES`` (256 KiB), so that ``U >= 128 KiB``.

Truncation (``truncate_text``) keeps the start of a message, and the start and the end of a
traceback (where the outer call and the raising frame are), and says where text was cut and
how long the original was: ``… [truncated: 2,000,000 chars]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "MAX_ERROR_TYPE_CHARS",
    "MAX_DEPENDENCIES",
    "MAX_DEPENDENCY_RESULTS_BYTES",
    "MAX_DEPENDENTS",
    "MAX_PROBE_HOPS",
    "MAX_PROBE_ORIGINS_KEPT",
    "MAX_REVIVABLE_DEPENDENTS",
    "MAX_PROGRESS_MESSAGE_CHARS",
    "RECENT_ENQUEUES_KEPT",
    "MAX_REASON_BYTES",
    "MAX_BATCH_ID_CHARS",
    "MAX_WINDOW_S",
    "MIN_WINDOW_S",
    "MAX_CATCH_UP_TICKS",
    "MAX_CRON_CANDIDATES",
    "MIN_MAX_EVENT_BYTES",
    "MIN_SCHEDULE_EVERY_S",
    "PROJECTOR_END_OFFSETS_EVERY_S",
    "SCHEDULE_HORIZON_DAYS",
    "SCHEDULE_LATE_AFTER_S",
    "RESERVE_BYTES",
    "RATE_START_LAG_S",
    "RATE_LATE_S",
    "SizeLimits",
    "json_size",
    "size_limits",
    "truncate_text",
]

#: Largest encoded event accepted by default (1 MiB), in bytes.
DEFAULT_MAX_EVENT_BYTES = 1_048_576
#: The smallest ``max_event_bytes`` the budgets below work with.
MIN_MAX_EVENT_BYTES = 262_144
#: Room kept for the schema-bounded parts of a state or event (see the module docstring).
RESERVE_BYTES = 131_072
#: Free-text reasons (cancel, dead-letter retry, discard, expiry), as JSON bytes.
MAX_REASON_BYTES = 16_384
#: ``error_type`` of attempt_failed / failed / dead_lettered (the event schema's bound).
MAX_ERROR_TYPE_CHARS = 500
#: ``message`` of a progress event (the event schema's bound).
MAX_PROGRESS_MESSAGE_CHARS = 10_000
#: Dependencies of one job (``depends_on``). Their ids travel in the enqueued event (its budget)
#: and their outcomes in the job's state: at most 256 x about 200 bytes of ids and statuses.
MAX_DEPENDENCIES = 256
#: Jobs waiting for one job at once (its ``dependents``, kept in its state until it ends, when it
#: holds no result yet: 256 x (128-character job id + event id + quotes) stays under the smallest
#: result budget, 48 KiB for ``MIN_MAX_EVENT_BYTES``). A further dependent is answered ``refused``.
MAX_DEPENDENTS = 256
#: Dependents a job remembers while it is dead-lettered, or cancelled because of a dependency, so
#: that it can ask them to wait again if it runs again (``dependency_reopened``): those it answered
#: with its failure. It holds them instead of ``dependents`` (it answered and dropped those when it
#: ended, and answers later requests at once), so its state is no larger than while it had them
#: waiting. A dependent beyond the bound is answered but not remembered: it stays cancelled. Once
#: it reopened them, it also counts their round (``dependent_rounds``, as they do, ``rounds``): at
#: most 256 more small entries (a job id and a number, under 34 KB with 128-character ids, under
#: 11 KB with UUIDs): within the headroom of the default limit (see the module docstring); at the
#: smallest limit, 256 reopened dependents with 128-character ids would take most of it.
MAX_REVIVABLE_DEPENDENTS = MAX_DEPENDENTS
#: Longest dependency cycle the fold detects, in jobs: a cycle probe (``dependency_probe``) carries
#: the path it took, and a job that would make it longer drops it. A longer cycle waits until its
#: jobs expire (ttl) or are cancelled. The path is at most 32 job ids (about 4 KB).
MAX_PROBE_HOPS = 32
#: Cycle probes a waiting job remembers having forwarded (by the wait that started each, with the
#: shortest path it came by), so that a probe reaching it again by another path is not forwarded
#: again: the work of one probe is then one event per dependency edge between waiting jobs. The
#: oldest is forgotten past the bound; a probe it meets again is forwarded again (more events,
#: never a missed cycle).
MAX_PROBE_ORIGINS_KEPT = 32
#: Results of its dependencies a waiting job keeps, in all, as JSON bytes: fixed (not derived from
#: ``max_event_bytes``) because the fold decides it and must decide the same in every process. A
#: result that would go over it is recorded as omitted (its outcome is kept). The state holds
#: them only until the job completes, so they share the budget of its own result.
MAX_DEPENDENCY_RESULTS_BYTES = 32_768
#: Ids of its own acknowledged enqueues an ``App`` remembers, so that ``depends_on`` on a job it
#: just enqueued needs no changelog lookup (about 100 bytes each).
RECENT_ENQUEUES_KEPT = 10_000
#: Bounds of a flow-control window (``unique_for``, ``debounce``), in seconds: at least 1 ms (windows
#: are counted in whole milliseconds of event time), at most 30 days (a windowed job is kept at least
#: until its window ends, so a longer window would hold its state that much longer).
MIN_WINDOW_S = 0.001
MAX_WINDOW_S = 30 * 86_400
#: A batch id given to ``App.enqueue_batch`` (it appears in error messages; the ids derived from it have a fixed size).
MAX_BATCH_ID_CHARS = 200
#: How often the projector asks Kafka for the event log's end offsets (to report how far each
#: partition is behind: ``eventjobs_projector_records_behind``, the dashboard's lag table), in
#: seconds: one small request per period, whatever the load.
PROJECTOR_END_OFFSETS_EVERY_S = 5.0
#: Shortest period of an ``every`` schedule: a shorter one would flood the log with jobs.
MIN_SCHEDULE_EVERY_S = 1
#: A schedule's tick not fired this long after its time counts as missed (the service was down),
#: and its ``catch_up`` decides whether it still fires; ticks later by less always fire.
SCHEDULE_LATE_AFTER_S = 60
#: Most missed ticks of one schedule ``catch_up="all"`` fires on return (the latest ones).
MAX_CATCH_UP_TICKS = 100
#: How long after the start its rate grant gave a rate-limited job's handler starts (the worker
#: waits for it): the timer, the ready record, the claim and its verdict take from a few to several
#: hundred milliseconds on a busy host (up to 0.7 s seen here at a load average of 4-5 on 2 cores);
#: starting every job this long after its grant's start, rather than when that chain happens to
#: finish, keeps the grants' spacing in the starts (a job whose chain takes longer starts at once,
#: late). One fixed delay for every job of a rate.
RATE_START_LAG_S = 1.0
#: A rate-limited job claimed later than this after its grant's start and the lag (it became
#: ready while no worker could take it, or while processors handed partitions over) does not start
#: then, with the jobs of other late starts: its worker gives the claim back (a snooze that uses
#: no attempt, `AttemptSnoozedEvent.late_for_rate`) and the job asks the owner for a new start,
#: once per run. So such a backlog starts at the rate again rather than at once.
RATE_LATE_S = 0.25
#: A schedule must fire within this many days (five years and their leap days) of its definition:
#: ``every=`` at most this long, a ``cron=`` with a tick this soon. A rule that never fires
#: (``0 0 30 2 *``) is refused when it is defined rather than found out by every service later.
SCHEDULE_HORIZON_DAYS = 1827
#: Most cron matches one tick computation looks at before it gives up on the rule. Matches that
#: map to no new instant are skipped (the wall-clock times of a repeated DST hour already
#: fired: at most 60 an hour for a cron of every minute), so a real rule needs far fewer.
MAX_CRON_CANDIDATES = 10_000


@dataclass(frozen=True)
class SizeLimits:
    """The budgets for one ``max_event_bytes`` (JSON bytes, as orjson writes them)."""

    max_event_bytes: int
    enqueue_bytes: int  # the whole enqueued event: args, options, idempotency key, envelope
    result_bytes: int  # a handler's result
    error_message_bytes: int  # an error message, truncation marker included
    traceback_bytes: int  # a traceback, truncation marker included
    reason_bytes: int = MAX_REASON_BYTES


_CACHE: dict[int, SizeLimits] = {}


def size_limits(max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> SizeLimits:
    """The budgets for ``max_event_bytes`` (see the module docstring for the arithmetic)."""
    limits = _CACHE.get(max_event_bytes)
    if limits is None:
        if max_event_bytes < MIN_MAX_EVENT_BYTES:
            raise ValueError(
                f"max_event_bytes must be at least {MIN_MAX_EVENT_BYTES:,} (256 KiB), got {max_event_bytes:,}"
            )
        usable = max_event_bytes - RESERVE_BYTES
        limits = _CACHE[max_event_bytes] = SizeLimits(
            max_event_bytes=max_event_bytes,
            enqueue_bytes=usable * 3 // 8,
            result_bytes=usable * 3 // 8,
            error_message_bytes=usable // 16,
            traceback_bytes=usable // 16,
        )
    return limits


def json_size(text: str) -> int:
    """Bytes of ``text`` as a JSON string (quotes included)."""
    return len(orjson.dumps(text))


def _encodable(text: str) -> str:
    """``text`` with lone surrogates (which JSON cannot carry as UTF-8) replaced by '?'."""
    try:
        orjson.dumps(text)
    except orjson.JSONEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def truncate_text(text: str, max_bytes: int, *, keep_end: bool = False) -> str:
    """``text`` if it is at most ``max_bytes`` as JSON, else a shortened copy that is.

    The copy keeps the start of ``text`` (and with ``keep_end`` also its end, cut in the middle)
    and says how long the original was: ``"start… [truncated: 2,000,000 chars]"``, or with
    ``keep_end`` ``"start\\n… [truncated: 2,000,000 chars] …\\nend"``. Lone surrogates are
    replaced by '?', so the result can always be written.
    """
    if len(text) * 6 + 2 <= max_bytes:  # no character takes more than 6 bytes as JSON
        return text
    text = _encodable(text)
    if json_size(text) <= max_bytes:
        return text
    marker = f"… [truncated: {len(text):,} chars]"
    if keep_end:
        marker = f"\n{marker} …\n"

    def cut(kept: int) -> str:
        if keep_end:
            head = (kept + 1) // 2
            tail = kept - head
            return text[:head] + marker + (text[len(text) - tail:] if tail else "")
        return text[:kept] + marker

    # the longest cut that fits: every character is at least one byte, so at most max_bytes of them
    low, high = 0, min(len(text), max_bytes)
    while low < high:
        middle = (low + high + 1) // 2
        if json_size(cut(middle)) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    shortened = cut(low)
    return shortened if json_size(shortened) <= max_bytes else ""  # "": not even the marker fits
