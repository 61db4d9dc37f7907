"""`App`: register jobs, enqueue them, wait for them, cancel them, handle dead letters.

Everything that writes an event validates first and sends nothing on bad input; a write returns
only after the broker acknowledged it (acks=all, idempotent producer), so an acknowledged enqueue
is never lost.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, NamedTuple, Self, TypeVar

from aiokafka import TopicPartition

from eventjobs.core.clock import Clock, SystemClock
from eventjobs.core.ids import batch_member_ids, derived_event_id, new_batch_id
from eventjobs.core.limits import MAX_BATCH_ID_CHARS, MAX_DEPENDENCIES, RECENT_ENQUEUES_KEPT
from eventjobs.core.commands import (
    cancel_requested_event,
    dead_letter_retried_event,
    discarded_event,
    limit_changed_event,
)
from eventjobs.core.events import EnqueuedEvent, JobEvent
from eventjobs.core.flow import Verdict, enqueue_verdict, window_end
from eventjobs.core.options import JobOptions
from eventjobs.core.state import JobState
from eventjobs.core.control import (
    CANCELLABLE_STATUSES,
    QueueStatus,
    WorkerStatus,
    admit_queue_control,
    admit_worker,
    queue_control,
    queue_of_route,
    queue_statuses,
    worker_presence,
)
from eventjobs.core.schedules import (
    SCHEDULE_OPTIONS,
    InvalidSchedule,
    ScheduleDefinition,
    ScheduleState,
    ScheduleStatus,
    declared_schedule_id,
    define_schedule,
    definition_change,
    schedule_deleted_event,
    schedule_paused_event,
    schedule_resumed_event,
    schedule_triggered_event,
    status_of,
    tick_job,
)
from eventjobs.kafka.clients import partitions_of
from eventjobs.core.records import DeadLetterRecord
from eventjobs.hooks import Hook, Hooks
from eventjobs.log.bad_records import BadRecords
from eventjobs.log.readers import read_control, read_dead_letters, read_job_states, read_schedule_states
from eventjobs.log.state_watch import StateWatcher
from eventjobs.log.writer import LogWriter, PayloadTooLarge, producer_actor, run_on
from eventjobs.registry import (
    Handler,
    InvalidJobArguments,
    JobDefinition,
    build_enqueued,
    build_schedule,
    define,
    definition_of,
)
from eventjobs.settings import Settings, load_settings
from eventjobs.kafka.admin import TopicLayoutError, ready_routes
from eventjobs.kafka.topics import TopicNames, load_specs

T = TypeVar("T")


__all__ = ["InvalidJobArguments", "PayloadTooLarge"]  # defined with the validator and the writer, raised here


class NotInDeadLetters(LookupError):
    """A dead-letter action named a job that is not in the dead-letter queue."""


class UnknownDependency(LookupError):
    """`depends_on` named a job that this app did not enqueue recently and the changelog does not hold."""


class EnqueueRefused(RuntimeError):
    """`App.enqueue_unique`: another enqueue won the window of this idempotency key (`unique_for`),
    or the debounced job of the window had already started (`debounce`). Nothing new will run.

    `winner_id` is the job that holds the window, `winner_enqueued_at` when it was enqueued,
    `window_ends_at` when the next window begins (an enqueue from then on makes a new job).
    """

    def __init__(self, state: JobState, event: EnqueuedEvent) -> None:
        self.winner_id = state.job_id
        self.winner_enqueued_at = state.enqueued_at
        self.window_ends_at = window_end(state)
        self.event_id = event.event_id
        ends = self.window_ends_at.isoformat(timespec="milliseconds") if self.window_ends_at else "?"
        why = (f"its debounced job started ({state.status.value}) before this enqueue came"
               if state.options.debounce_s is not None else "another enqueue won it")
        super().__init__(
            f"enqueue of job {state.name!r} with idempotency key {event.idempotency_key!r} refused: {why}. The "
            f"window's job is {self.winner_id} (enqueued {state.enqueued_at.isoformat(timespec='milliseconds')}); "
            f"the window ends at {ends}, an enqueue after that makes a new job"
        )


class Batch(NamedTuple):
    """What `App.enqueue_batch` enqueued: the jobs, in the order given, the callback (or None), and
    the batch id their ids are derived from."""

    job_ids: list[str]
    callback_id: str | None
    batch_id: str


class BatchIncomplete(RuntimeError):
    """`App.enqueue_batch` failed after it began to send: part of the batch may be on the log.

    The message says what the broker acknowledged; `batch` holds the ids. Calling
    `enqueue_batch` again with the same items, `then` and `batch_id=batch.batch_id` completes
    it: what was written already is taken as a duplicate.
    """

    def __init__(self, batch: Batch, jobs_acknowledged: bool, error: Exception) -> None:
        jobs = f"{len(batch.job_ids)} job(s)"
        if jobs_acknowledged:
            what = f"its {jobs} were acknowledged, its callback {batch.callback_id} may not have been written"
        elif batch.callback_id is not None:
            what = f"its {jobs} may be partly written and its callback {batch.callback_id} was not sent"
        else:
            what = f"its {jobs} may be partly written"
        cause = str(error) if str(error).startswith(type(error).__name__) else f"{type(error).__name__}: {error}"
        super().__init__(
            f"batch {batch.batch_id} is incomplete: {what} ({cause}). Call enqueue_batch "
            f"again with the same items and then=, and batch_id={batch.batch_id!r}: the events already written "
            f"are taken as duplicates, so no job is enqueued twice"
        )
        self.batch = batch
        self.jobs_acknowledged = jobs_acknowledged



class ScheduleNotFound(LookupError):
    """A schedule action named a schedule that does not exist (or was deleted)."""


class UnknownQueue(LookupError):
    """A queue action named a queue the app does not know; the message lists the known ones."""


class App:
    """One application: its jobs and its topics (the namespace is the app name)."""

    def __init__(
        self, name: str, settings: Settings | None = None, *, clock: Clock | None = None,
        hooks: list[Hook] | None = None, **overrides: Any
    ) -> None:
        self.settings = settings or load_settings(namespace=name, **overrides)
        if self.settings.namespace != name and settings is None:
            raise ValueError(f"app name {name!r} and namespace {self.settings.namespace!r} differ")
        self.name = name
        self.jobs: dict[str, JobDefinition] = {}
        self._names: TopicNames | None = None
        self.actor = producer_actor()
        self.clock = clock or SystemClock()  # the time written into the events this app appends
        self._writer: LogWriter | None = None
        self._watcher: StateWatcher | None = None
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_lock = threading.Lock()
        self._acknowledged: dict[str, None] = {}  # ids of recent acknowledged enqueues (depends_on checks them)
        #: the app's hooks, in order (`add_hook`): its enqueues call `before_enqueue`, a worker of
        #: the app calls the rest (docs/hooks.md)
        self.hooks = Hooks(hooks or ())

    @property
    def names(self) -> TopicNames:
        if self._names is None:
            self._names = TopicNames(self.settings.namespace, load_specs(self.settings.topics_dir))
        return self._names

    @property
    def writer(self) -> LogWriter:
        """The app's writer to the log: one producer per event loop, stopped by `close()`."""
        if self._writer is None:
            self._writer = LogWriter(self.settings, self.names, owner=f"app {self.name!r}")
        return self._writer

    # -- registration ----------------------------------------------------------------------
    def job(self, name: str | None = None, **options: Any) -> Callable[[Handler], Handler]:
        """Register a handler: `@app.job(queue="emails", max_attempts=5, timeout=30, priority="high")`.

        Options are validated here, so a typo fails at import time, not at the first enqueue.
        `every="30s"` or `cron="0 * * * *"` (with `timezone=`, `catch_up=`) also declares a
        periodic schedule `job:<name>` that `eventjobs processor --app` writes at start.
        """
        schedule = {key: options.pop(key) for key in SCHEDULE_OPTIONS if key in options}
        if schedule and "every" not in schedule and "cron" not in schedule:
            raise InvalidSchedule(f"{', '.join(schedule)} given without every= or cron=")

        def register(handler: Handler) -> Handler:
            job_name = name or handler.__name__
            if job_name in self.jobs:
                raise ValueError(f"job {job_name!r} is already registered in app {self.name!r}")
            job_options = JobOptions(**options)
            if schedule:
                define_schedule(job_name, None, job_options, declared=True, now=self.clock.now(),
                                schedule_id=declared_schedule_id(job_name), **schedule)
            self.jobs[job_name] = define(job_name, handler, job_options, schedule=schedule or None)
            return handler

        return register

    def add_hook(self, hook: Hook) -> None:
        """Add a hook after those given so far (`InvalidHook` if it is not one). A worker takes the
        app's hooks when it is made: add them before."""
        self.hooks.add(hook)

    def definition(self, name: str) -> JobDefinition:
        return definition_of(self.jobs, name)

    # -- producing -------------------------------------------------------------------------
    def _build_enqueue(
        self, name: str, args: dict[str, Any] | None = None, *, parent_job_id: str | None = None,
        depends_on: list[str] | None = None, now: datetime | None = None, **options: Any
    ) -> EnqueuedEvent:
        """The validated `enqueued` event for a job (nothing is sent). Raises on any bad input.

        `now` (default: the app's clock) is the enqueue time, from which `delay` and `ttl` count
        (`eventjobs.testing` passes its frozen clock's).
        """
        return self._enqueued(name, args, options, parent_job_id=parent_job_id, depends_on=depends_on, now=now)

    def _enqueued(
        self, name: str, args: dict[str, Any] | None, options: dict[str, Any], *, parent_job_id: str | None = None,
        depends_on: list[str] | None = None, ids: tuple[str, str] | None = None, now: datetime | None = None,
    ) -> EnqueuedEvent:
        """`_build_enqueue`, with the (default job id, event id) of a batch member when `ids` is given."""
        return build_enqueued(self.definition(name), args, options, now=now or self.clock.now(), actor=self.actor,
                              parent_job_id=parent_job_id, depends_on=depends_on, ids=ids)

    async def enqueue(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> str:
        """Validate, append the `enqueued` event, return the job id once the broker acknowledged it.

        Options override the job's registered ones: queue, max_attempts, backoff, retry_on,
        timeout, priority, ttl, idempotency_key, run_at, delay, capabilities, unique_for, debounce,
        plus parent_job_id. With an idempotency key the job id is derived from it (and from the
        window, with unique_for or debounce): a duplicate returns the same id and the processor
        refuses to run the job again. `enqueue_unique` also says whether this enqueue won.
        """
        event = self._build_enqueue(name, args, **options)
        if event.depends_on:
            await self._check_dependencies(event.depends_on)
        await self.hooks.before_enqueue(event)
        await self.writer.append([event])
        self._acknowledge(event.job_id)
        return event.job_id

    async def enqueue_unique(
        self, name: str, args: dict[str, Any] | None = None, *, timeout: float = 30.0, **options: Any
    ) -> str:
        """`enqueue` a job with `unique_for` or `debounce`, and wait for the processor's decision.

        Returns the job id when this enqueue made the window's job (or, debounce, gave the waiting
        job its args); raises `EnqueueRefused` naming the winner's id when another enqueue holds the
        window. The decision is read from the job-state changelog (`timeout`: `TimeoutError` if no
        processor decides in time). Plain `enqueue` returns the same id without waiting: the
        window's job id is derived from the key and the window (docs/flow-control.md).
        """
        event = self._build_enqueue(name, args, **options)
        if event.options.unique_for_s is None and event.options.debounce_s is None:
            raise InvalidJobArguments(
                f"enqueue_unique of job {name!r} needs unique_for or debounce (given or registered); nothing was sent"
            )
        await self.writer.append([event])
        self._acknowledge(event.job_id)
        replaced_id = derived_event_id(event.event_id, "debounced", 0)
        state = await self._state_watcher().wait_for(
            event.job_id, lambda s: enqueue_verdict(s, event.event_id, replaced_id) is not None, timeout
        )
        if enqueue_verdict(state, event.event_id, replaced_id) is Verdict.REFUSED:
            raise EnqueueRefused(state, event)
        return event.job_id

    def _acknowledge(self, job_id: str) -> None:
        """Remember an acknowledged enqueue (the last `RECENT_ENQUEUES_KEPT`), for `depends_on` checks."""
        acknowledged = self._acknowledged
        acknowledged[job_id] = None
        if len(acknowledged) > RECENT_ENQUEUES_KEPT:
            del acknowledged[next(iter(acknowledged))]

    async def _check_dependencies(self, job_ids: list[str]) -> None:
        """Refuse `depends_on` naming a job that does not exist: one this app enqueued recently,
        or one whose state the changelog holds (a job another process enqueued a moment ago may
        not be there yet). The processor answers `missing` for any that slips through."""
        for job_id in job_ids:
            if job_id not in self._acknowledged and await self.state(job_id) is None:
                raise UnknownDependency(
                    f"depends_on names job {job_id!r}, which does not exist in app {self.name!r} (not enqueued by "
                    f"this app recently, and no state in the changelog: never enqueued, not processed yet, or "
                    f"forgotten after its retention); nothing was sent"
                )

    async def enqueue_batch(
        self, items: list[tuple[Any, ...]], *, then: tuple[Any, ...] | None = None, batch_id: str | None = None,
    ) -> Batch:
        """Enqueue many jobs, and optionally a callback that runs once all of them ended.

        `items` are `(name, args)` or `(name, args, {options})`; `then` is the callback the same
        way. The callback gets `depends_on` the batch and `on_dependency_failure="run"`: it runs
        whatever became of them, and `ctx.dependencies` holds each one's status and result.

        Everything is validated first, the size of every event (the callback's included) and
        the dependencies that items name: if anything is bad, nothing is sent. The jobs are then
        sent together, and the callback once the broker acknowledged all of them (a dependency
        must be on the log before its dependent asks for it). Not in a Kafka transaction: the
        processor reads the log uncommitted, so an aborted write would still be applied.

        Instead the ids are derived from `batch_id` (`ids.batch_member_ids`; generated when not
        given, returned in `Batch`), except that a job with an idempotency key keeps the key's
        id. Calling again with the same items, `then` and `batch_id` therefore writes the same
        jobs under the same event ids, and the processor takes those already written as
        duplicates. If sending fails part way, `BatchIncomplete` says what was acknowledged and
        names the batch id to call again with. A caller that may die between the two sends
        passes its own `batch_id` (stored with the work that asked for the batch), so that it can
        call again after a restart. As with an idempotency key, a repeat is a duplicate while its
        job is retained (`retain_completed` after it finished).
        """
        if batch_id is None:
            batch_id = new_batch_id()
        elif not isinstance(batch_id, str) or not 1 <= len(batch_id) <= MAX_BATCH_ID_CHARS or not batch_id.isprintable():
            raise InvalidJobArguments(
                f"batch_id must be a string of 1-{MAX_BATCH_ID_CHARS} printable characters (MAX_BATCH_ID_CHARS), "
                f"got {batch_id!r:.300}"
            )
        events = []
        for index, item in enumerate(items):
            name, args, options = self._batch_item(item, "items")
            events.append(self._enqueued(name, args, options, ids=batch_member_ids(batch_id, index)))
        if not events:
            raise InvalidJobArguments("enqueue_batch needs at least one job")
        callback = None
        if then is not None:
            if len(events) > MAX_DEPENDENCIES:
                raise InvalidJobArguments(
                    f"a batch with a callback holds at most {MAX_DEPENDENCIES} jobs (MAX_DEPENDENCIES: the callback "
                    f"depends on each), got {len(events)}; nothing was sent"
                )
            name, args, options = self._batch_item(then, "then")
            if "depends_on" in options:
                raise InvalidJobArguments("then: the callback depends on the batch; it takes no depends_on option")
            callback = self._enqueued(name, args, {**options, "on_dependency_failure": "run"},
                                      depends_on=[e.job_id for e in events], ids=batch_member_ids(batch_id, None))
        jobs = self.writer.encoded(events)
        last = self.writer.encoded([callback]) if callback is not None else []
        for event in events:
            if event.depends_on:
                await self._check_dependencies(event.depends_on)
        for event in [*events, *([callback] if callback is not None else [])]:
            await self.hooks.before_enqueue(event)
        await self.writer.producer()  # raises KafkaUnavailable before anything is sent
        batch = Batch([e.job_id for e in events], callback.job_id if callback is not None else None, batch_id)
        acknowledged = False
        try:
            await self.writer.send(jobs)
            acknowledged = True
            for event in events:
                self._acknowledge(event.job_id)
            if callback is not None:
                await self.writer.send(last)
                self._acknowledge(callback.job_id)
        except Exception as error:
            raise BatchIncomplete(batch, acknowledged, error) from error
        return batch

    @staticmethod
    def _batch_item(item: Any, where: str) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
        if not isinstance(item, (tuple, list)) or not 1 <= len(item) <= 3 or not isinstance(item[0], str):
            raise InvalidJobArguments(f"{where}: expected (name, args) or (name, args, options), got {item!r}")
        options = item[2] if len(item) == 3 else {}
        if not isinstance(options, dict):
            raise InvalidJobArguments(f"{where}: options must be a dict, got {type(options).__name__}")
        return item[0], item[1] if len(item) > 1 else None, options

    def enqueue_sync(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> str:
        """`enqueue` for scripts and sync web handlers (runs on a private event loop thread)."""
        return self._run_sync(self.enqueue(name, args, **options))

    def _run_sync(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run one of the app's coroutines from sync code."""
        with self._sync_lock:
            if self._sync_loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=f"eventjobs-{self.name}", daemon=True).start()
                self._sync_loop = loop
        return asyncio.run_coroutine_threadsafe(coroutine, self._sync_loop).result()

    # -- waiting and operator actions ------------------------------------------------------
    def _state_watcher(self) -> StateWatcher:
        """The app's one changelog watcher, made on first use, on the event loop it is used from.

        It is made anew only when that loop has closed (e.g. after `asyncio.run` returned).
        """
        watcher = self._watcher
        if watcher is None or watcher.loop.is_closed():
            watcher = self._watcher = StateWatcher(
                self.settings, self.names.job_state, keep=self.settings.wait_cache_jobs
            )
        elif watcher.loop is not asyncio.get_running_loop():
            raise RuntimeError(
                f"App.wait and App.state of app {self.name!r} follow the changelog on the event loop they were "
                f"first used on; call them from that loop"
            )
        return watcher

    async def wait(self, job_id: str, timeout: float = 60.0) -> JobState:
        """The job's terminal state (completed, cancelled, dead_lettered or discarded).

        Any number of callers may wait at once: one watcher per app follows the changelog. A job
        that finished before the call is answered too, from the cache of the latest states
        (`EVENTJOBS_WAIT_CACHE_JOBS`) or else from the job's changelog partition. `timeout` covers
        everything; the TimeoutError says the job's last state, or that none exists. A job retried
        from the dead-letter queue stays dead_lettered until a processor folds the retry, so a
        `wait` right after `retry_dead_letter` can answer that dead letter: check `state` first.
        """
        return await self._state_watcher().wait(job_id, timeout)

    async def state(self, job_id: str) -> JobState | None:
        """The job's latest state in the changelog (None: unknown, or forgotten after retention)."""
        return await self._state_watcher().latest(job_id)

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> None:
        """Ask to cancel: pending, scheduled and retrying jobs stop at once; a running one at its end."""
        await self.writer.append([cancel_requested_event(job_id, reason, now=self.clock.now(), actor=self.actor)])

    # -- limits at run time ----------------------------------------------------------------
    async def set_limit(self, limit: str, *, key: str | None = None, max: int | None = None,
                        rate: str | None = None, burst: int | None = None) -> str:
        """Set limit ``limit``'s max and rate for ``key`` (None: a limit without key) from now on,
        whatever its jobs' options say (docs/flow-control.md); returns the key owner's id. Raising
        ``max`` grants waiting jobs at once; lowering it lets the running ones finish."""
        event = limit_changed_event(limit, key, max_=max, rate=rate, burst=burst, now=self.clock.now(),
                                    actor=self.actor)
        await self.writer.append([event])
        return str(event.job_id)

    async def reset_limit(self, limit: str, *, key: str | None = None) -> str:
        """Hand limit ``limit``'s max and rate for ``key`` back to its jobs' own options."""
        event = limit_changed_event(limit, key, reset=True, now=self.clock.now(), actor=self.actor)
        await self.writer.append([event])
        return str(event.job_id)

    # -- periodic schedules ----------------------------------------------------------------
    def _build_schedule(self, name: str, args: dict[str, Any] | None = None, *, every: Any = None,
                       cron: str | None = None, timezone: str = "UTC", catch_up: str = "one",
                       schedule_id: str | None = None, declared: bool = False, now: datetime | None = None,
                       **job_options: Any) -> ScheduleDefinition:
        """The validated definition of a schedule of the registered job `name` (nothing is sent)."""
        return build_schedule(self.definition(name), args, every=every, cron=cron, timezone=timezone,
                              catch_up=catch_up, schedule_id=schedule_id, declared=declared,
                              now=now or self.clock.now(), actor=self.actor, **job_options)

    async def schedule(self, name: str, args: dict[str, Any] | None = None, *, every: Any = None,
                       cron: str | None = None, timezone: str = "UTC", schedule_id: str | None = None,
                       catch_up: str = "one", **job_options: Any) -> str:
        """Create (or update) a periodic schedule of job `name`; returns its id.

        `every="30s"` (ticks are multiples of the period since the Unix epoch, UTC) or
        `cron="0 * * * *"` in `timezone`. Each tick enqueues one job with the idempotency key
        `<schedule id>@<tick>`. `catch_up`: what fires for ticks missed while no processor ran:
        "none", "one" (the latest, default) or "all" (up to 100). Without `schedule_id` the id is
        `<name>:<digest of args and rule>`, so scheduling the same thing again changes nothing.
        Updating a paused schedule keeps it paused.
        """
        definition = self._build_schedule(name, args, every=every, cron=cron, timezone=timezone, catch_up=catch_up,
                                         schedule_id=schedule_id, **job_options)
        current = await self._schedule_state(definition.schedule_id)
        change = definition_change(definition, current, now=self.clock.now(), actor=self.actor)
        if change is not None:
            await self.writer.append_schedule_records([change])
        return definition.schedule_id

    async def unschedule(self, schedule_id: str, reason: str = "deleted by request") -> None:
        """Delete a schedule: no tick fires after this (a job already enqueued still runs)."""
        current = await self._live_schedule(schedule_id)
        await self.writer.append_schedule_records([schedule_deleted_event(current, reason, now=self.clock.now(), actor=self.actor)])

    async def pause_schedule(self, schedule_id: str) -> bool:
        """Pause a schedule (False: it was paused already). Ticks while paused never fire."""
        current = await self._live_schedule(schedule_id)
        if current.definition is not None and current.definition.paused:
            return False
        await self.writer.append_schedule_records([schedule_paused_event(current, now=self.clock.now(), actor=self.actor)])
        return True

    async def resume_schedule(self, schedule_id: str) -> bool:
        """Resume a paused schedule from now on (False: it was not paused)."""
        current = await self._live_schedule(schedule_id)
        if current.definition is not None and not current.definition.paused:
            return False
        await self.writer.append_schedule_records([schedule_resumed_event(current, now=self.clock.now(), actor=self.actor)])
        return True

    async def trigger_schedule(self, schedule_id: str) -> str:
        """Enqueue the schedule's job now, outside its ticks (paused or not); returns the job id."""
        current = await self._live_schedule(schedule_id)
        assert current.definition is not None
        now = self.clock.now()
        job = tick_job(current.definition, now, now=now, manual=True)
        await self.writer.append([job])
        await self.writer.append_schedule_records([schedule_triggered_event(schedule_id, now, job.job_id, now=now,
                                                                     actor=self.actor)])
        return job.job_id

    async def schedules(self) -> list[ScheduleStatus]:
        """Every schedule that is not deleted, with its last and next tick, by id."""
        bad = BadRecords("eventjobs.app", f"schedules of namespace {self.settings.namespace!r}")
        states = await read_schedule_states(self.settings, self.names, bad)
        self.skipped_schedule_records = bad.total
        now = self.clock.now()
        shown = [status_of(state, now) for state in states.values()]
        return sorted((s for s in shown if s is not None), key=lambda s: s.schedule_id)

    skipped_schedule_records = 0  # records the last `schedules()` call skipped because they could not be used

    async def _schedule_state(self, schedule_id: str) -> ScheduleState | None:
        bad = BadRecords("eventjobs.app", f"schedules of namespace {self.settings.namespace!r}")
        states = await read_schedule_states(self.settings, self.names, bad, schedule_id=schedule_id)
        return states.get(schedule_id)

    async def _live_schedule(self, schedule_id: str) -> ScheduleState:
        state = await self._schedule_state(schedule_id)
        if state is None or not state.live:
            raise ScheduleNotFound(f"no schedule {schedule_id!r} in namespace {self.settings.namespace!r} "
                                   f"(see `eventjobs schedules list`)")
        return state

    skipped_dead_letters = 0  # entries the last `dead_letters()` call skipped because they could not be used

    async def dead_letters(self, name: str | None = None) -> list[DeadLetterRecord]:
        """What is in the dead-letter queue now (of job name `name`, if given), read from the
        compacted dead-letter topic.

        An entry that cannot be used (a key that is not UTF-8, a value that is not a dead-letter
        record, or one about another job than its key) is skipped, counted in
        `skipped_dead_letters` and logged once per kind; the good entries are listed.
        """
        bad = BadRecords("eventjobs.app", f"app {self.name!r} (dead letters)")
        entries = await read_dead_letters(self.settings, await self._operator_partitions(self.names.dead_letters), bad)
        self.skipped_dead_letters = bad.total
        return sorted((e for e in entries.values() if name is None or e.name == name), key=lambda e: e.dead_lettered_at)

    def _operator_action(self, build: Callable[..., JobEvent], entry: DeadLetterRecord, reason: str) -> JobEvent:
        """A dead-letter action refers to the dead_lettered event it acts on, which makes it idempotent."""
        return build(entry.job_id, entry.dead_letter_event_id, reason, now=self.clock.now(), actor=self.actor)

    async def retry_dead_letter(self, job_id: str, reason: str = "retried by operator") -> DeadLetterRecord:
        entry = await self._dead_letter(job_id)
        await self.writer.append([self._operator_action(dead_letter_retried_event, entry, reason)])
        return entry

    async def retry_all_dead_letters(self, name: str | None = None, reason: str = "retried by operator") -> list[str]:
        entries = await self.dead_letters(name)
        await self.writer.append([self._operator_action(dead_letter_retried_event, e, reason) for e in entries])
        return [e.job_id for e in entries]

    async def discard_dead_letter(self, job_id: str, reason: str = "discarded by operator") -> DeadLetterRecord:
        entry = await self._dead_letter(job_id)
        await self.writer.append([self._operator_action(discarded_event, entry, reason)])
        return entry

    # -- operators: workers, queues, bulk actions ------------------------------------------
    skipped_control_records = 0  # records of a control topic the last `workers()` / `queues()` call skipped

    async def _read_control(self, topic: str, admit: Callable[[bytes | None, bytes | None], Any]) -> dict[str, Any]:
        """The latest usable record per key of a compacted control topic (empty if it does not exist)."""
        bad = BadRecords("eventjobs.app", f"app {self.name!r} ({topic})")
        latest = await read_control(self.settings, await self._operator_partitions(topic), admit, bad)
        self.skipped_control_records = bad.total
        return latest

    async def _operator_partitions(self, topic: str) -> list[TopicPartition]:
        """The partitions of a topic an operator command reads. A namespace without an event log is a
        mistake (a mistyped --namespace) and raises; a missing control topic of an older namespace
        reads as empty (the first worker creates it)."""
        partitions = await partitions_of(self.settings, topic)
        if not partitions and not await partitions_of(self.settings, self.names.events):
            raise TopicLayoutError(
                f"namespace {self.settings.namespace!r} has no topics ({self.names.events} does not exist); check "
                f"--namespace / EVENTJOBS_NAMESPACE, or create them with "
                f"`eventjobs topics apply --namespace {self.settings.namespace}`")
        return partitions

    async def workers(self) -> list[WorkerStatus]:
        """Every worker on the registry (`<ns>.workers`) with its presence: alive, stopped or gone."""
        now = self.clock.now()
        announcements = await self._read_control(self.names.workers, admit_worker)
        return sorted(
            (WorkerStatus(**a.model_dump(), presence=worker_presence(a, now)) for a in announcements.values()),
            key=lambda w: (w.presence != "alive", w.worker_id),
        )

    async def queues(self) -> list[QueueStatus]:
        """Every queue of the app's jobs, of its ready topics on the cluster and of the control topic,
        with whether it is paused and its last change."""
        known = {d.options.queue for d in self.jobs.values()}
        known |= {queue_of_route(route) for route in await ready_routes(self.settings)}
        return queue_statuses(known, await self._read_control(self.names.queue_control, admit_queue_control))

    async def pause_queue(self, queue: str, reason: str = "paused by operator") -> None:
        """Workers stop taking jobs of `queue` within about a second, until it is resumed (restarts included)."""
        await self._control_queue(queue, paused=True, reason=reason)

    async def resume_queue(self, queue: str, reason: str = "resumed by operator") -> None:
        """Workers take jobs of `queue` again within about a second."""
        await self._control_queue(queue, paused=False, reason=reason)

    async def _control_queue(self, queue: str, *, paused: bool, reason: str) -> None:
        known = [status.queue for status in await self.queues()]
        if queue not in known:
            raise UnknownQueue(
                f"queue {queue!r} is not known in namespace {self.settings.namespace!r}; known queues: "
                f"{', '.join(known) or 'none'} (the app's job queues, queues with ready topics, queues paused before)"
            )
        record = queue_control(queue, paused=paused, reason=reason, now=self.clock.now(), actor=self.actor)
        await self.writer.put_queue_control(queue, record.encode())

    async def find_jobs(
        self, *, name: str | None = None, queue: str | None = None, statuses: frozenset[str] | None = None,
    ) -> list[JobState]:
        """Jobs whose current state (the job-state changelog, read to its end) matches every filter
        given; `statuses` defaults to the ones a cancel stops at once (`core.control.CANCELLABLE_STATUSES`)."""
        wanted = CANCELLABLE_STATUSES if statuses is None else statuses
        bad = BadRecords("eventjobs.app", f"app {self.name!r} (job states)")
        return await read_job_states(
            self.settings, await self._operator_partitions(self.names.job_state), bad,
            lambda state: state.status.value in wanted and name in (None, state.name) and queue in (None, state.queue),
        )

    async def cancel_jobs(self, job_ids: list[str], reason: str = "cancelled by operator") -> int:
        """Ask to cancel each job (as `cancel` does); returns how many cancel requests were written."""
        now = self.clock.now()
        await self.writer.append([cancel_requested_event(job_id, reason, now=now, actor=self.actor) for job_id in job_ids])
        return len(job_ids)

    async def discard_all_dead_letters(self, name: str | None = None, reason: str = "discarded by operator") -> list[str]:
        """Discard every dead-lettered job (of job name `name`); returns their ids."""
        entries = await self.dead_letters(name)
        await self.writer.append([self._operator_action(discarded_event, e, reason) for e in entries])
        return [e.job_id for e in entries]

    async def _dead_letter(self, job_id: str) -> DeadLetterRecord:
        for entry in await self.dead_letters():
            if entry.job_id == job_id:
                return entry
        raise NotInDeadLetters(f"job {job_id} is not in the dead-letter queue of app {self.name!r}")

    async def close(self) -> None:
        """Stop the watcher and the producers of every running loop, then the private sync loop.

        A loop that is neither running nor closed cannot run a stop now; its producer is stopped
        when `asyncio.run` shuts that loop down (or dropped once the loop is closed).
        """
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher.loop.is_running():
            await run_on(watcher.loop, watcher.stop())
        if self._writer is not None:
            await self._writer.close()
        sync_loop, self._sync_loop = self._sync_loop, None
        if sync_loop is not None:
            sync_loop.call_soon_threadsafe(sync_loop.stop)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
