"""`queries.limit_keys` on both backends, over `job_events` rows as the projector writes them.

The slot events come from the owner's own fold (`core.slots.apply_slot`) over a random run of
requests and releases on three keys, with duplicates and a release racing a grant; the table the
fold ends with is the oracle for each key's slots in use and jobs waiting. Hand-edited payloads
stand for requests with a rate and burst and without a cap (`max` null or absent).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, UTC
from typing import Any

import orjson
import pytest

from eventjobs.clickhouse import Backend
from eventjobs.core.codec import encode
from eventjobs.core.events import SlotReleasedEvent, SlotRequestedEvent
from eventjobs.core.ids import derived_event_id, new_event_id
from eventjobs.core.slots import SlotTable, apply_slot, owner_id
from eventjobs.readside import queries
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.queries import QueryArgumentError
from eventjobs.readside.rows import JOB_EVENT_COLUMNS, project_event

START = datetime(2026, 3, 1, 12, tzinfo=UTC)


class Log:
    """Slot events as `job_events` rows (the projector's rows), and each owner's table."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.tables: dict[str, SlotTable | None] = {}
        self.queues: dict[str, str] = {}  # requester job id -> its queue
        self.clock = START
        self.offset = 0

    def write(self, event: Any, edit: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> None:
        payload = encode(event)
        if edit or drop:  # fields as a newer version of the event writes them (rate, burst, no max)
            fields = {name: value for name, value in orjson.loads(payload).items() if name not in drop}
            payload = orjson.dumps({**fields, **(edit or {})})
        self.offset += 1
        self.rows.append(project_event(None, event, payload, 0, self.offset).row)

    def request(self, limit: str, key: str, max_: int, strategy: str, queue: str,
                edit: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> str:
        self.clock += timedelta(seconds=1)
        job = new_event_id()
        self.queues[job] = queue
        owner = owner_id(limit, key)
        event = SlotRequestedEvent(event_id=derived_event_id(new_event_id(), "slot_requested", 0), job_id=owner,
                                   occurred_at=self.clock, actor="processor:0", requester_id=job, attempt=0,
                                   limit=limit, key=key, max=max_, strategy=strategy)
        self.write(event, edit, drop)
        self._fold(owner, event)
        return event.event_id

    def release(self, owner: str, request: str, requester: str) -> SlotReleasedEvent:
        self.clock += timedelta(seconds=1)
        event = SlotReleasedEvent(event_id=derived_event_id(request, "slot_released", 0), job_id=owner,
                                  occurred_at=self.clock, causation_id=request, actor="processor:1",
                                  requester_id=requester)
        self.write(event)
        self._fold(owner, event)
        return event

    def _fold(self, owner: str, event: Any) -> None:
        decision = apply_slot(self.tables.get(owner), event)
        self.tables[owner] = decision.table
        for answer in decision.derived:  # grants, refusals, revocations: keyed by the job
            self.write(answer)


def store(backend: Backend, log: Log) -> None:
    apply_migrations(backend, default_projections_dir())
    backend.insert("job_events", JOB_EVENT_COLUMNS, [list(column) for column in zip(*log.rows, strict=True)])
    jobs = list(log.queues.items())
    backend.insert("jobs", ["job_id", "queue"], [[j for j, _ in jobs], [q for _, q in jobs]])


def test_each_key_shows_the_slots_in_use_and_jobs_waiting_its_owner_folded(backend: Backend) -> None:
    # Given a random run of requests and releases over three keys of two limits
    log, rng = Log(), random.Random(7)
    keys = [("sync", "t-1", 2, "queue"), ("sync", "t-2", 3, "queue"), ("mail", "t-1", 1, "cancel_newest")]
    for _ in range(120):
        limit, key, max_, strategy = rng.choice(keys)
        owner = owner_id(limit, key)
        table = log.tables.get(owner)
        open_requests = [*table.holders, *table.queue] if table is not None else []
        if open_requests and rng.random() < 0.45:
            job, request = open_requests[rng.randrange(len(open_requests))][:2]
            released = log.release(owner, request, job)
            if rng.random() < 0.2:  # derived again after a crash: a duplicate row
                log.write(released)
        else:
            log.request(limit, key, max_, strategy, "default")
            if rng.random() < 0.2:
                log.rows.append(log.rows[-1])  # the same record projected twice
    store(backend, log)

    # When the keys are listed
    listed = queries.limit_keys(backend)

    # Then each key's counts are its owner's table's, and its options the latest request's
    assert {(k.limit, k.key) for k in listed} == {(limit, key) for limit, key, _, _ in keys}
    for key in listed:
        table = log.tables[key.owner_id]
        assert table is not None
        assert (key.in_use, key.waiting) == (table.in_use, len(table.queue)), key
        assert (key.max, key.strategy, key.rate, key.burst) == (table.max, table.strategy, None, 1)
        assert key.last_activity_at == table.updated_at
    # busiest first: most waiting, then most in use
    assert [(k.waiting, k.in_use) for k in listed] == sorted(((k.waiting, k.in_use) for k in listed), reverse=True)
    assert queries.limit_keys(backend, limit=1) == listed[:1]
    assert sum(k.waiting for k in listed) > 0 and sum(k.in_use for k in listed) > 0  # the run left both


def test_rate_burst_and_no_cap_come_from_the_latest_request_with_or_without_the_fields(backend: Backend) -> None:
    # Given a key written before rates existed (no rate, no burst, a max) and one with a rate and
    # no cap (max null, then absent), whose latest request changed its rate and burst
    log = Log()
    for _ in range(4):
        log.request("sync", "acme", 1, "queue", "default")
    log.request("export", "acme", 1, "queue", "reports", edit={"max": None, "rate": "5/s"})
    log.request("export", "acme", 1, "queue", "reports", edit={"max": None, "rate": "20/s", "burst": 4})
    last = log.clock + timedelta(seconds=1)
    log.request("export", "acme", 1, "queue", "reports", edit={"rate": "20/s", "burst": 4}, drop=("max",))
    store(backend, log)

    # When the keys are listed, Then each shows its latest options and its own counts (the owner
    # here folded these requests with a cap of 1: one granted, the rest queued)
    sync, export = queries.limit_keys(backend)
    assert (sync.limit, sync.key, sync.max, sync.rate, sync.burst, sync.in_use, sync.waiting) == (
        "sync", "acme", 1, None, 1, 1, 3)
    assert (export.limit, export.key, export.max, export.rate, export.burst, export.in_use, export.waiting) == (
        "export", "acme", None, "20/s", 4, 1, 2)
    assert export.last_activity_at == last
    # a queue shows only the keys its jobs asked a slot of
    assert [k.limit for k in queries.limit_keys(backend, queue="reports")] == ["export"]
    assert [k.limit for k in queries.limit_keys(backend, queue="default")] == ["sync"]
    assert queries.limit_keys(backend, queue="emails") == []


def test_no_limited_job_no_key_and_a_bad_limit_is_refused(backend: Backend) -> None:
    apply_migrations(backend, default_projections_dir())
    assert queries.limit_keys(backend) == []
    with pytest.raises(QueryArgumentError, match="at least 1"):
        queries.limit_keys(backend, limit=0)


def test_a_job_held_back_by_a_rate_says_when_it_starts(backend: Backend) -> None:
    """`slot_wait` (jobs show, the job page) of a scheduled job: the start its rate grant gave."""
    from eventjobs.core.fold import apply
    from eventjobs.core.options import JobOptions, Limit
    from tests.core.builders import JobLog

    log, rows = Log(), []
    options = JobOptions(concurrency=Limit(rate="1/s"))
    states, grants = {}, []
    for name in ("first", "second"):
        job = JobLog(name)
        enqueued = job.enqueued(options=options)
        decision = apply(None, enqueued)
        states[name] = decision.state
        log.write(enqueued)
        for request in decision.derived:
            log.write(request)
            grant = apply_slot(log.tables.get(request.job_id), request)
            log.tables[request.job_id] = grant.table
            for answer in grant.derived:
                log.write(answer)
                grants.append(answer)
    rows = log.rows
    assert len(rows) == 6 and grants[0].not_before is None and grants[1].not_before is not None
    store(backend, log)
    wait = queries.slot_wait(backend, "second")
    assert wait is not None and wait.rate == "1/s" and wait.max is None
    assert wait.starts_at == grants[1].not_before
    first = queries.slot_wait(backend, "first")
    assert first is not None and first.starts_at is None  # granted at once


def test_an_operator_s_setting_shows_instead_of_the_requests_until_a_reset(backend: Backend) -> None:
    from eventjobs.core.commands import limit_changed_event

    log = Log()
    log.request("sync", "t-1", 2, "queue", "default")
    owner = owner_id("sync", "t-1")
    log.clock += timedelta(seconds=1)
    change = limit_changed_event("sync", "t-1", max_=5, rate="10/m", now=log.clock, actor="cli:test")
    assert change.job_id == owner
    log.write(change)
    store(backend, log)
    [key] = queries.limit_keys(backend)
    assert (key.max, key.rate, key.set_at_run_time) == (5, "10/m", True)
    reset = limit_changed_event("sync", "t-1", reset=True, now=log.clock + timedelta(seconds=1), actor="cli:test")
    log.rows.clear()
    log.write(reset)
    backend.insert("job_events", JOB_EVENT_COLUMNS, [list(column) for column in zip(*log.rows, strict=True)])
    [key] = queries.limit_keys(backend)
    assert (key.max, key.rate, key.set_at_run_time) == (2, None, False)
