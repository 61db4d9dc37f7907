"""Registered job types: the only thing a job name in a message can ever select.

A message names a job; the worker looks the name up here and runs the function registered under
it. Nothing from a message is imported or unpickled, so a forged name can at most select another
registered handler or fail as unknown.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from eventjobs.core.commands import enqueue as enqueued_event
from eventjobs.core.events import EnqueuedEvent
from eventjobs.core.options import InvalidJobOptions, JobOptions
from eventjobs.core.schedules import ScheduleDefinition, declared_schedule_id, define_schedule
from eventjobs.core.validation import worded

Handler = Callable[..., Any]


class InvalidJobArguments(ValueError):
    """The args of an enqueue are not a JSON object."""


class UnknownJob(LookupError):
    """A job name that no handler is registered for."""

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown job {name!r}; registered jobs: {listed}")
        self.name = name


@dataclass(frozen=True)
class JobDefinition:
    name: str
    handler: Handler
    options: JobOptions
    is_async: bool
    takes_context: bool
    schedule: Mapping[str, Any] | None = None  # `every`/`cron`, `timezone`, `catch_up` declared on `@app.job`


def define(name: str, handler: Handler, options: JobOptions, schedule: Mapping[str, Any] | None = None) -> JobDefinition:
    """Check the handler's shape once, at registration, so a wrong signature fails at import."""
    if not callable(handler):
        raise TypeError(f"job {name!r}: handler must be callable, got {type(handler).__name__}")
    try:
        parameters = [
            p for p in inspect.signature(handler).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        parameters = []
    if len(parameters) not in (1, 2):
        raise TypeError(
            f"job {name!r}: handler must take (args) or (args, ctx), "
            f"but {getattr(handler, '__qualname__', handler)!r} takes {len(parameters)} positional parameters"
        )
    return JobDefinition(
        name=name,
        handler=handler,
        options=options,
        is_async=inspect.iscoroutinefunction(handler)
        or inspect.iscoroutinefunction(getattr(handler, "__call__", None)),  # noqa: B004 - the method itself: is it async
        takes_context=len(parameters) == 2,
        schedule=schedule,
    )


def definition_of(jobs: Mapping[str, JobDefinition], name: str) -> JobDefinition:
    """The registered job `name`; `UnknownJob` (listing the registered ones) if there is none."""
    try:
        return jobs[name]
    except KeyError:
        raise UnknownJob(name, list(jobs)) from None


def build_enqueued(
    definition: JobDefinition, args: dict[str, Any] | None, options: Mapping[str, Any], *, now: datetime, actor: str,
    parent_job_id: str | None = None, depends_on: list[str] | None = None, ids: tuple[str, str] | None = None,
) -> EnqueuedEvent:
    """The validated `enqueued` event of a registered job, its options over the registered ones
    (nothing is sent); with `ids`, the (default job id, event id) of a batch member. Raises on any
    bad input."""
    name = definition.name
    if args is not None and not isinstance(args, dict):
        raise InvalidJobArguments(f"args of job {name!r} must be a dict (JSON object), got {type(args).__name__}")
    merged = definition.options.merged(**options) if options else definition.options
    default_job_id, event_id = ids if ids is not None else (None, None)
    try:
        return enqueued_event(
            name, args or {}, merged, now=now, actor=actor, parent_job_id=parent_job_id,
            depends_on=depends_on, default_job_id=default_job_id, event_id=event_id,
        )
    except InvalidJobOptions:
        raise
    except ValidationError as error:
        raise InvalidJobArguments(f"cannot enqueue job {name!r}: {worded(error)}") from None


def build_schedule(
    definition: JobDefinition, args: dict[str, Any] | None, *, every: Any = None, cron: str | None = None,
    timezone: str = "UTC", catch_up: str = "one", schedule_id: str | None = None, declared: bool = False,
    now: datetime, actor: str, **job_options: Any,
) -> ScheduleDefinition:
    """The validated definition of a schedule of a registered job (nothing is sent); its job is
    checked as an enqueue of it would be."""
    name = definition.name
    if args is not None and not isinstance(args, dict):
        raise InvalidJobArguments(f"args of job {name!r} must be a dict (JSON object), got {type(args).__name__}")
    options = definition.options.merged(**job_options) if job_options else definition.options
    if declared:
        schedule_id = declared_schedule_id(name)
    schedule = define_schedule(name, args, options, every=every, cron=cron, timezone=timezone, catch_up=catch_up,
                               schedule_id=schedule_id, declared=declared, now=now)
    build_enqueued(definition, schedule.args, job_options, now=now, actor=actor)  # the same checks as an enqueue
    return schedule
