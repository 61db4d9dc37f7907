"""processor.fold_batch: one partition's batch of raw records -> states, effects and quarantine.

No Kafka: records are aiokafka `ConsumerRecord`s built in memory, values are real encoded events.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from eventjobs.testing import commands
from eventjobs.core.clock import add_seconds, epoch_ms
from eventjobs.core.codec import encode
from eventjobs.core.events import JobEvent, LeaseExpiredEvent, RetentionPassedEvent
from eventjobs.core.fold import apply, fold
from eventjobs.core.options import ConstantBackoff, JobOptions
from eventjobs.core.outcome import Cancel, outcome_event
from eventjobs.core.state import JobState, JobStatus, encode_state
from eventjobs.core.effects import Effects
from eventjobs.core.housekeeping import (
    DEFAULT_DEAD_LETTER_RETENTION_S,
    DEFAULT_RETAIN_COMPLETED_S,
    Housekeeping,
    HousekeepingTimer,
    ReadyRepublish,
    housekeeping_timer,
)
from eventjobs.runtime.processor import BatchResult, fold_batch, merged, update_table
from eventjobs.core.records import timer_key

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
TOPIC = "ns.events"
MAX = 1_048_576
S = JobStatus


def record(value: bytes | None, key: bytes | None, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TOPIC, partition=3, offset=offset, timestamp=1_735_732_800_000, timestamp_type=0, key=key, value=value,
        checksum=None, serialized_key_size=len(key) if key else -1,
        serialized_value_size=len(value) if value is not None else -1, headers=[],
    )


def records_of(events: list[JobEvent], start: int = 0) -> list[ConsumerRecord[bytes, bytes]]:
    return [record(encode(e), e.job_id.encode(), start + i) for i, e in enumerate(events)]


def run(table: dict[str, JobState], records: list[ConsumerRecord[bytes, bytes]], max_bytes: int = MAX) -> BatchResult:
    return fold_batch(table, records, actor="processor:3", max_event_bytes=max_bytes)


class Writer:
    """Writes the events of one job as its producers, workers, timers and operators would."""

    def __init__(self, job_id: str, start: datetime = T0) -> None:
        self.job_id = job_id
        self.now = start
        self.n = 0
        self.state: JobState | None = None
        self.log: list[JobEvent] = []  # what reaches the event log, derived events included

    def eid(self) -> str:
        self.n += 1
        return f"{self.job_id}-e{self.n:03d}"

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now = add_seconds(self.now, seconds)
        return self.now

    def write(self, event: JobEvent, *, derived: bool = True) -> JobEvent:
        decision = apply(self.state, event, actor="processor:3")
        if decision.state is not None:
            self.state = decision.state
        elif decision.rejected is None:
            self.state = None  # forgotten: its retention passed
        self.log.append(event)
        if derived:
            self.log.extend(decision.derived)  # the processor appends them; they come back through the log
        return event

    @property
    def s(self) -> JobState:
        assert self.state is not None
        return self.state

    def enqueue(self, **options: Any) -> JobEvent:
        options.setdefault("backoff", ConstantBackoff(delay_s=5))
        return self.write(commands.enqueue("send_email", {"to": "a@example.com"}, JobOptions(**options),
                                           now=self.now, actor="producer:t:1", job_id=self.job_id, event_id=self.eid()))

    def claim(self, lease_s: float = 60) -> JobEvent:
        return self.write(commands.claim(self.s, worker_id="w1", now=self.tick(), actor="worker:w1", lease_s=lease_s,
                                         event_id=self.eid()))

    def start(self) -> JobEvent:
        return self.write(commands.attempt_started(self.s, now=self.tick(), actor="worker:w1", event_id=self.eid()))

    def heartbeat(self, lease_s: float = 300) -> JobEvent:
        return self.write(commands.heartbeat(self.s, now=self.tick(), actor="worker:w1", lease_s=lease_s,
                                             event_id=self.eid()))

    def progress(self, percent: float) -> JobEvent:
        return self.write(commands.progress(self.s, percent, now=self.tick(), actor="worker:w1", event_id=self.eid()))

    def outcome(self, value: Any) -> JobEvent:
        return self.write(outcome_event(value, job_id=self.job_id, attempt=self.s.attempt, retry_on=("Exception",),
                                        occurred_at=self.tick(), actor="worker:w1", event_id=self.eid()))

    def due(self) -> JobEvent:
        return self.write(commands.due(self.s, now=self.tick(10), actor="timer:3", event_id=self.eid()))

    def expire(self) -> JobEvent:
        return self.write(commands.expire(self.s, now=self.tick(), actor="timer:3", event_id=self.eid()))

    def cancel(self) -> JobEvent:
        return self.write(commands.cancel_request(self.s, now=self.tick(), actor="operator:ann", event_id=self.eid()))

    def dlq_retry(self) -> JobEvent:
        return self.write(commands.dead_letter_retry(self.s, now=self.tick(), actor="operator:ann", event_id=self.eid()))

    def lease_expired(self, deadline: datetime) -> JobEvent:
        return self.write(LeaseExpiredEvent(event_id=self.eid(), job_id=self.job_id, occurred_at=self.tick(),
                                            actor="timer:3", attempt=self.s.attempt, lease_deadline=deadline))

    def retention_passed(self, scope: str) -> JobEvent:
        """The retention timer the finished (or dead-lettered) job calls for fires at its due time."""
        assert self.s.finished_at is not None
        keep_s = DEFAULT_RETAIN_COMPLETED_S if scope == "finished" else DEFAULT_DEAD_LETTER_RETENTION_S
        self.now = due = add_seconds(self.s.finished_at, keep_s)
        return self.write(RetentionPassedEvent(event_id=self.eid(), job_id=self.job_id, occurred_at=due, actor="timer:3",
                                               attempt=self.s.attempt, scope=scope, due_at=due))  # type: ignore[arg-type]


def scenario(kind: str, job_id: str) -> list[JobEvent]:
    """The whole event log of one job (derived events included) for a lifecycle `kind`."""
    w = Writer(job_id)
    if kind == "happy":
        w.enqueue(), w.claim(), w.start(), w.progress(40), w.heartbeat(), w.outcome({"ok": 1})
    elif kind == "retry":
        w.enqueue(max_attempts=2), w.claim(), w.start(), w.outcome(ConnectionError("x")), w.due(), w.claim()
        w.outcome(None)
    elif kind == "dead_letter_retry":
        w.enqueue(max_attempts=1), w.claim(), w.outcome(Cancel("no")), w.dlq_retry(), w.claim(), w.start()
    elif kind == "scheduled_cancel":
        w.enqueue(delay=60, ttl=30), w.cancel()
    elif kind == "expire":
        w.enqueue(ttl=30), w.expire()
    elif kind == "stale_lease":
        w.enqueue(), w.claim(lease_s=20)
        first = w.s.lease_deadline
        assert first is not None
        w.heartbeat(), w.lease_expired(first), w.start()
    elif kind == "dead_letter_retention":
        w.enqueue(max_attempts=1), w.claim(), w.outcome(Cancel("no")), w.retention_passed("dead_letter")
    elif kind == "forgotten":  # completed, forgotten after its retention, then enqueued afresh under the same id
        w.enqueue(idempotency_key="k"), w.claim(), w.outcome(None), w.retention_passed("finished")
        w.enqueue(idempotency_key="k")
    elif kind == "duplicate":
        first = w.enqueue(idempotency_key="k")
        w.enqueue(idempotency_key="k"), w.write(first)  # another enqueue with the key, then a redelivery
    else:  # pragma: no cover
        raise AssertionError(kind)
    return w.log


KINDS = [
    "happy", "retry", "dead_letter_retry", "scheduled_cancel", "expire", "stale_lease", "dead_letter_retention",
    "forgotten", "duplicate",
]


def enqueued_bytes(job_id: str = "job-1", **options: Any) -> bytes:
    return encode(Writer(job_id).enqueue(**options))


# -- quarantine -------------------------------------------------------------------------------


def test_bad_records_are_quarantined_with_a_reason_and_good_ones_applied() -> None:
    oversized_args = {"blob": "x" * 2_000}
    big = encode(Writer("job-big").write(commands.enqueue("send_email", oversized_args, now=T0, actor="producer:t:1",
                                                          job_id="job-big", event_id="big-1")))
    unknown = orjson.dumps({"event_id": "u1", "job_id": "job-u", "type": "exploded", "occurred_at": "2025-01-01T12:00:00Z",
                            "actor": "x"})
    missing = orjson.loads(enqueued_bytes("job-m"))
    del missing["queue"]
    batch = [
        record(enqueued_bytes("job-a"), b"job-a", 10),
        record(b'{"event_id": ', b"job-x", 11),
        record(unknown, b"job-u", 12),
        record(big, b"job-big", 13),
        record(None, b"job-t", 14),
        record(enqueued_bytes("job-k"), b"job-other", 15),
        record(orjson.dumps(missing), b"job-m", 16),
        record(b"[1, 2]", b"job-y", 17),
        record(b"\xff\xfe", b"job-z", 18),
        record(enqueued_bytes("job-b"), b"job-b", 19),
    ]
    result = run({}, batch, max_bytes=1_000)

    assert [q.record.offset for q in result.quarantined] == [11, 12, 13, 14, 15, 16, 17, 18]
    assert all(q.record is batch[q.record.offset - 10] for q in result.quarantined)  # the raw record, untouched
    reasons = {q.record.offset: q.reason for q in result.quarantined}
    assert reasons[11] == "not valid JSON at byte 13: unexpected end of data"
    assert reasons[12].startswith("unknown event type 'exploded' (known: enqueued, scheduled, due,")
    assert reasons[13] == f"event is {len(big):,} bytes, over the limit of 1,000"
    assert reasons[14] == "empty record (tombstone) on the event log"
    assert reasons[15] == "record key b'job-other' is not the event's job_id 'job-k'"
    assert reasons[16].startswith("field 'queue' of 'enqueued' event is missing")
    assert reasons[17] == "an event must be a JSON object, got an array"
    assert reasons[18].startswith("not valid JSON at byte 0")

    assert (result.applied, result.rejected) == (2, 0)
    assert set(result.effects.states) == {"job-a", "job-b"}
    assert [r.job_id for r in result.effects.ready] == ["job-a", "job-b"]
    assert "job-k" not in result.effects.states  # a valid event under the wrong key is not applied


def test_event_exactly_at_the_size_limit_is_accepted_one_byte_less_is_not() -> None:
    value = enqueued_bytes("job-1")
    assert run({}, [record(value, b"job-1")], max_bytes=len(value)).applied == 1
    result = run({}, [record(value, b"job-1")], max_bytes=len(value) - 1)
    assert result.applied == 0 and result.effects.states == {}
    assert [q.reason for q in result.quarantined] == [f"event is {len(value):,} bytes, over the limit of {len(value) - 1:,}"]


def test_a_batch_of_only_bad_records_writes_nothing_but_quarantine() -> None:
    result = run({}, [record(None, b"a", 0), record(b"{}", b"b", 1)])
    assert len(result.quarantined) == 2
    assert result.quarantined[1].reason.startswith("event has no 'type' field")
    assert len(result.effects) == 0 and result.effects.revoked == []
    assert (result.applied, result.rejected) == (0, 0)


# -- applying ---------------------------------------------------------------------------------


def test_several_events_of_one_job_chain_within_a_batch() -> None:
    log = scenario("happy", "job-1")
    result = run({}, records_of(log))
    assert result.quarantined == []
    final = result.effects.states["job-1"]
    assert final == fold(log)["job-1"]
    assert final.status is S.COMPLETED and final.result == {"ok": 1} and final.progress_percent == 40
    assert final.version == 6  # one per applied event: the echo of the derived completed is a duplicate
    # effects of the whole chain: the ready record from the enqueue; the lease, re-publishing and
    # the retention of the finished job are housekeeping timers, not records
    assert [(r.job_id, r.attempt) for r in result.effects.ready] == [("job-1", 0)]
    assert result.effects.timers == {}
    assert housekeeping_timer(final) == HousekeepingTimer(
        "job-1", "retain", add_seconds(log[-1].occurred_at, DEFAULT_RETAIN_COMPLETED_S), 0
    )
    assert [e.type for e in result.effects.events] == ["completed"]
    assert result.rejected == 0


def test_batch_continues_from_the_table_state() -> None:
    w = Writer("job-1")
    w.enqueue(ttl=60)
    table = {"job-1": w.s}
    w.log.clear()
    w.claim(lease_s=30), w.start(), w.outcome(Cancel("bad"))
    result = run(table, records_of(w.log))
    state = result.effects.states["job-1"]
    assert state == w.s and state.status is S.DEAD_LETTERED and state.version == table["job-1"].version + 3
    # no republish tombstone for the enqueue of an earlier batch, no lease and no dead_letter timer record
    assert result.effects.timers == {timer_key("job-1", "ttl"): None}
    # pending in the table: a republish an hour after the enqueue ...
    assert housekeeping_timer(table["job-1"]) == HousekeepingTimer("job-1", "republish", add_seconds(T0, 3600), 0, 0)
    assert housekeeping_timer(state) == HousekeepingTimer(  # ... then, dead-lettered, its retention
        "job-1", "dead_letter", add_seconds(w.now, DEFAULT_DEAD_LETTER_RETENTION_S), 0
    )
    entry = result.effects.dead_letters["job-1"]
    assert entry is not None and entry.reason == "not retryable: Cancel"


def test_a_pending_job_writes_no_timer_and_the_lanes_housekeeping_follows_the_processors_delays() -> None:
    w = Writer("job-1")
    w.enqueue()
    result = run({}, records_of(w.log))
    assert result.effects.timers == {} and len(result.effects.ready) == 1
    # the lane tracks the batch's states (as the processor does after folding it)
    default, fast = Housekeeping(), Housekeeping(republish=ReadyRepublish(first_s=0.25, cap_s=1.0))
    for housekeeping in (default, fast):
        housekeeping.track_all(result.effects.states)
        assert len(housekeeping) == 1
    assert default.next_due_ms() == epoch_ms(add_seconds(w.now, 3600))
    assert fast.next_due_ms() == epoch_ms(add_seconds(w.now, 0.25))


def test_forgotten_job_is_none_in_the_batch_and_leaves_the_table() -> None:
    w = Writer("job-1")
    w.enqueue(), w.claim(), w.outcome(None)
    table = {"job-1": w.s}
    w.log.clear()
    w.retention_passed("finished")
    result = run(table, records_of(w.log))
    assert (result.applied, result.rejected) == (1, 0)
    assert result.effects.states == {"job-1": None}
    assert result.effects.timers == {} and result.effects.dead_letters == {} and result.effects.events == []
    assert result.effects.ready == [] and result.effects.revoked == []
    update_table(table, result.effects.states)
    assert table == {}


def test_enqueue_after_the_job_was_forgotten_in_the_same_batch_creates_it_afresh() -> None:
    log = scenario("forgotten", "job-1")
    result = run({}, records_of(log))
    assert result.rejected == 0
    state = result.effects.states["job-1"]
    assert state is not None and state == fold(log)["job-1"]
    assert state.status is S.PENDING and state.version == 1 and state.enqueued_event_id == log[-1].event_id
    assert [(r.job_id, r.attempt) for r in result.effects.ready] == [("job-1", 0), ("job-1", 0)]
    assert [e.type for e in result.effects.events] == ["completed"]  # no duplicate_rejected: the key is free again


def test_input_table_is_not_mutated() -> None:
    w = Writer("job-1")
    w.enqueue()
    table = {"job-1": w.s}
    snapshot = {k: encode_state(v) for k, v in table.items()}
    original = table["job-1"]
    w.log.clear()
    w.claim(), w.start(), w.outcome(None)
    other = scenario("happy", "job-2")
    result = run(table, records_of(w.log + other))
    assert list(table) == ["job-1"] and table["job-1"] is original
    assert {k: encode_state(v) for k, v in table.items()} == snapshot
    assert result.effects.states["job-1"].status is S.COMPLETED
    assert result.effects.states["job-2"].status is S.COMPLETED
    assert original.status is S.PENDING


def test_interleaved_jobs_each_chain_correctly() -> None:
    a, b = scenario("retry", "job-a"), scenario("stale_lease", "job-b")
    mixed = [e for pair in zip(a, b) for e in pair] + a[len(b):] + b[len(a):]
    result = run({}, records_of(mixed))
    assert result.effects.states == {k: v for k, v in fold(mixed).items()}
    assert result.effects.states["job-a"].status is S.COMPLETED
    assert result.effects.states["job-b"].status is S.RUNNING
    # job-b's stale lease fire was rejected: no timer record, its state calls for its current lease
    assert not any(key.startswith(b"job-b:") for key in result.effects.timers)
    running = result.effects.states["job-b"]
    assert housekeeping_timer(running) == HousekeepingTimer("job-b", "lease", running.lease_deadline, running.attempt)


def test_rejected_and_duplicate_events_are_counted_and_change_nothing() -> None:
    w = Writer("job-1")
    first = w.enqueue()
    stranger = commands.claim(w.s, worker_id="w9", now=T0, actor="worker:w9", event_id="s1").model_copy(
        update={"job_id": "job-ghost"}
    )
    again = commands.enqueue("send_email", {}, now=T0, actor="producer:t:1", job_id="job-1", event_id="other")
    result = run({}, records_of([first, stranger, again]))
    assert result.rejected == 2  # claim of an unknown job; second enqueue of job-1
    assert result.applied == 1
    assert set(result.effects.states) == {"job-1"}
    assert [e.type for e in result.effects.events] == ["duplicate_rejected"]
    assert len(result.effects.ready) == 1


def test_record_without_key_is_applied() -> None:
    result = run({}, [record(enqueued_bytes("job-1"), None)])
    assert result.quarantined == [] and set(result.effects.states) == {"job-1"}


# -- property: batching does not matter ---------------------------------------------------------


def compacted(effects_list: list[Effects]) -> dict[str, Any]:
    """What the topics hold after writing these effects in order (compacted topics: last write wins)."""
    timers: dict[bytes, Any] = {}
    dead: dict[str, Any] = {}
    out: dict[str, Any] = {"ready": [], "revoked": [], "events": []}
    for effects in effects_list:
        timers.update(effects.timers)
        dead.update(effects.dead_letters)
        out["ready"] += effects.ready
        out["revoked"] += effects.revoked
        out["events"] += effects.events
    # a tombstone leaves nothing, like a key never written
    out["timers"] = {k: v for k, v in timers.items() if v is not None}
    out["dead_letters"] = {k: v for k, v in dead.items() if v is not None}
    return out


@settings(max_examples=120, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
    data=st.data(),
)
def test_any_split_into_batches_gives_the_same_states_and_writes(kinds: list[str], data: Any) -> None:
    logs = [scenario(kind, f"job-{i}") for i, kind in enumerate(kinds)]
    # interleave the jobs' logs keeping each job's order (one partition holds many jobs)
    positions = [0] * len(logs)
    merged: list[JobEvent] = []
    while any(p < len(log) for p, log in zip(positions, logs)):
        live = [i for i, log in enumerate(logs) if positions[i] < len(log)]
        i = data.draw(st.sampled_from(live), label="next job")
        merged.append(logs[i][positions[i]])
        positions[i] += 1
    raw = records_of(merged)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=6), label="cuts")))
    bounds = [0, *cuts, len(raw)]

    whole = run({}, raw)
    table: dict[str, JobState] = {}
    parts = []
    for lo, hi in zip(bounds, bounds[1:]):
        before = copy.copy(table)
        part = run(table, raw[lo:hi])
        assert table == before  # never modified by fold_batch
        update_table(table, part.effects.states)  # what the processor does after committing the batch
        parts.append(part)

    expected = fold(merged)
    assert table == expected == {k: v for k, v in whole.effects.states.items() if v is not None}
    assert compacted(p.effects for p in parts) == compacted([whole.effects])  # type: ignore[arg-type]
    assert sum(p.applied for p in parts) == whole.applied
    assert sum(p.rejected for p in parts) == whole.rejected
    assert whole.quarantined == [] and all(p.quarantined == [] for p in parts)


@pytest.mark.parametrize("kind", KINDS)
def test_each_scenario_ends_where_the_writer_says(kind: str) -> None:
    log = scenario(kind, "job-1")
    final = run({}, records_of(log)).effects.states["job-1"]
    expected = {
        "happy": S.COMPLETED, "retry": S.COMPLETED, "dead_letter_retry": S.RUNNING, "scheduled_cancel": S.CANCELLED,
        "expire": S.DEAD_LETTERED, "stale_lease": S.RUNNING, "dead_letter_retention": S.DISCARDED,
        "forgotten": S.PENDING, "duplicate": S.PENDING,
    }[kind]
    assert final.status is expected


def test_batches_committed_together_write_each_compacted_key_once_and_every_event() -> None:
    # Given a job with a TTL enqueued, claimed, started and completed over three folded batches
    w = Writer("job-1")
    w.enqueue(ttl=60), w.claim(), w.start(), w.outcome({"ok": True})
    table: dict[str, JobState] = {}
    results = []
    for chunk in (w.log[:1], w.log[1:3], w.log[3:4]):
        result = run(table, records_of(chunk))
        update_table(table, result.effects.states)
        results.append(result)
    # When they commit in one transaction
    total = merged(results)
    # Then the changelog gets the final state once, every timer key its last value, and every
    # derived event is kept in order
    assert total.effects.states == {"job-1": table["job-1"]}
    last: dict[bytes, Any] = {}
    for result in results:
        last.update(result.effects.timers)
    assert total.effects.timers == last == {timer_key("job-1", "ttl"): None}  # armed, then tombstoned
    assert sum(len(r.effects.timers) for r in results) > len(total.effects.timers)  # arms superseded
    assert [e.event_id for e in total.effects.events] == [e.event_id for r in results for e in r.effects.events]
    assert merged([results[0]]) is results[0]


def test_a_limited_job_asks_its_keys_owner_whose_table_the_batch_keeps() -> None:
    from eventjobs.core.options import Limit
    from eventjobs.core.slots import owner_id
    from eventjobs.core.commands import enqueue as enqueue_event

    # Given two enqueues of one key with a limit of 1
    options = JobOptions(concurrency=Limit(key="t-1", max=1))
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    first = enqueue_event("sync", {}, options, now=now, actor="producer:test")
    second = enqueue_event("sync", {}, options, now=now, actor="producer:test")
    result = run({}, records_of([first, second]))
    # Then both wait, and ask the owner (events for another partition: written by `_send_linked`)
    asks = [e for e in result.effects.events if e.type == "slot_requested"]
    assert [e.requester_id for e in asks] == [first.job_id, second.job_id]  # type: ignore[attr-defined]
    assert {e.job_id for e in asks} == {owner_id("sync", "t-1")}
    assert result.effects.ready == [] and result.slot_tables == {}
    # When the owner's lane folds the requests (twice: a redelivery), it grants one and queues one
    slots: dict[str, Any] = {}
    owned = fold_batch({}, records_of(asks + asks), actor="processor:3", max_event_bytes=MAX, slots=slots)
    table = owned.slot_tables[owner_id("sync", "t-1")]
    assert [h[0] for h in table.holders] == [first.job_id] and [q[0] for q in table.queue] == [second.job_id]
    assert [(e.type, e.job_id) for e in owned.effects.events] == [("slot_granted", first.job_id)]
    assert owned.effects.states == {}  # no job state for an owner


def test_a_record_whose_derived_event_cannot_be_written_is_quarantined_and_the_batch_goes_on() -> None:
    from eventjobs.core.commands import enqueue as enqueue_event
    from eventjobs.core.options import Limit

    # Given a limited job (its enqueue derives a request to its key's owner) and a plain one, of a
    # size the limit allows, folded by a processor whose name makes every derived event too large
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    limited = enqueue_event("sync", {}, JobOptions(concurrency=Limit(key="t-1", max=1)), now=now, actor="producer:test")
    plain = enqueue_event("sync", {}, JobOptions(), now=now, actor="producer:test")
    actor, limit = "processor:" + "x" * 1_000, 1_000
    assert all(len(encode(e)) < limit for e in (limited, plain))
    result = fold_batch({}, records_of([limited, plain]), actor=actor, max_event_bytes=limit)
    # Then the limited job's record is quarantined with the reason, and nothing of it is written
    assert [(q.record.offset, q.kind) for q in result.quarantined] == [(0, "output over the size limit")]
    assert result.quarantined[0].reason.startswith(
        f"applying this enqueued event of job {limited.job_id} would write a derived event that cannot be written: ")
    assert set(result.effects.states) == {plain.job_id} and result.applied == 1
    assert result.effects.events == [] and result.event_bytes == {}

    # Given the owner's lane folding a request whose grant would be too large
    ask = fold_batch({}, records_of([limited]), actor="processor:3", max_event_bytes=MAX).effects.events[0]
    assert ask.type == "slot_requested" and len(encode(ask)) < limit
    owned = fold_batch({}, records_of([ask]), actor=actor, max_event_bytes=limit, slots={})
    # Then the request is quarantined with the reason, and the owner's table is not written
    assert [(q.record.offset, q.kind) for q in owned.quarantined] == [(0, "output over the size limit")]
    assert owned.quarantined[0].reason.startswith("a derived event that cannot be written: ")
    assert owned.slot_tables == {} and owned.effects.events == [] and owned.event_bytes == {} and owned.applied == 0
