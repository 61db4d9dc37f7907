"""Concurrency limits: the key owner's slot table (``apply_slot``) and the job side of the fold.

Unit cases first (Given/When/Then), then a property test over whole worlds: several limited jobs
of two keys on one owner each, random lifecycles (success, failure and retry, lease expiry,
cancel, dead-letter retry), linked events delivered in any order per destination, duplicated,
and derived again after a "crash" (a lane folding the same events again derives the same ids).
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventjobs.core.codec import decode, encode
from eventjobs.core.events import SLOT_OWNER_TYPES, EnqueuedEvent, SlotRequestedEvent
from eventjobs.core.fold import apply, fold
from eventjobs.core.options import ConcurrencySpec, ConstantBackoff, JobOptions
from eventjobs.core.slots import SlotTable, apply_slot, decode_table, encode_table, owner_id, position, request_id
from eventjobs.core.state import JobState, JobStatus

from tests.core.builders import T0, JobLog


def limited(key: str = "t-1", max_: int | None = 2, strategy: str = "queue", attempts: int = 3,
            rate: str | None = None, burst: int = 1) -> Any:
    spec = JobOptions(max_attempts=attempts, backoff=ConstantBackoff(delay_s=10)).to_spec()
    return spec.model_copy(update={"concurrency": ConcurrencySpec(limit="send", key=key, max=max_, strategy=strategy,
                                                                  rate=rate, burst=burst)})  # type: ignore[arg-type]


def enqueue(log: JobLog, spec: Any) -> EnqueuedEvent:
    return EnqueuedEvent(event_id=log.next_id(), job_id=log.job_id, occurred_at=log.now, actor="producer:test:1",
                         name="send", queue="default", args={}, options=spec)


def request(job: str, attempt: int = 0, key: str = "t-1", max_: int | None = 2, strategy: str = "queue",
            rate: str | None = None, burst: int = 1, at: Any = T0) -> Any:
    return SlotRequestedEvent(event_id=request_id(f"{job}-enq", attempt), job_id=owner_id("send", key),
                              occurred_at=at, actor="processor:0", requester_id=job, attempt=attempt, limit="send",
                              key=key, max=max_, strategy=strategy, rate=rate, burst=burst)  # type: ignore[arg-type]


def release(job: str, attempt: int = 0, key: str = "t-1", at: Any = T0) -> Any:
    from eventjobs.core.events import SlotReleasedEvent
    from eventjobs.core.ids import derived_event_id
    req = request_id(f"{job}-enq", attempt)
    return SlotReleasedEvent(event_id=derived_event_id(req, "slot_released", 0), job_id=owner_id("send", key),
                             occurred_at=at, actor="processor:0", causation_id=req, requester_id=job)


def run(table: SlotTable | None, *events: Any) -> tuple[SlotTable | None, list[Any]]:
    out = []
    for event in events:
        decision = apply_slot(table, event)
        table = decision.table
        out += decision.derived
    return table, out


# ---- the owner ------------------------------------------------------------------------------


def test_grants_up_to_max_then_queues_in_order() -> None:
    table, out = run(None, request("a"), request("b"), request("c"), request("d"))
    assert [e.job_id for e in out] == ["a", "b"] and {e.type for e in out} == {"slot_granted"}
    assert table is not None and [h[0] for h in table.holders] == ["a", "b"]
    assert [q[0] for q in table.queue] == ["c", "d"] and position(table, "d") == 2
    # a release grants the oldest waiting request, once
    table, out = run(table, release("b"))
    assert [(e.type, e.job_id, e.causation_id) for e in out] == [("slot_granted", "c", request_id("c-enq", 0))]
    table, out = run(table, release("b"), request("c"))  # duplicates: nothing again
    assert out == [] and [h[0] for h in table.holders] == ["a", "c"]  # type: ignore[union-attr]


def test_a_withdrawn_request_leaves_the_queue_and_a_late_duplicate_is_not_granted() -> None:
    table, _ = run(None, request("a", max_=1), request("b", max_=1), release("b"))
    assert table is not None and table.queue == ()
    table, out = run(table, request("b", max_=1), release("a"))
    assert out == [] and table is not None and table.holders == () and table.queue == ()


def test_cancel_newest_refuses_when_full() -> None:
    table, out = run(None, request("a", max_=1, strategy="cancel_newest"), request("b", max_=1, strategy="cancel_newest"))
    assert [e.type for e in out] == ["slot_granted", "slot_refused"] and out[1].job_id == "b"
    assert "cancel_newest" in out[1].reason and table is not None and table.queue == ()


def test_cancel_in_progress_revokes_the_oldest_holder_and_the_newest_runs_next() -> None:
    s = "cancel_in_progress"
    table, out = run(None, request("a", max_=1, strategy=s), request("b", max_=1, strategy=s))
    assert [(e.type, e.job_id) for e in out] == [("slot_granted", "a"), ("slot_revoked", "a")]
    table, out = run(table, request("c", max_=1, strategy=s))  # a is on its way out: b, still waiting, gives way
    assert [(e.type, e.job_id) for e in out] == [("slot_refused", "b")]
    table, out = run(table, release("a"), release("b"))
    assert [(e.type, e.job_id) for e in out] == [("slot_granted", "c")]
    assert table is not None and [h[0] for h in table.holders] == ["c"]


def test_table_survives_its_changelog_record() -> None:
    table, _ = run(None, request("a"), request("b"), request("c"), release("a"))
    assert table is not None and decode_table(encode_table(table)) == table


# ---- the job ---------------------------------------------------------------------------------


def test_a_limited_job_waits_for_its_grant_and_releases_on_its_end() -> None:
    log = JobLog("a")
    enq = enqueue(log, limited())
    decision = apply(None, enq)
    assert decision.state is not None and decision.state.status is JobStatus.WAITING
    (asked,) = decision.derived
    assert asked.type == "slot_requested" and asked.job_id == owner_id("send", "t-1")
    table, (grant,) = run(None, asked)
    state = apply(decision.state, grant).state
    assert state is not None and state.status is JobStatus.PENDING
    assert apply(state, grant).duplicate
    state = apply(state, log.claimed()).state
    decision = apply(state, log.succeeded())
    assert decision.state is not None and decision.state.status is JobStatus.COMPLETED
    released = [e for e in decision.derived if e.type == "slot_released"]
    assert len(released) == 1 and released[0].causation_id == asked.event_id
    assert decision.state.workflow is None  # nothing left of the slot in the state
    table, _ = run(table, *released)
    assert table is not None and table.holders == ()


def test_a_retry_gives_the_slot_back_and_asks_again_when_due() -> None:
    log = JobLog("a")
    state = apply(None, enqueue(log, limited())).state
    grant = run(None, request("a"))[1][0]
    grant = grant.model_copy(update={"causation_id": request_id(state.enqueued_event_id, 0)})  # type: ignore[union-attr]
    state = apply(state, grant).state
    state = apply(state, log.claimed()).state
    decision = apply(state, log.lease_expired(0, state.lease_deadline))  # type: ignore[union-attr]
    assert decision.state is not None and decision.state.status is JobStatus.RETRYING
    assert [e.type for e in decision.derived] == ["retry_scheduled", "slot_released"]
    decision = apply(decision.state, log.due(1))
    assert decision.state is not None and decision.state.status is JobStatus.WAITING
    assert [e.type for e in decision.derived] == ["slot_requested"] and decision.derived[0].attempt == 1


def test_slot_events_survive_the_codec() -> None:
    log = JobLog("a")
    decision = apply(None, enqueue(log, limited()))
    for event in decision.derived:
        assert decode(encode(event)) == event


# ---- rates: starts spaced by event time ------------------------------------------------------


def _starts(grants: list[Any]) -> list[int]:
    """Each grant's start, in ms after T0 (0: at once)."""
    return [0 if g.not_before is None else round((g.not_before - T0).total_seconds() * 1000) for g in grants]


