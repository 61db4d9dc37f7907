"""Read-side queries: jobs, one job, a job's history, stats, the dead-letter queue, freshness.

Every function takes a `Backend` (chdb, a server, or the projector's read API: the SQL and the
returned values are the same) and returns plain dataclasses the CLI prints or dumps as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, UTC
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from eventjobs.clickhouse.backend import Backend
from eventjobs.clickhouse.errors import ClickHouseError
from eventjobs.core.state import JobStatus
from eventjobs.readside.control import STALE_AFTER_S
from eventjobs.readside.lag import PartitionLag, lag_of

#: every job status, in the order of the state machine (`core.state.JobStatus`)
STATUSES = tuple(status.value for status in JobStatus)


class JobNotFound(ClickHouseError):
    """No job with that id in the projection (unknown, or not projected yet: see the freshness line)."""


class QueryArgumentError(ClickHouseError):
    """An argument a query cannot use; the message lists what is allowed."""


@dataclass(frozen=True)
class Freshness:
    """How far the read side is behind the log: unprojected records and the newest projected event."""

    projected_offsets: dict[int, int]
    end_offsets: dict[int, int] | None
    newest_event_at: datetime | None

    @property
    def lag_events(self) -> int | None:
        if self.end_offsets is None:
            return None
        return sum(max(0, end - (self.projected_offsets.get(p, -1) + 1)) for p, end in self.end_offsets.items())

    def describe(self) -> str:
        newest = f"newest projected event {self.newest_event_at:%Y-%m-%d %H:%M:%S} UTC" if self.newest_event_at \
            else "nothing projected yet"
        if self.lag_events is None:
            return f"read side: {newest}; projector lag unknown (Kafka not reachable)"
        return f"read side: {self.lag_events:,} event(s) behind the log; {newest}"

    def as_json(self) -> dict[str, Any]:
        return {"lag_events": self.lag_events, "newest_event_at": self.newest_event_at,
                "projected_offsets": self.projected_offsets, "end_offsets": self.end_offsets}


def freshness(backend: Backend, end_offsets: dict[int, int] | None) -> Freshness:
    """The projected offsets are the last event rows' offsets, or, past them, where the projector
    last reported it had got to (`projector_lag`: past the transaction markers, which have no rows)."""
    rows = backend.query("SELECT log_partition, max(log_offset), max(occurred_at) FROM job_events "
                         "GROUP BY log_partition").rows
    projected = {int(p): int(o) for p, o, _ in rows}
    for partition, next_offset in backend.query(
            "SELECT log_partition, max(next_offset) FROM projector_lag GROUP BY log_partition").rows:
        projected[int(partition)] = max(projected.get(int(partition), -1), int(next_offset) - 1)
    newest = max((at for _, _, at in rows), default=None)
    return Freshness(projected, end_offsets, newest)


@dataclass(frozen=True)
class ReportedLag:
    """One partition as the projector last reported it in `projector_lag`."""

    partition: int
    next_offset: int
    end_offset: int
    last_projected_at: datetime | None
    reported_at: datetime


@dataclass(frozen=True)
class LagReport:
    """How far the projector is behind, per partition (`readside/lag.py` has the rule)."""

    partitions: list[PartitionLag]
    #: when the projector last reported; None: it never did
    reported_at: datetime | None
    #: seconds since that report
    age_s: float | None
    #: the end offsets are Kafka's, asked by the reader (else those of the projector's report)
    live: bool

    @property
    def stale(self) -> bool:
        """The projector has not reported for longer than a live one would (`STALE_AFTER_S`)."""
        return self.age_s is not None and self.age_s > STALE_AFTER_S


def reported_lag(backend: Backend) -> list[ReportedLag]:
    rows = backend.query(
        "SELECT log_partition, argMax(next_offset, updated_at), argMax(end_offset, updated_at), "
        "argMax(last_projected_at, updated_at), max(updated_at) FROM projector_lag "
        "GROUP BY log_partition ORDER BY log_partition").rows
    return [ReportedLag(int(p), int(n), int(e), at, reported) for p, n, e, at, reported in rows]


def lag_report(reported: list[ReportedLag], end_offsets: dict[int, int] | None, now: datetime) -> LagReport:
    """The projector's last report, measured against `end_offsets` (Kafka's, asked now) when given:
    a stopped projector is then seen falling behind as the log grows."""
    partitions = [
        lag_of(row.partition, row.next_offset,
               end_offsets.get(row.partition, row.end_offset) if end_offsets is not None else row.end_offset,
               row.last_projected_at, row.reported_at, now)
        for row in reported
    ]
    reported_at = max((row.reported_at for row in reported), default=None)
    age_s = None if reported_at is None else max(0.0, (now - reported_at).total_seconds())
    return LagReport(partitions, reported_at, age_s, end_offsets is not None)


def projector_lag(backend: Backend, end_offsets: dict[int, int] | None, now: datetime) -> LagReport:
    return lag_report(reported_lag(backend), end_offsets, now)


@dataclass(frozen=True)
class JobSummary:
    job_id: str
    queue: str
    name: str
    status: str
    attempt: int
    attempts_started: int
    enqueued_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    #: the processor forgot the job (its retention passed); `status` is its final status
    forgotten: bool = False


@dataclass(frozen=True)
class JobDetail:
    job_id: str
    queue: str
    name: str
    status: str
    priority: str
    attempt: int
    attempts_started: int
    max_attempts: int
    enqueued_at: datetime
    run_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    next_due_at: datetime | None
    worker_id: str
    args: Any
    result: Any
    error_type: str
    error_message: str
    error_traceback: str
    reason: str
    progress_percent: float | None
    progress_message: str
    idempotency_key: str
    parent_job_id: str
    #: the processor forgot the job (its retention passed): this is its final state, and an
    #: enqueue with the same id (same idempotency key) creates a new job
    forgotten: bool = False
    #: workflows (007_workflows): the jobs it depends on, those it still waits for (while waiting),
    #: the jobs waiting for it, how often it snoozed, and the jobs it enqueued (its children)
    depends_on: list[str] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)
    snoozes: int = 0
    children: list[str] = field(default_factory=list)
    #: a job waiting for a slot of its concurrency limit: which key, and its place in the key's queue
    slot_wait: SlotWait | None = None


@dataclass(frozen=True)
class SlotWait:
    """Why a limited job waits: its key's slots are taken (``eventjobs.core.slots``)."""

    limit: str
    key: str
    owner_id: str
    max: int | None  # None: no cap, only a rate
    in_use: int
    #: 1-based place of the job's request in the key's queue; None: not queued (yet, or granted)
    position: int | None
    waiting: int
    rate: str | None = None
    #: a job held back by the rate (scheduled): the start its grant gave it
    starts_at: datetime | None = None


