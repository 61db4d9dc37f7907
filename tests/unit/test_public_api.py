"""`eventjobs` exports what users receive and catch, and `App` shows no plumbing."""

from __future__ import annotations

import inspect
import typing

import eventjobs
import eventjobs.app
from eventjobs import App

PLUMBING = ("append", "append_schedule_records", "build_enqueue", "build_schedule", "check_dependencies", "run_sync")


def _classes_in(hint: object) -> set[type]:
    """The classes a type hint names, through list[...], X | None, tuple[...] ..."""
    if isinstance(hint, type):
        return {hint}
    return {cls for arg in typing.get_args(hint) for cls in _classes_in(arg)}


def test_every_exported_name_is_there() -> None:
    missing = [name for name in eventjobs.__all__ if not hasattr(eventjobs, name)]
    assert not missing and len(set(eventjobs.__all__)) == len(eventjobs.__all__)


def test_every_error_of_the_app_module_is_exported() -> None:
    errors = {name for name, value in vars(eventjobs.app).items()
              if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
              and value.__module__.startswith("eventjobs")}
    assert errors >= {"ScheduleNotFound", "UnknownQueue", "InvalidSchedule", "PayloadTooLarge"}
    assert errors - set(eventjobs.__all__) == set()


def test_what_the_apps_public_calls_return_is_exported() -> None:
    returned: dict[str, str] = {}
    for name, member in inspect.getmembers(App, inspect.isfunction):
        if name.startswith("_"):
            continue
        for cls in _classes_in(typing.get_type_hints(member).get("return")):
            if cls.__module__.startswith("eventjobs"):
                returned[cls.__name__] = name
    assert {"JobState", "DeadLetterRecord", "ScheduleStatus", "WorkerStatus", "QueueStatus", "Batch"} <= set(returned)
    assert {cls: call for cls, call in returned.items() if cls not in eventjobs.__all__} == {}


def test_the_app_shows_no_plumbing() -> None:
    assert [name for name in PLUMBING if hasattr(App, name)] == []