def test_a_rate_spaces_the_starts_by_one_interval() -> None:
    # Given 20/s and no max: five requests at the same moment
    table, out = run(None, *(request(f"j{n}", max_=None, rate="20/s") for n in range(5)))
    # Then each is granted at once, with a start 50 ms after the previous one, and nothing is held
    assert [e.type for e in out] == ["slot_granted"] * 5 and _starts(out) == [0, 50, 100, 150, 200]
    assert table is not None and table.holders == () and table.queue == ()
    # and a duplicate request takes no second start
    table, again = run(table, request("j4", max_=None, rate="20/s"))
    assert again == []


def test_a_burst_lets_that_many_start_at_once_then_the_spacing_holds() -> None:
    _, out = run(None, *(request(f"j{n}", max_=None, rate="10/s", burst=3) for n in range(6)))
    assert _starts(out) == [0, 0, 0, 100, 200, 300]


def test_after_a_quiet_spell_the_rate_starts_at_once_again() -> None:
    from eventjobs.core.clock import add_seconds

    table, out = run(None, request("a", max_=None, rate="1/s"), request("b", max_=None, rate="1/s"))
    assert _starts(out) == [0, 1000]
    _, out = run(table, request("c", max_=None, rate="1/s", at=add_seconds(T0, 60)))
    assert out[0].not_before is None  # a minute later: no debt left