@dataclass(frozen=True)
class LimitKey:
    """One key of a concurrency limit as its requests say: slots in use, jobs waiting, its options."""

    owner_id: str
    limit: str
    key: str
    #: slots of the key (the latest request's option); None: no cap on running jobs, a rate only
    max: int | None
    strategy: str
    #: the latest request's rate ("20/s") and burst; rate None: no rate limit
    rate: str | None
    burst: int
    #: requests granted and not released (or refused) yet
    in_use: int
    #: requests neither granted nor released (or refused) yet
    waiting: int
    last_activity_at: datetime
    #: max, rate and burst were set at run time (`eventjobs limits set`): they are the operator's
    set_at_run_time: bool = False


#: At most this many children of a job are listed (`JobDetail.children`, `job_links`).
MAX_CHILDREN_LISTED = 1000


@dataclass(frozen=True)
class JobLinks:
    """How a job is tied to others: what it depends on and still waits for, its parent, its children."""

    job_id: str
    status: str
    depends_on: list[str]
    waiting_for: list[str]
    dependents: list[str]
    parent_job_id: str
    children: list[str]


@dataclass(frozen=True)
class HistoryEntry:
    occurred_at: datetime
    type: str
    attempt: int
    actor: str
    outcome: str
    status_after: str
    since_previous_s: float | None
    since_enqueued_s: float | None
    event_id: str
    reject_reason: str
    details: dict[str, Any]


