"""Registered job types: the only thing a job name in a message can ever select.

A message names a job; the worker looks the name up here and runs the function registered under
it. Nothing from a message is imported or unpickled, so a forged name can at most select another
registered handler or fail as unknown.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eventjobs.core.options import JobOptions

Handler = Callable[..., Any]


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