def test_a_rate_with_a_max_holds_the_slot_through_the_wait() -> None:
    from eventjobs.core.clock import add_seconds

    table, out = run(None, *(request(f"j{n}", max_=2, rate="2/s") for n in range(3)))
    assert [e.job_id for e in out] == ["j0", "j1"] and _starts(out) == [0, 500]
    assert table is not None and [h[0] for h in table.holders] == ["j0", "j1"] and [q[0] for q in table.queue] == ["j2"]
    _, out = run(table, release("j0", at=add_seconds(T0, 0.2)))  # freed at 200 ms: j2 starts one interval after j1
    assert [e.job_id for e in out] == ["j2"] and _starts(out) == [1000]


def test_a_job_held_back_by_the_rate_waits_scheduled_then_runs_on_its_timer() -> None:
    log = JobLog("a")
    decision = apply(None, enqueue(log, limited(max_=None, rate="1/s")))
    (asked,) = decision.derived
    _, (first, grant) = run(None, request("other", max_=None, rate="1/s"), asked)
    assert first.not_before is None and grant.not_before is not None
    state = apply(decision.state, grant).state
    assert state is not None and state.status is JobStatus.SCHEDULED and state.next_due_at == grant.not_before
    assert state.workflow is not None and state.workflow.slot_start == grant.not_before
    decision = apply(state, log.due(0, "run_at"))
    assert decision.state is not None and decision.state.status is JobStatus.PENDING and decision.derived == ()
    # its ready record carries the grant's start: the worker starts the handler a fixed lag after it
    from eventjobs.core.effects import ready_record
    assert ready_record(decision.state, log.now).start_at == grant.not_before
    state = apply(decision.state, log.claimed()).state
    decision = apply(state, log.succeeded())
    # a rate alone held no slot: the release finds nothing held (the owner decides what a grant holds)
    assert decision.state is not None and decision.state.status is JobStatus.COMPLETED
    assert [e.type for e in decision.derived] == ["completed", "slot_released"] and decision.state.workflow is None
    table = run(None, asked)[0]
    assert run(table, decision.derived[1])[1] == [] and table is not None and table.holders == ()


def test_a_rate_held_job_that_is_cancelled_gives_its_slot_back() -> None:
    log = JobLog("a")
    decision = apply(None, enqueue(log, limited(max_=2, rate="1/s")))
    (asked,) = decision.derived
    grant = run(None, request("other", max_=2, rate="1/s"), asked)[1][1]
    state = apply(decision.state, grant).state
    assert state is not None and state.status is JobStatus.SCHEDULED
    decision = apply(state, log.cancel())
    assert [e.type for e in decision.derived] == ["cancelled", "slot_released"]


def test_a_worker_holds_a_rate_limited_start_to_a_fixed_lag_after_its_grant() -> None:
    from eventjobs.core.clock import add_seconds
    from eventjobs.core.slots import rate_hold_s

    assert rate_hold_s(T0, T0, lag_s=0.5) == 0.5  # claimed at once: waits the whole lag
    assert rate_hold_s(T0, add_seconds(T0, 0.2), lag_s=0.5) == 0.3  # the chain took 200 ms
    assert rate_hold_s(T0, add_seconds(T0, 2), lag_s=0.5) == 0.0  # later than the lag: at once
    assert rate_hold_s(add_seconds(T0, 60), T0, lag_s=0.5) == 0.5  # never longer than the lag