@dataclass(frozen=True)
class StatsRow:
    group: str
    enqueued: int
    started: int
    completed: int
    failed: int
    retried: int
    dead_lettered: int
    cancelled: int
    failed_attempts: int
    succeeded_attempts: int
    throughput_per_min: float
    failure_rate: float | None
    duration_p50_s: float | None
    duration_p95_s: float | None
    duration_p99_s: float | None
    wait_p50_s: float | None
    wait_p95_s: float | None
    wait_p99_s: float | None


@dataclass(frozen=True)
class DeadLetter:
    job_id: str
    queue: str
    name: str
    reason: str
    error_type: str
    error_message: str
    attempts: int
    dead_lettered_at: datetime


def to_json(value: Any) -> bytes:
    """Dataclasses (or lists of them) as JSON: timestamps ISO-8601 UTC."""
    def default(item: Any) -> Any:
        if hasattr(item, "__dataclass_fields__"):
            return asdict(item)
        raise TypeError(type(item).__name__)
    return orjson.dumps(value, default=default, option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z |
                        orjson.OPT_NON_STR_KEYS)


def job_filters(*, queue: str | None, status: str | None, name: str | None, since: datetime | None,
                until: datetime | None, limit: int, offset: int) -> tuple[list[str], dict[str, Any]]:
    """The WHERE terms and parameters of a jobs listing (queue, state, name, enqueue time; `since`
    inclusive, `until` exclusive) and its page, each checked: the live listing and the as-of one."""
    if status is not None and status not in STATUSES:
        raise QueryArgumentError(f"unknown state {status!r} (allowed: {', '.join(STATUSES)})")
    if limit < 1:
        raise QueryArgumentError(f"limit must be at least 1, got {limit}")
    if offset < 0:
        raise QueryArgumentError(f"offset must be 0 or more, got {offset}")
    where: list[str] = ["1"]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    for column, value in (("queue", queue), ("status", status), ("name", name)):
        if value is not None:
            where.append(f"{column} = {{{column}:String}}")
            params[column] = value
    if since is not None:
        where.append("enqueued_at >= {since:DateTime64(3, 'UTC')}")
        params["since"] = since
    if until is not None:
        where.append("enqueued_at < {until:DateTime64(3, 'UTC')}")
        params["until"] = until
    return where, params


def list_jobs(backend: Backend, *, queue: str | None = None, status: str | None = None, name: str | None = None,
              since: datetime | None = None, limit: int = 50, until: datetime | None = None,
              args_contain: str | None = None, offset: int = 0) -> list[JobSummary]:
    """Jobs, newest first, filtered by queue, status (state), job name, enqueue time (`since`
    inclusive, `until` exclusive) and a text the args' JSON contains; `offset` skips that many
    (pages)."""
    where, params = job_filters(queue=queue, status=status, name=name, since=since, until=until, limit=limit,
                                offset=offset)
    if args_contain:
        where.append("position(args, {args_contain:String}) > 0")
        params["args_contain"] = args_contain
    result = backend.query(
        "SELECT job_id, queue, name, status, attempt, attempts_started, enqueued_at, updated_at, finished_at, "
        f"forgotten FROM jobs FINAL WHERE {' AND '.join(where)} ORDER BY enqueued_at DESC, job_id "
        "LIMIT {limit:UInt32} OFFSET {offset:UInt64}",
        params,
    )
    rows = result.dicts()
    for row in rows:
        row["forgotten"] = bool(row["forgotten"])
    return [JobSummary(**row) for row in rows]


