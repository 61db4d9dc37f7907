"""Hooks: code of your own that the worker and the app call at fixed points, never in the way.

Why a chain: metrics, tracing and audit logs each want to see every attempt, but none of them
may decide an attempt or stop a worker. So a hook only observes. `Hook` has one no-op method per
hook point; a subclass overrides the ones it needs, each plain or `async`. `Hooks` calls them:

* "before" points (`on_worker_start`, `before_attempt`, `before_enqueue`) and the single events
  (`on_quarantined`, `on_queue_depth`) in the order the hooks were added;
* "after" points (`after_attempt`, `on_worker_stop`) in reverse order, so the first hook added
  wraps all the others, as middleware does (Dramatiq's `after_*`, River's middleware stack).

A hook that raises (an `Exception`) is logged with its name and the point, counted in
`Hooks.failures` (and, in a service with metrics, in `eventjobs_hook_failures_total{hook,
method}`), and the rest goes on: the other hooks run, the job's outcome is the one already
decided. Only a cancellation propagates. The first failure of each (hook, point) is logged with
its traceback, then only the running count at 10, 100, 1,000 ... (no flood).
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from eventjobs.core.events import EnqueuedEvent, JobEvent
from eventjobs.log.bad_records import power_of_ten

if TYPE_CHECKING:
    from eventjobs.metrics import Metrics

log = logging.getLogger("eventjobs.hooks")

#: Every hook point, by name; the "after" ones run in reverse order of the hooks.
HOOK_POINTS = ("on_worker_start", "on_worker_stop", "before_attempt", "after_attempt", "on_quarantined",
               "on_queue_depth", "before_enqueue")
REVERSED_POINTS = frozenset({"after_attempt", "on_worker_stop"})
_PREFIXES = ("on_", "before_", "after_")


class InvalidHook(TypeError):
    """A hook given to `App(hooks=...)` / `app.add_hook` that is not one: the message says what to change."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """The worker a hook runs in: what it serves, and how many of its slots are busy now (`busy()`)."""

    worker_id: str
    queues: tuple[str, ...]
    capabilities: tuple[str, ...]
    concurrency: int
    threads: int
    busy: Callable[[], int]


class AttemptInfo(NamedTuple):
    """One attempt of a job, as the worker running it knows it (no args: they may be large or private).

    Immutable, and a `NamedTuple` rather than a frozen dataclass because one is built per attempt
    (with `AttemptOutcome`): 1.6 us against 4 us on the development machine (benchmarks/bench_hooks.py).
    """

    job_id: str
    name: str
    queue: str
    priority: str
    attempt: int  # 0 for the first
    max_attempts: int
    worker_id: str
    claim_id: str | None  # this worker's `claimed` event id: every event of the attempt names it
    enqueued_at: datetime
    ready_at: datetime  # when it became ready: enqueued, or due (a scheduled run, a retry)
    started_at: datetime  # the worker's clock when `attempt_started` was sent


class AttemptOutcome(NamedTuple):
    """How an attempt ended: `event` is the event written for it (`core.attempt_end`'s rule)."""

    event: JobEvent  # attempt_succeeded, attempt_failed, attempt_timed_out or attempt_snoozed
    duration_s: float  # the handler's run time, on the event loop's monotonic clock
    error: BaseException | None = None  # what the handler raised, or what failed around it; None otherwise

    @property
    def kind(self) -> str:
        """`succeeded`, `failed`, `timed_out` or `snoozed`."""
        return self.event.type.removeprefix("attempt_")


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A ready record the worker could not run, copied to the quarantine topic (`kind`: why, in short)."""

    topic: str
    partition: int
    offset: int
    kind: str
    reason: str


class Hook:
    """Base class of hooks: every method is a no-op; override the points you need (plain or `async def`).

    Hooks observe: what they return is ignored, and what they raise is logged and counted, never
    passed on. Keep them quick: an attempt's hooks run in its task, on the worker's event loop.
    """

    #: The hook's name in logs and in `eventjobs_hook_failures_total` (default: the class name).
    name: ClassVar[str] = ""

    def on_worker_start(self, worker: WorkerInfo) -> Awaitable[None] | None:
        """The worker begins to run (before it connects to Kafka)."""

    def on_worker_stop(self, worker: WorkerInfo) -> Awaitable[None] | None:
        """The worker has stopped: its running jobs ended or were handed back, its clients closed."""

    def before_attempt(self, attempt: AttemptInfo) -> Awaitable[None] | None:
        """An attempt is claimed and `attempt_started` sent; its handler is called next."""

    def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> Awaitable[None] | None:
        """The attempt's ending event is sent (also for one the worker hands back as it stops)."""

    def on_quarantined(self, record: Quarantined) -> Awaitable[None] | None:
        """A ready record the worker could not run was copied to the quarantine topic."""

    def on_queue_depth(self, depth: Mapping[tuple[str, str], int]) -> Awaitable[None] | None:
        """Ready records not yet consumed, by (queue, priority), measured every 2 s (only while a hook wants it)."""

    def before_enqueue(self, event: EnqueuedEvent) -> Awaitable[None] | None:
        """`App.enqueue` / `enqueue_batch` validated a job and is about to send its (immutable) `enqueued` event."""


def hook_name(hook: Hook) -> str:
    return type(hook).name or type(hook).__name__


def _check(hook: Any) -> Hook:
    """`hook` if it is a usable `Hook`; `InvalidHook` naming the fix otherwise."""
    if isinstance(hook, type) and issubclass(hook, Hook):
        raise InvalidHook(f"got the class {hook.__name__}; pass an instance: {hook.__name__}()")
    if not isinstance(hook, Hook):
        raise InvalidHook(f"a hook subclasses eventjobs.Hook and overrides the points it needs "
                          f"({', '.join(HOOK_POINTS)}); got {hook!r:.200}")
    for attribute in dir(type(hook)):
        if attribute.startswith(_PREFIXES) and attribute not in HOOK_POINTS and callable(getattr(hook, attribute)):
            close = difflib.get_close_matches(attribute, HOOK_POINTS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InvalidHook(f"hook {hook_name(hook)} defines {attribute}, which is not a hook point{hint}; "
                              f"the points are {', '.join(HOOK_POINTS)}")
    return hook


class Hooks:
    """An ordered chain of hooks, called at each point with every failure isolated.

    Only the methods a hook overrides are called, so a point no hook uses costs one empty loop.
    """

    def __init__(self, hooks: Iterable[Hook] = (), *, metrics: Metrics | None = None) -> None:
        self.hooks: list[Hook] = []
        self.failures: Counter[tuple[str, str]] = Counter()  # (hook name, point) -> failures
        self._metrics = metrics
        self._chains: dict[str, tuple[tuple[str, Callable[..., Any]], ...]] = dict.fromkeys(HOOK_POINTS, ())
        if isinstance(hooks, (Hook, type)):
            raise InvalidHook(f"hooks= takes a list of hooks; got {hooks!r:.200} (write hooks=[...])")
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook) -> None:
        """Append `hook` (its "after" methods then run first); `InvalidHook` if it is not one."""
        self.hooks.append(_check(hook))
        for point in HOOK_POINTS:
            chain = [(hook_name(h), getattr(h, point)) for h in self.hooks
                     if getattr(type(h), point) is not getattr(Hook, point)]
            self._chains[point] = tuple(reversed(chain) if point in REVERSED_POINTS else chain)
            if self._metrics is not None:  # each (hook, point) in use is exported from 0 on
                for name, _ in chain:
                    self._metrics.hook_failures(name, point)

    def wants(self, point: str) -> bool:
        """Whether any hook overrides `point` (the worker measures queue depth only then)."""
        return bool(self._chains[point])

    async def _run(self, point: str, *args: Any) -> None:
        for name, method in self._chains[point]:
            try:
                result = method(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as error:  # noqa: BLE001 - a hook never changes what it observes
                self._failed(name, point, error)

    def _failed(self, name: str, point: str, error: Exception) -> None:
        key = (name, point)
        self.failures[key] += 1
        count = self.failures[key]
        if self._metrics is not None:
            self._metrics.hook_failures(name, point).inc()
        if count == 1:
            log.error("hook %s failed in %s (%r); ignored, the work goes on (further failures of it there are "
                      "counted, and logged at 10, 100, 1,000 ...)", name, point, error, exc_info=error)
        elif power_of_ten(count):
            log.error("hook %s has failed %d times in %s (latest: %r); ignored", name, count, point, error)

    async def on_worker_start(self, worker: WorkerInfo) -> None:
        await self._run("on_worker_start", worker)

    async def on_worker_stop(self, worker: WorkerInfo) -> None:
        await self._run("on_worker_stop", worker)

    async def before_attempt(self, attempt: AttemptInfo) -> None:
        await self._run("before_attempt", attempt)

    async def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> None:
        await self._run("after_attempt", attempt, outcome)

    async def on_quarantined(self, record: Quarantined) -> None:
        await self._run("on_quarantined", record)

    async def on_queue_depth(self, depth: Mapping[tuple[str, str], int]) -> None:
        await self._run("on_queue_depth", depth)

    async def before_enqueue(self, event: EnqueuedEvent) -> None:
        await self._run("before_enqueue", event)