def test_a_job_claimed_too_late_for_its_start_asks_again_once_per_run() -> None:
    from eventjobs.core.clock import add_seconds
    from eventjobs.core.effects import ready_record
    from eventjobs.core.limits import RATE_LATE_S, RATE_START_LAG_S
    from eventjobs.core.slots import late_for_rate

    # the worker's rule: later than the lag and RATE_LATE_S after the grant's start
    assert not late_for_rate(T0, add_seconds(T0, RATE_START_LAG_S + RATE_LATE_S))
    assert late_for_rate(T0, add_seconds(T0, RATE_START_LAG_S + RATE_LATE_S + 0.001))
    # Given a rate-limited job granted, pending and claimed (by a worker that came late)
    log = JobLog("a")
    decision = apply(None, enqueue(log, limited(max_=None, rate="1/s")))
    table, (grant,) = run(None, *decision.derived)
    state = apply(apply(decision.state, grant).state, log.claimed()).state
    # When its worker gives it back as too late
    late = apply(state, log.snoozed(0, 0.0, late_for_rate=True))
    # Then it is scheduled at once for its next attempt, its grant given back, nothing counted as a snooze
    assert late.state is not None and late.state.status is JobStatus.SCHEDULED and late.state.attempt == 1
    assert [e.type for e in late.derived] == ["scheduled", "slot_released"]
    assert late.state.workflow is not None and late.state.workflow.rate_reasked and late.state.workflow.snoozes == 0
    # and when due it asks the owner for a new start (a new request: the next attempt's)
    due = apply(late.state, log.due(1, "run_at"))
    assert due.state is not None and due.state.status is JobStatus.WAITING
    (again,) = due.derived
    assert again.type == "slot_requested" and again.attempt == 1
    table, (regrant,) = run(table, *late.derived[1:], again)
    state = apply(due.state, regrant).state
    if state.status is JobStatus.SCHEDULED:  # type: ignore[union-attr]
        state = apply(state, log.due(1, "run_at")).state
    assert state is not None and state.status is JobStatus.PENDING and ready_record(state, log.now).rate_reasked
    # it is not given back twice in one run
    claimed = apply(state, log.claimed(1)).state
    assert apply(claimed, log.snoozed(1, 0.0, late_for_rate=True)).rejected
    # and once its handler started, a later run may ask again
    started = apply(claimed, log.started(1)).state
    assert started is not None and started.workflow is not None and not started.workflow.rate_reasked


# ---- an operator's change at run time ----------------------------------------------------------


def change(max_: int | None = None, rate: str | None = None, reset: bool = False, key: str = "t-1") -> Any:
    from eventjobs.core.events import LimitChangedEvent

    return LimitChangedEvent(event_id=f"change-{max_}-{rate}-{reset}", job_id=owner_id("send", key), occurred_at=T0,
                             actor="cli:test", limit="send", key=key, max=max_, rate=rate, reset=reset)


def test_raising_max_at_run_time_grants_the_waiting_jobs_and_requests_do_not_undo_it() -> None:
    table, _ = run(None, *(request(f"j{n}", max_=1) for n in range(4)))
    assert table is not None and len(table.holders) == 1 and len(table.queue) == 3
    table, out = run(table, change(max_=3))
    assert [e.job_id for e in out] == ["j1", "j2"] and table is not None and table.overridden
    table, out = run(table, request("j9", max_=1))  # a job's own option no longer decides
    assert table is not None and table.max == 3 and [q[0] for q in table.queue] == ["j3", "j9"] and out == []
    # reset: the next request's options apply again
    table, _ = run(table, change(reset=True), release("j0"), release("j1"))
    assert table is not None and not table.overridden
    table, out = run(table, request("j10", max_=1))
    assert table is not None and table.max == 1


def test_a_rate_set_at_run_time_spaces_the_grants_after_it() -> None:
    table, out = run(None, change(max_=None, rate="10/s"), *(request(f"j{n}", max_=5) for n in range(3)))
    assert _starts(out) == [0, 100, 200] and table is not None and table.max is None and table.holders == ()
    from eventjobs.core.clock import add_seconds
    from eventjobs.core.slots import forgettable
    assert not forgettable(table, add_seconds(T0, 10**6))  # an operator's setting is never forgotten


def test_lowering_max_lets_the_holders_finish() -> None:
    table, _ = run(None, *(request(f"j{n}", max_=3) for n in range(4)))
    table, out = run(table, change(max_=1), release("j0"), release("j1"))
    assert out == [] and table is not None and [h[0] for h in table.holders] == ["j2"]
    table, out = run(table, release("j2"))
    assert [e.job_id for e in out] == ["j3"]


# ---- forgetting an idle table -------------------------------------------------------------------