def show_job(backend: Backend, job_id: str) -> JobDetail:
    """One job's current state; `JobNotFound` if the projection does not know it."""
    columns = [name for name in JobDetail.__dataclass_fields__ if name not in ("children", "slot_wait")]
    result = backend.query(f"SELECT {', '.join(columns)} FROM jobs FINAL WHERE job_id = {{id:String}}", {"id": job_id})
    if not result.rows:
        raise JobNotFound(f"no job {job_id!r} in the read side (unknown id, or not projected yet)")
    row = result.dicts()[0]
    row["args"] = orjson.loads(row["args"]) if row["args"] else {}
    row["result"] = orjson.loads(row["result"]) if row["result"] else None
    row["forgotten"] = bool(row["forgotten"])
    for name in ("depends_on", "waiting_for", "dependents"):
        row[name] = list(row[name])
    waits = (row["status"] == JobStatus.WAITING.value and not row["waiting_for"]) or \
        row["status"] == JobStatus.SCHEDULED.value
    wait = slot_wait(backend, job_id) if waits else None
    return JobDetail(**row, children=children_of(backend, job_id), slot_wait=wait)


def slot_wait(backend: Backend, job_id: str) -> SlotWait | None:
    """Where a job with a concurrency limit stands in its key's queue, from the key owner's events
    (its requests and releases, folded again as the owner folded them); None for a job without a
    limit. A job the limit's rate holds back (scheduled) also gets the start its grant gave it.
    Costs a read of the key's request history (one owner's events)."""
    from eventjobs.core.codec import decode
    from eventjobs.core.events import EnqueuedEvent
    from eventjobs.core.slots import apply_slot, owner_id, position

    found = backend.query("SELECT payload FROM job_events WHERE job_id = {id:String} AND type = 'enqueued' "
                          "ORDER BY log_partition, log_offset LIMIT 1", {"id": job_id})
    if not found.rows:
        return None
    try:
        enqueued = decode(found.dicts()[0]["payload"].encode())
    except Exception:  # noqa: BLE001 - a payload the read side kept but cannot decode: no answer
        return None
    limit = enqueued.options.concurrency if isinstance(enqueued, EnqueuedEvent) else None
    if limit is None:
        return None
    owner = owner_id(limit.limit, limit.key)
    starts_at = None
    if limit.rate is not None:
        grant = backend.query("SELECT payload FROM job_events WHERE job_id = {id:String} AND type = 'slot_granted' "
                              "ORDER BY log_partition DESC, log_offset DESC LIMIT 1", {"id": job_id})
        if grant.rows:
            starts_at = getattr(decode(grant.dicts()[0]["payload"].encode()), "not_before", None)
    rows = backend.query("SELECT payload FROM job_events WHERE job_id = {id:String} AND type IN "
                         "('slot_requested', 'slot_released') ORDER BY log_partition, log_offset", {"id": owner})
    table = None
    for row in rows.dicts():
        table = apply_slot(table, decode(row["payload"].encode())).table
    return SlotWait(limit=limit.limit, key=limit.key, owner_id=owner, max=limit.max,
                    in_use=table.in_use if table is not None else 0, position=position(table, job_id),
                    waiting=len(table.queue) if table is not None else 0, rate=limit.rate, starts_at=starts_at)


#: the events of a concurrency limit's conversation, as `limit_keys` reads them
SLOT_EVENT_TYPES = ("slot_requested", "slot_granted", "slot_released", "slot_refused", "slot_revoked")


