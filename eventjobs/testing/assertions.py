"""Assertions whose failures say what to fix (``rivertest``'s habit): the job that was expected,
what was there instead, and how each near miss differs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eventjobs.core.events import EnqueuedEvent
from eventjobs.core.options import JobOptionsSpec
from eventjobs.core.state import JobState, JobStatus
from eventjobs.testing.tester import JobRun, JobTester

__all__ = ["assert_completed", "assert_enqueued", "assert_not_enqueued"]

_ANY: Any = object()
#: What an `enqueued` event says beyond its name and args, and the options it carries.
ENQUEUE_FIELDS = ("queue", "priority", "run_at", "idempotency_key", "parent_job_id", "depends_on", "on_dependency_failure")
OPTION_FIELDS = tuple(JobOptionsSpec.model_fields)
_SHOWN = 20  # near misses listed in a failure


def assert_enqueued(target: JobTester | JobRun, name: str, args: Mapping[str, Any] = _ANY, **expected: Any) -> EnqueuedEvent:
    """The first job ``name`` enqueued in ``target`` (a tester: any job; a `JobRun`: the children its
    handler enqueued) with exactly these ``args`` (if given) and these fields (``queue``,
    ``priority``, ``run_at``, ``depends_on`` ..., or options such as ``max_attempts``); an
    `AssertionError` listing how each enqueued job differs otherwise."""
    wanted = _check_fields(expected)
    enqueued = target.enqueued
    for event in enqueued:
        if event.name == name and not _differences(event, args, wanted):
            return event
    raise AssertionError(_missing(target, name, args, wanted, enqueued))


def assert_not_enqueued(target: JobTester | JobRun, name: str, args: Mapping[str, Any] = _ANY, **expected: Any) -> None:
    """No job ``name`` (with these ``args`` and fields, if given) was enqueued in ``target``."""
    wanted = _check_fields(expected)
    found = [event for event in target.enqueued if event.name == name and not _differences(event, args, wanted)]
    if found:
        listed = "\n".join(f"  - {_describe(event)}" for event in found[:_SHOWN])
        raise AssertionError(f"expected no enqueued job {_wanted(name, args, wanted)}, found {len(found)}:\n{listed}")


def assert_completed(run: JobRun, result: Mapping[str, Any] | None = _ANY) -> JobState:
    """The job completed (with exactly ``result``, if given); otherwise an `AssertionError` with its
    status, its last error and traceback, and its events."""
    state = run.state
    if state.status is not JobStatus.COMPLETED:
        lines = [(f"job {state.name} {state.job_id} is {state.status.value}, not completed "
                  f"(attempt {state.attempt}, {state.attempts_started} started, max_attempts {state.max_attempts})")]
        if state.reason:
            lines.append(f"reason: {state.reason}")
        if state.last_error is not None:
            error = state.last_error
            lines.append(f"last error: {error.error_type}: {error.message}")
            if error.traceback:
                lines.append(error.traceback.rstrip()[-3000:])
        lines.append(f"events: {', '.join(run.types)}")
        raise AssertionError("\n".join(lines))
    if result is not _ANY and state.result != result:
        diff = _dict_diff(state.result, result, "result")
        raise AssertionError(f"job {state.name} {state.job_id} completed with result {state.result!r}, "
                             f"expected {result!r}: {diff}")
    return state


def _check_fields(expected: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(expected) - set(ENQUEUE_FIELDS) - set(OPTION_FIELDS))
    if unknown:
        raise TypeError(f"cannot compare {', '.join(unknown)}: compare args=, or one of "
                        f"{', '.join(ENQUEUE_FIELDS)}, or an option: {', '.join(OPTION_FIELDS)}")
    return expected


def _differences(event: EnqueuedEvent, args: Mapping[str, Any], wanted: dict[str, Any]) -> list[str]:
    """How ``event`` differs from what is wanted (empty: it matches)."""
    found = []
    if args is not _ANY and event.args != dict(args):
        found.append(_dict_diff(event.args, args, "args"))
    for field, value in wanted.items():
        actual = getattr(event, field) if field in ENQUEUE_FIELDS else getattr(event.options, field)
        if _normal(actual) != _normal(value):
            found.append(f"{field} is {actual!r}, expected {value!r}")
    return found


def _normal(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return value


def _dict_diff(actual: Mapping[str, Any] | None, expected: Mapping[str, Any] | None, what: str) -> str:
    if actual is None or expected is None:
        return f"{what} is {actual!r}, expected {expected!r}"
    parts = []
    for key in expected:
        if key not in actual:
            parts.append(f"{key!r} missing")
        elif actual[key] != expected[key]:
            parts.append(f"{key!r} is {actual[key]!r}, expected {expected[key]!r}")
    parts += [f"{key!r}: {actual[key]!r} not expected" for key in actual if key not in expected]
    return f"{what}: " + "; ".join(parts)


def _wanted(name: str, args: Mapping[str, Any], wanted: dict[str, Any]) -> str:
    parts = [repr(name)] + ([f"args={dict(args)!r}"] if args is not _ANY else [])
    return " ".join(parts + [f"{field}={value!r}" for field, value in wanted.items()])


def _describe(event: EnqueuedEvent) -> str:
    return f"{event.name} {event.job_id} args={event.args!r}"


def _missing(target: JobTester | JobRun, name: str, args: Mapping[str, Any], wanted: dict[str, Any],
             enqueued: list[EnqueuedEvent]) -> str:
    where = f"by job {target.job_id}'s handler" if isinstance(target, JobRun) else "in this tester"
    head = f"expected an enqueued job {_wanted(name, args, wanted)} {where}"
    if not enqueued:
        return f"{head}, but no job was enqueued {where}"
    lines = []
    for event in enqueued[:_SHOWN]:
        why = "another name" if event.name != name else "; ".join(_differences(event, args, wanted))
        lines.append(f"  - {_describe(event)}: {why}")
    more = f"\n  ... and {len(enqueued) - _SHOWN} more" if len(enqueued) > _SHOWN else ""
    return f"{head}; none of the {len(enqueued)} enqueued matches:\n" + "\n".join(lines) + more