def test_an_empty_table_is_forgotten_only_when_idle_and_free_of_rate_debt() -> None:
    from eventjobs.core.clock import add_seconds
    from eventjobs.core.slots import SLOT_TABLE_IDLE_S, forgettable

    table, _ = run(None, request("a"), release("a"))
    assert table is not None and not forgettable(table, add_seconds(T0, SLOT_TABLE_IDLE_S - 1))
    assert forgettable(table, add_seconds(T0, SLOT_TABLE_IDLE_S))
    busy, _ = run(None, request("a"))
    assert busy is not None and not forgettable(busy, add_seconds(T0, 10 * SLOT_TABLE_IDLE_S))
    owed, _ = run(None, *(request(f"j{n}", max_=None, rate="1/h") for n in range(3)))  # starts up to 2 h ahead
    assert owed is not None and not forgettable(owed, add_seconds(T0, 3600))
    assert forgettable(owed, add_seconds(T0, 3 * 3600))


def test_a_grant_the_job_no_longer_holds_is_given_back_so_nothing_leaks() -> None:
    # Given a job that asked, was granted, ran and released; its owner then forgot the table
    log = JobLog("a")
    decision = apply(None, enqueue(log, limited(max_=1)))
    (asked,) = decision.derived
    table, (grant,) = run(None, asked)
    state = apply(apply(decision.state, grant).state, log.claimed()).state
    done = apply(state, log.succeeded())
    table, _ = run(table, *[e for e in done.derived if e.type == "slot_released"])
    assert table is not None and table.holders == ()
    # When the request arrives again (a lane's redo) at an owner with no table, and is granted
    table, (again,) = run(None, asked)
    assert table is not None and len(table.holders) == 1
    # Then the job answers the stale grant with the release, and the owner is empty again
    answer = apply(done.state, again)
    assert answer.rejected and [e.type for e in answer.derived] == ["slot_released"]
    table, _ = run(table, *answer.derived)
    assert table is not None and table.holders == ()
    # and so does a job that is forgotten by now
    gone = apply(None, again)
    assert [e.type for e in gone.derived] == ["slot_released"] and gone.derived[0].job_id == asked.job_id


# ---- property: whole worlds ------------------------------------------------------------------