def limit_keys(backend: Backend, *, queue: str | None = None, limit: int = 50) -> list[LimitKey]:
    """Each key of a concurrency limit, the busiest first (most jobs waiting, then most slots in
    use, then the latest activity), at most `limit`; with `queue`, only the keys some job of that
    queue asked a slot of (the counts stay the key's, over every queue).

    Computed in ClickHouse from the slot events in `job_events`, not from the owners' tables: each
    request (a `slot_requested`, keyed by the owner) with its answers (`slot_granted` /
    `slot_refused`, keyed by the job, and `slot_released`, keyed by the owner, all naming the
    request as their causation) is *in use* once granted and *waiting* until granted, and neither
    once released or refused. The key's options (`max`, strategy, `rate`, `burst`) are its latest
    request's. Cost: a scan of every slot event ever projected (the `type` index skips the other
    granules), grouped by request and then by owner, so it grows with the limited jobs' history,
    not with what is waiting now (`benchmarks/bench_limit_keys.py`: 742,000 slot events in
    0.2-0.6 s on chdb); with `queue`, plus the set of that queue's job ids from `jobs`. A grant or
    release not projected yet shows as the request's previous step. A key whose latest
    `limit_changed` (an operator's, keyed by the owner like its requests) is not a reset shows
    that change's options instead of its requests'."""
    if limit < 1:
        raise QueryArgumentError(f"limit must be at least 1, got {limit}")
    params: dict[str, Any] = {"types": list(SLOT_EVENT_TYPES), "limit": limit}
    having = "1"
    if queue is not None:
        having = ("countIf(JSONExtractString(asking, 'requester_id') IN "
                  "(SELECT job_id FROM jobs WHERE queue = {queue:String})) > 0")
        params["queue"] = queue
    requested = "type = 'slot_requested'"
    order = "ORDER BY waiting DESC, in_use DESC, last_activity_at DESC, owner_id"
    result = backend.query(
        # the options are read from the latest request's payload only, once per key
        "SELECT owner_id, JSONExtractString(latest, 'limit') AS lim, JSONExtractString(latest, 'key') AS lkey, "
        "JSONExtractInt(latest, 'max') AS lmax, "  # 0: null or absent, no cap
        "JSONExtractString(latest, 'strategy') AS lstrategy, JSONExtractString(latest, 'rate') AS lrate, "  # '': none
        "JSONExtractInt(latest, 'burst') AS lburst, "  # 0: absent, a burst of 1
        "in_use, waiting, last_activity_at FROM ("
        " SELECT owner_id, argMax(asking, at) AS latest, toUInt64(countIf(granted AND NOT closed)) AS in_use,"
        " toUInt64(countIf(NOT granted AND NOT closed)) AS waiting, max(last_at) AS last_activity_at FROM ("
        "  SELECT if(type = 'slot_requested', event_id, causation_id) AS request,"
        f"  anyIf(job_id, {requested}) AS owner_id, anyIf(payload, {requested}) AS asking,"
        f"  minIf((occurred_at, log_partition, log_offset), {requested}) AS at, countIf({requested}) > 0 AS asked,"
        "  countIf(type = 'slot_granted') > 0 AS granted,"
        "  countIf(type IN ('slot_released', 'slot_refused')) > 0 AS closed, max(occurred_at) AS last_at"
        "  FROM job_events WHERE type IN {types:Array(String)} GROUP BY request"
        f" ) WHERE asked GROUP BY owner_id HAVING {having} {order} LIMIT {{limit:UInt32}}"
        f") {order}",
        params,
    )
    keys = []
    for row in result.dicts():
        keys.append(LimitKey(owner_id=row["owner_id"], limit=row["lim"], key=row["lkey"], max=int(row["lmax"]) or None,
                             strategy=row["lstrategy"], rate=row["lrate"] or None, burst=max(int(row["lburst"]), 1),
                             in_use=int(row["in_use"]), waiting=int(row["waiting"]),
                             last_activity_at=row["last_activity_at"]))
    return _with_run_time_settings(backend, keys)


def _with_run_time_settings(backend: Backend, keys: list[LimitKey]) -> list[LimitKey]:
    """`keys` with the options of each one's latest `limit_changed`, where that is not a reset."""
    if not keys:
        return keys
    changes = backend.query(
        "SELECT job_id, argMax(payload, (log_partition, log_offset)) AS latest FROM job_events "
        "WHERE type = 'limit_changed' AND job_id IN {owners:Array(String)} GROUP BY job_id",
        {"owners": [key.owner_id for key in keys]},
    )
    latest = {row["job_id"]: orjson.loads(row["latest"]) for row in changes.dicts()}
    for index, key in enumerate(keys):
        change = latest.get(key.owner_id)
        if change is not None and not change.get("reset"):
            keys[index] = replace(key, max=change.get("max"), rate=change.get("rate"),
                                              burst=change.get("burst") or 1, set_at_run_time=True)
    return keys


def children_of(backend: Backend, job_id: str) -> list[str]:
    """The jobs `job_id` enqueued (`ctx.enqueue`), oldest first, at most `MAX_CHILDREN_LISTED`."""
    result = backend.query(
        "SELECT job_id FROM jobs FINAL WHERE parent_job_id = {id:String} ORDER BY enqueued_at, job_id "
        f"LIMIT {MAX_CHILDREN_LISTED}", {"id": job_id},
    )
    return [row["job_id"] for row in result.dicts()]


def job_links(backend: Backend, job_id: str) -> JobLinks | None:
    """What ties the job to others (None if the `jobs` table has no row for it)."""
    result = backend.query(
        "SELECT status, depends_on, waiting_for, dependents, parent_job_id FROM jobs FINAL WHERE job_id = {id:String}",
        {"id": job_id},
    )
    if not result.rows:
        return None
    row = result.dicts()[0]
    return JobLinks(job_id=job_id, status=row["status"], depends_on=list(row["depends_on"]),
                    waiting_for=list(row["waiting_for"]), dependents=list(row["dependents"]),
                    parent_job_id=row["parent_job_id"], children=children_of(backend, job_id))


_ENVELOPE = frozenset({"event_id", "job_id", "type", "occurred_at", "schema_version", "causation_id", "actor"})


def job_history(backend: Backend, job_id: str) -> list[HistoryEntry]:
    """Every event of the job in log order, with the time since the previous one and since enqueue.

    A job id reused after the processor forgot its job (same idempotency key) shows every job that
    had it, one after the other: the forgetting `retention_passed` (outcome "forgotten") ends one,
    the next applied `enqueued` starts the next, and `since_enqueued_s` counts from that enqueue.
    """
    result = backend.query(
        "SELECT occurred_at, type, attempt, actor, outcome, status_after, event_id, reject_reason, payload "
        "FROM job_events WHERE job_id = {id:String} ORDER BY log_partition, log_offset", {"id": job_id},
    )
    if not result.rows:
        raise JobNotFound(f"no events for job {job_id!r} in the read side (unknown id, or not projected yet)")
    entries: list[HistoryEntry] = []
    previous: datetime | None = None
    first: datetime | None = None
    for row in result.dicts():
        at = row["occurred_at"]
        if first is None or (row["type"] == "enqueued" and row["outcome"] == "applied"):
            first = at
        try:
            payload = orjson.loads(row["payload"])
        except orjson.JSONDecodeError:
            payload = {"raw": row["payload"]}
        details = {k: v for k, v in payload.items() if k not in _ENVELOPE} if isinstance(payload, dict) else {}
        entries.append(HistoryEntry(
            occurred_at=at, type=row["type"], attempt=row["attempt"], actor=row["actor"], outcome=row["outcome"],
            status_after=row["status_after"],
            since_previous_s=(at - previous).total_seconds() if previous else None,
            since_enqueued_s=(at - first).total_seconds(), event_id=row["event_id"],
            reject_reason=row["reject_reason"], details=details,
        ))
        previous = at
    return entries


#: Where `job_stats` reads by default: the live per-minute metrics (projections/004_job_metrics.sql).
METRICS_TABLE = "job_metrics_1m"


def job_stats(backend: Backend, *, queue: str | None = None, since: datetime | None = None,
              by: Literal["name", "queue"] = "name", source: str = METRICS_TABLE,
              source_params: Mapping[str, Any] | None = None) -> list[StatsRow]:
    """Throughput, failure rate, run duration and wait quantiles per job name or queue.

    `source` is `job_metrics_1m` (live), or a subquery of its shape (`minute`, `queue`, `name` and
    the count and quantile states read here) with its `source_params`: `as_of.stats_as_of`
    passes the states of the `job_events` rows inside a cut.
    """
    if by not in ("name", "queue"):
        raise QueryArgumentError(f"--by must be 'name' or 'queue', got {by!r}")
    rows = _stats_query(backend, f"{by} AS grp", "grp", queue=queue, since=since, source=source,
                        source_params=source_params)
    return [_stats_row(row) for row in rows]