class World:
    """Jobs and owners, each applied by its own fold; linked events wait in one inbox per destination."""

    def __init__(self, rnd: random.Random, jobs: int, strategy: str, rate: str | None = None,
                 max_: int | None = 2) -> None:
        self.rnd = rnd
        self.states: dict[str, JobState | None] = {}
        self.tables: dict[str, SlotTable | None] = defaultdict(lambda: None)
        self.inbox: dict[str, list[Any]] = defaultdict(list)
        self.delivered: list[Any] = []
        self.logs = {f"j{i}": JobLog(f"j{i}") for i in range(jobs)}
        self.keys = {f"j{i}": f"k{i % 2}" for i in range(jobs)}
        self.max = max_
        self.rate = rate
        self.strategy = strategy
        self.forgotten = 0
        self.lowered = False  # an operator lowered a max: holders above it finish, none is added
        self.operator_max: dict[str, int] = {}  # key -> the max an operator set last (a reset: the jobs' own)
        self.started: dict[str, int] = defaultdict(int)
        self.log: list[Any] = []  # the jobs' partitions, merged: every event applied to a job, and its own derived ones

    def route(self, derived: tuple[Any, ...]) -> None:
        for event in derived:
            if event.type in SLOT_OWNER_TYPES or event.type.startswith("slot_"):
                self.inbox[event.job_id].append(event)

    def job(self, job_id: str, event: Any) -> None:
        decision = apply(self.states.get(job_id), event)
        if decision.state is not None:
            self.states[job_id] = decision.state
        self.route(decision.derived)
        self.log.append(event)
        own = [d for d in decision.derived if d.job_id == job_id]
        self.log += own
        for echo in own:  # the processor reads its own derived events back: they change nothing
            again = apply(self.states.get(job_id), echo)
            assert again.duplicate or again.rejected, (echo, again)
            assert again.state == self.states.get(job_id) and again.derived == ()
        if self.rnd.random() < 0.1:  # a crash before the commit: the lane folds it again, same derived ids
            self.route(apply(self.states.get(job_id), event).derived or decision.derived)

    def deliver(self, destination: str) -> None:
        box = self.inbox[destination]
        if not box:
            return
        event = box.pop(0)  # one partition: in order
        self.delivered.append(event)
        # delivered again later: what a lane derives again (same id) may come twice; an operator's
        # limit_changed is written once (an idempotent producer), and a replay of the owner's partition
        # reads it again only in order with what follows it, so it is not moved after newer changes
        if self.rnd.random() < 0.15 and event.type != "limit_changed":
            box.insert(self.rnd.randrange(len(box) + 1), event)
        if event.type in SLOT_OWNER_TYPES:
            decision = apply_slot(self.tables[destination], event)
            self.tables[destination] = decision.table
            table = decision.table
            if table is not None and table.max is not None and any(d.type == "slot_granted" for d in decision.derived):
                assert len(table.holders) <= table.max, f"granted beyond the max: {table.holders}"
            self.route(decision.derived)
        else:
            self.job(destination, event)
        self.check()

    def check(self) -> None:
        for owner, table in self.tables.items():
            if table is None:
                continue
            assert table.max is not None or table.holders == (), "a rate alone holds no slot"
            assert self.lowered or len(table.holders) <= (table.max or 0), f"owner {owner} over its max: {table.holders}"
            requests = [h[1] for h in table.holders] + [q[1] for q in table.queue]
            assert len(requests) == len(set(requests)), "a request held or queued twice"
        held: dict[str, int] = defaultdict(int)
        for job_id, state in self.states.items():
            if state is None or state.workflow is None or not state.workflow.slot_granted:
                continue
            assert state.status in (JobStatus.PENDING, JobStatus.CLAIMED, JobStatus.RUNNING, JobStatus.SCHEDULED)
            if self.max is None:
                continue
            held[self.keys[job_id]] += 1
            table = self.tables[owner_id("send", self.keys[job_id])]
            assert table is not None and any(h[0] == job_id and h[1] == state.workflow.slot_request
                                             for h in table.holders), "a job holds a slot its owner does not count"
        for key, n in held.items():
            table = self.tables[owner_id("send", key)]
            assert self.lowered or table is None or n <= (table.max or 0)

    def forget_idle(self) -> None:
        """An owner's lane drops a table with nothing held, queued or owed (as after its idle time)."""
        from eventjobs.core.clock import from_epoch_ms
        from eventjobs.core.slots import forgettable

        for owner, table in list(self.tables.items()):
            if table is not None and forgettable(table, from_epoch_ms(table.tat_ms + 10**9), idle_s=0):
                self.tables[owner] = None
                self.delivered.append(("forgotten", owner))
                self.forgotten += 1

    def step(self) -> None:
        rnd = self.rnd
        choice = rnd.random()
        busy = [d for d, box in self.inbox.items() if box]
        if busy and choice < 0.5:
            self.deliver(rnd.choice(busy))
            return
        if choice > 0.97:
            self.forget_idle()
            return
        if choice > 0.95 and self.max is not None:  # an operator sets the max (or resets) at run time
            from eventjobs.core.events import LimitChangedEvent

            key = rnd.choice(["k0", "k1"])
            reset = rnd.random() < 0.3
            new_max = self.max if reset else rnd.choice([1, 2, 3])  # the jobs' own option stays self.max
            previous = self.operator_max.get(key, self.max)
            self.lowered = self.lowered or new_max < previous
            self.operator_max[key] = new_max
            owner = owner_id("send", key)
            self.inbox[owner].append(LimitChangedEvent(
                event_id=f"op-{len(self.delivered)}-{rnd.random()}", job_id=owner, occurred_at=T0, actor="cli:test",
                limit="send", key=key, max=new_max, reset=reset))
            return
        job_id = rnd.choice(list(self.logs))
        log, state = self.logs[job_id], self.states.get(job_id)
        log.tick(1)
        if state is None:
            self.job(job_id, enqueue(log, limited(self.keys[job_id], self.max, self.strategy, rate=self.rate)))
            return
        a = state.attempt
        if state.status is JobStatus.PENDING:
            self.job(job_id, log.claimed(a) if rnd.random() < 0.9 else log.cancel())
        elif state.status is JobStatus.CLAIMED:
            late_allowed = self.rate is not None and not (state.workflow is not None and state.workflow.rate_reasked)
            if late_allowed and rnd.random() < 0.2:  # its worker came too late for its start: asks again
                self.job(job_id, log.snoozed(a, 0.0, late_for_rate=True))
            else:
                self.job(job_id, log.started(a))
        elif state.status is JobStatus.RUNNING:
            r = rnd.random()
            if r < 0.5:
                self.job(job_id, log.succeeded(a))
            elif r < 0.75:
                self.job(job_id, log.failed(a))
            elif r < 0.9:
                self.job(job_id, log.lease_expired(a, state.lease_deadline))  # a killed worker
            else:
                self.job(job_id, log.snoozed(a, 1))
        elif state.status in (JobStatus.RETRYING, JobStatus.SCHEDULED):
            self.job(job_id, log.due(a, "retry" if state.status is JobStatus.RETRYING else "run_at"))
        elif state.status is JobStatus.WAITING and rnd.random() < 0.05:
            self.job(job_id, log.cancel())
        elif state.status is JobStatus.DEAD_LETTERED and rnd.random() < 0.3:
            self.job(job_id, log.dlq_retry(state.dead_letter_event_id))

    def settle(self) -> None:
        """Deliver everything, and run every job to an end."""
        for _ in range(20000):
            busy = [d for d, box in self.inbox.items() if box]
            if busy:
                self.deliver(self.rnd.choice(busy))
                continue
            open_jobs = [j for j, s in self.states.items() if s is not None and not s.is_terminal]
            open_jobs += [j for j in self.logs if j not in self.states]
            if not open_jobs:
                return
            movable = [j for j in open_jobs if j not in self.states or self.states[j].status is not JobStatus.WAITING]  # type: ignore[union-attr]
            if movable:
                open_jobs = movable
            job_id = self.rnd.choice(open_jobs)
            log, state = self.logs[job_id], self.states.get(job_id)
            log.tick(1)
            if state is None:
                self.job(job_id, enqueue(log, limited(self.keys[job_id], self.max, self.strategy, rate=self.rate)))
            elif state.status is JobStatus.PENDING:
                self.job(job_id, log.claimed(state.attempt))
            elif state.status is JobStatus.CLAIMED:
                self.job(job_id, log.started(state.attempt))
            elif state.status is JobStatus.RUNNING:
                self.job(job_id, log.succeeded(state.attempt))
            elif state.status in (JobStatus.RETRYING, JobStatus.SCHEDULED):
                self.job(job_id, log.due(state.attempt, "retry" if state.status is JobStatus.RETRYING else "run_at"))
            elif state.status is JobStatus.WAITING:
                raise AssertionError(f"job {job_id} waits for a slot with nothing left to deliver: a leaked slot")
        raise AssertionError("the world did not settle")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), jobs=st.integers(1, 9), steps=st.integers(0, 300),
       limit=st.sampled_from([("queue", 2, None), ("cancel_newest", 2, None), ("cancel_in_progress", 2, None),
                              ("queue", 2, "1/s"), ("queue", None, "2/s"), ("cancel_newest", 1, "1/m")]))