def job_stats_by_queue_and_name(backend: Backend, *, since: datetime | None = None
                                ) -> tuple[list[StatsRow], list[StatsRow]]:
    """`job_stats` by queue and by job name at once (the dashboard's overview shows both): one
    read of the metric states, grouped both ways (merging the quantile states is most of the cost)."""
    rows = _stats_query(backend, "if(grouping(name) = 0, name, queue) AS grp, grouping(name) = 0 AS by_name",
                        "GROUPING SETS ((queue), (name))", queue=None, since=since, source=METRICS_TABLE,
                        source_params=None)
    by_queue = sorted((_stats_row(row) for row in rows if not row["by_name"]), key=lambda row: row.group)
    by_name = sorted((_stats_row(row) for row in rows if row["by_name"]), key=lambda row: row.group)
    return by_queue, by_name


def _stats_query(backend: Backend, group: str, group_by: str, *, queue: str | None, since: datetime | None,
                 source: str, source_params: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    where: list[str] = ["1"]
    params: dict[str, Any] = dict(source_params or {})
    if queue is not None:
        where.append("queue = {queue:String}")
        params["queue"] = queue
    if since is not None:
        where.append("minute >= toStartOfMinute({since:DateTime64(3, 'UTC')})")
        params["since"] = since
    result = backend.query(
        f"SELECT {group}, countIfMerge(enqueued) AS enqueued, countIfMerge(started) AS started, "
        "countIfMerge(completed) AS completed, countIfMerge(failed) AS failed, countIfMerge(retried) AS retried, "
        "countIfMerge(dead_lettered) AS dead_lettered, countIfMerge(cancelled) AS cancelled, "
        "countIfMerge(failed_attempts) AS failed_attempts, countIfMerge(succeeded_attempts) AS succeeded_attempts, "
        "min(minute) AS first_minute, max(minute) AS last_minute, "
        "quantilesDeterministicIfMerge(0.5, 0.95, 0.99)(duration_quantiles) AS duration, "
        "quantilesDeterministicIfMerge(0.5, 0.95, 0.99)(wait_quantiles) AS wait "
        f"FROM {source} WHERE {' AND '.join(where)} GROUP BY {group_by} ORDER BY grp",
        params,
    )
    return result.dicts()


def _quantile(values: list[float], index: int, count: int) -> float | None:
    if count == 0 or not values:
        return None
    value = values[index]
    return None if value is None else round(float(value), 6)


def _stats_row(row: dict[str, Any]) -> StatsRow:
    minutes = max(1.0, (row["last_minute"] - row["first_minute"]).total_seconds() / 60 + 1)
    attempts = row["failed_attempts"] + row["succeeded_attempts"]
    outcomes = row["completed"] + row["dead_lettered"]
    return StatsRow(
        group=row["grp"], enqueued=row["enqueued"], started=row["started"], completed=row["completed"],
        failed=row["failed"], retried=row["retried"], dead_lettered=row["dead_lettered"],
        cancelled=row["cancelled"], failed_attempts=row["failed_attempts"],
        succeeded_attempts=row["succeeded_attempts"], throughput_per_min=round(outcomes / minutes, 3),
        failure_rate=round(row["failed_attempts"] / attempts, 4) if attempts else None,
        duration_p50_s=_quantile(row["duration"], 0, attempts), duration_p95_s=_quantile(row["duration"], 1, attempts),
        duration_p99_s=_quantile(row["duration"], 2, attempts), wait_p50_s=_quantile(row["wait"], 0, row["started"]),
        wait_p95_s=_quantile(row["wait"], 1, row["started"]), wait_p99_s=_quantile(row["wait"], 2, row["started"]),
    )


def dead_letters(backend: Backend, *, queue: str | None = None, name: str | None = None,
                 limit: int = 100) -> list[DeadLetter]:
    """What is in the dead-letter queue now, newest first."""
    where: list[str] = ["1"]
    params: dict[str, Any] = {"limit": limit}
    for column, value in (("queue", queue), ("name", name)):
        if value is not None:
            where.append(f"{column} = {{{column}:String}}")
            params[column] = value
    result = backend.query(
        "SELECT job_id, queue, name, reason, error_type, error_message, attempts, dead_lettered_at "
        f"FROM dead_letters FINAL WHERE {' AND '.join(where)} ORDER BY dead_lettered_at DESC, job_id "
        "LIMIT {limit:UInt32}", params,
    )
    return [DeadLetter(**row) for row in result.dicts()]


def dead_letter_count(backend: Backend) -> int:
    """How many jobs are in the dead-letter queue now."""
    return int(backend.query("SELECT count() FROM dead_letters FINAL").scalar())


def utc(value: datetime) -> datetime:
    """An aware UTC datetime (naive input is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---- the dashboard's overview: time series and queue depth -------------------------------------

#: job states that are still waiting or running (not terminal): what "queue depth" counts
OPEN_STATUSES = tuple(status.value for status in JobStatus if not status.terminal)


@dataclass(frozen=True)
class MinutePoint:
    """One minute of `job_metrics_1m`, summed over the selected queues and job names."""

    minute: datetime
    enqueued: int
    completed: int
    dead_lettered: int
    failed_attempts: int
    succeeded_attempts: int

    @property
    def finished(self) -> int:
        """Jobs that reached an outcome this minute (completed or dead-lettered): the throughput."""
        return self.completed + self.dead_lettered

    @property
    def failure_rate(self) -> float | None:
        """Failed attempts among the attempts that ended this minute (None when none ended)."""
        attempts = self.failed_attempts + self.succeeded_attempts
        return round(self.failed_attempts / attempts, 4) if attempts else None


@dataclass(frozen=True)
class QueueDepth:
    """Open jobs (not finished) of one queue and priority, by state."""

    queue: str
    priority: str
    waiting: int  # for the jobs it depends on
    pending: int
    scheduled: int
    claimed: int
    running: int
    retrying: int

    @property
    def total(self) -> int:
        return sum(getattr(self, status) for status in OPEN_STATUSES)


def minute_series(backend: Backend, *, since: datetime, queue: str | None = None) -> list[MinutePoint]:
    """Per-minute throughput and attempt outcomes since `since`, oldest first; minutes without
    any counted event are absent (the caller draws them as zero or as a gap)."""
    where: list[str] = ["minute >= toStartOfMinute({since:DateTime64(3, 'UTC')})"]
    params: dict[str, Any] = {"since": since}
    if queue is not None:
        where.append("queue = {queue:String}")
        params["queue"] = queue
    result = backend.query(
        "SELECT minute, countIfMerge(enqueued) AS enqueued, countIfMerge(completed) AS completed, "
        "countIfMerge(dead_lettered) AS dead_lettered, countIfMerge(failed_attempts) AS failed_attempts, "
        "countIfMerge(succeeded_attempts) AS succeeded_attempts "
        f"FROM job_metrics_1m WHERE {' AND '.join(where)} GROUP BY minute ORDER BY minute",
        params,
    )
    return [MinutePoint(**row) for row in result.dicts()]


def queue_depth(backend: Backend) -> list[QueueDepth]:
    """Jobs not finished yet per queue and priority, split by state (from the `jobs` projection)."""
    counts = ", ".join(f"countIf(status = '{status}') AS {status}" for status in OPEN_STATUSES)
    result = backend.query(
        f"SELECT queue, priority, {counts} FROM jobs FINAL WHERE status IN {{open:Array(String)}} "
        "GROUP BY queue, priority ORDER BY queue, priority",
        {"open": list(OPEN_STATUSES)},
    )
    return [QueueDepth(**row) for row in result.dicts()]