def test_no_slot_granted_twice_none_leaked(seed: int, jobs: int, steps: int, limit: tuple[str, int | None, str | None]
                                           ) -> None:
    strategy, max_, rate = limit
    world = World(random.Random(seed), jobs, strategy, rate=rate, max_=max_)
    for _ in range(steps):
        world.step()
    world.settle()
    # every job ended; every owner is empty: no slot leaked, none waits
    assert all(s is not None and s.is_terminal for s in world.states.values())
    for owner, table in world.tables.items():
        assert table is None or (table.holders == () and table.queue == ()), f"owner {owner} leaked {table}"
    # folding the jobs' log from scratch (replay, the projector) reaches the live states
    assert fold(world.log) == {k: v for k, v in world.states.items() if v is not None}
    # the owners' grants, replayed from the delivered log alone (with the forgetting where it
    # happened), reach the same tables (a restart's fold)
    replayed: dict[str, SlotTable | None] = defaultdict(lambda: None)
    for event in world.delivered:
        if isinstance(event, tuple):
            replayed[event[1]] = None
        elif event.type in SLOT_OWNER_TYPES:
            replayed[event.job_id] = apply_slot(replayed[event.job_id], event).table
    assert dict(replayed) == {k: v for k, v in world.tables.items() if k in replayed}


def test_rate_starts_never_come_closer_than_the_rate_allows() -> None:
    """Over random request times, any window holds at most burst + its length / interval starts."""
    from eventjobs.core.clock import add_seconds

    rnd = random.Random(7)
    for burst in (1, 3):
        table, grants, at = None, [], T0
        for n in range(300):
            at = add_seconds(at, rnd.choice([0, 0, 0.01, 0.2, 1.5]))
            table, out = run(table, request(f"j{n}", max_=None, rate="10/s", burst=burst, at=at))
            grants += [(g.not_before or g.occurred_at) for g in out]
        starts = sorted(round((g - T0).total_seconds() * 1000) for g in grants)
        assert len(starts) == 300
        for i, start in enumerate(starts):
            in_window = sum(1 for other in starts[i:] if other < start + 1000)
            assert in_window <= 10 + burst - 1, (burst, start, in_window)


def test_a_job_without_a_limit_derives_nothing_new() -> None:
    log = JobLog("p")
    decision = apply(None, log.enqueued())
    assert decision.state is not None and decision.state.status is JobStatus.PENDING and decision.derived == ()
    assert decision.state.workflow is None


def test_a_scheduled_job_carries_its_limit_with_the_key_of_its_args() -> None:
    from eventjobs.core.options import Limit
    from eventjobs.core.schedules import define_schedule, tick_job

    options = JobOptions(concurrency=Limit(key=lambda args: args["tenant"], max=1))
    definition = define_schedule("sync", {"tenant": "t-3"}, options, every="1m", now=T0)
    event = tick_job(definition, T0, now=T0)
    assert event.options.concurrency == ConcurrencySpec(limit="sync", key="t-3", max=1, strategy="queue")
    assert apply(None, event).state.status is JobStatus.WAITING  # type: ignore[union-attr]


def test_a_full_queue_refuses_the_request_so_a_table_stays_one_record() -> None:
    from eventjobs.core.slots import MAX_QUEUED

    table, out = run(None, *(request(f"j{n}", max_=1) for n in range(MAX_QUEUED + 2)))
    assert table is not None and len(table.holders) == 1 and len(table.queue) == MAX_QUEUED
    refused = [e for e in out if e.type == "slot_refused"]
    assert [e.job_id for e in refused] == [f"j{MAX_QUEUED + 1}"] and "queue is full" in refused[0].reason
    assert len(encode_table(table)) < 600_000


def test_a_key_function_that_returns_no_key_is_refused_at_enqueue() -> None:
    import pytest

    from eventjobs.core.commands import enqueue as enqueue_event
    from eventjobs.core.options import InvalidJobOptions, Limit

    options = JobOptions(concurrency=Limit(key=lambda args: args.get("tenant"), max=2))  # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidJobOptions, match="concurrency key function returned None; return a non-empty string"):
        enqueue_event("sync", {}, options, now=T0, actor="producer:test")
    assert enqueue_event("sync", {"tenant": "t"}, options, now=T0, actor="producer:test").options.concurrency is not None


def test_a_limit_with_a_uniqueness_window_asks_once_per_run_and_refuses_the_window_s_repeats() -> None:
    from eventjobs.core.commands import enqueue as enqueue_event
    from eventjobs.core.options import Limit

    not_ended = ("waiting", "pending", "scheduled", "claimed", "running", "retrying", "dead_lettered")
    options = JobOptions(idempotency_key="report-7", unique_for="1h", unique_states=not_ended,
                         concurrency=Limit(key="t-1", max=1))
    first = enqueue_event("report", {"n": 1}, options, now=T0, actor="producer:test")
    decision = apply(None, first)
    assert decision.state is not None and decision.state.status is JobStatus.WAITING
    (asked,) = decision.derived
    # a repeat of the window while it waits is refused, and asks for nothing
    repeat = enqueue_event("report", {"n": 2}, options, now=T0, actor="producer:test")
    refused = apply(decision.state, repeat)
    assert refused.rejected and [e.type for e in refused.derived] == ["duplicate_rejected"]
    table, (grant,) = run(None, asked)
    log = JobLog(first.job_id)
    state = apply(apply(decision.state, grant).state, log.claimed()).state
    done = apply(state, log.succeeded())
    assert [e.type for e in done.derived] == ["completed", "slot_released"]
    table, _ = run(table, done.derived[1])
    # after it ended, the window runs it again (unique_states): a new request, granted
    again = apply(done.state, enqueue_event("report", {"n": 3}, options, now=T0, actor="producer:test"))
    assert again.state is not None and again.state.status is JobStatus.WAITING
    (asked_again,) = again.derived
    assert asked_again.event_id != asked.event_id
    assert [e.type for e in run(table, asked_again)[1]] == ["slot_granted"]
