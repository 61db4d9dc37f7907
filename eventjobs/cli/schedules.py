"""`eventjobs schedules list | pause | resume | trigger | delete`: periodic schedules, read from and
written to the schedules topic (`<ns>.schedules`), so they answer without the read side."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.table import Table

from eventjobs.app import App
from eventjobs.cli.options import JsonOption, NamespaceOption, OptionalAppOption, app_or_namespace, run_with_app
from eventjobs.cli.output import format_time, out

T = TypeVar("T")

schedules_app = typer.Typer(help="Periodic schedules (every / cron): list, pause, resume, trigger, delete.",
                            no_args_is_help=True)


def _run(call: Callable[[App], Awaitable[T]], app: str | None, namespace: str | None) -> T:
    """Run one call on the app or namespace given (a schedule that does not exist is a user error:
    one line on stderr, exit code 1, from `cli.main`)."""
    return run_with_app(call, app_or_namespace(app, namespace))


def _print(as_json: bool, payload: dict[str, Any], text: str) -> None:
    if as_json:
        out.print_json(json.dumps(payload))
    else:
        out.print(text)


@schedules_app.command("list")
def schedules_list(app: OptionalAppOption = None, namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Every schedule with its rule, state, last and next tick (times in UTC); a schedule whose stored
    rule gives no tick is shown set aside, with the reason."""
    statuses = _run(lambda a: a.schedules(), app, namespace)
    if as_json:
        out.print_json(json.dumps([json.loads(s.model_dump_json()) for s in statuses]))
        return
    table = Table("schedule id", "job", "rule", "state", "catch-up", "last tick (UTC)", "next tick (UTC)", "last job")
    for s in statuses:
        state = "paused" if s.paused else "set aside" if s.set_aside else "active"
        table.add_row(s.schedule_id, s.job, s.rule, state, s.catch_up,
                      format_time(s.last_tick), format_time(s.next_tick), s.last_job_id or "")
    out.print(table)
    out.print(f"{len(statuses)} schedule(s)")
    for s in statuses:
        if s.set_aside:
            out.print(f"set aside (fires nothing until its definition changes): {s.set_aside}")


@schedules_app.command("pause")
def schedules_pause(schedule_id: str, app: OptionalAppOption = None, namespace: NamespaceOption = None,
                    as_json: JsonOption = False) -> None:
    """Stop firing a schedule; ticks while paused are never fired."""
    changed = _run(lambda a: a.pause_schedule(schedule_id), app, namespace)
    _print(as_json, {"schedule_id": schedule_id, "paused": True, "changed": changed},
           f"paused {schedule_id}" if changed else f"{schedule_id} was paused already")


@schedules_app.command("resume")
def schedules_resume(schedule_id: str, app: OptionalAppOption = None, namespace: NamespaceOption = None,
                     as_json: JsonOption = False) -> None:
    """Fire a paused schedule again, from its next tick on."""
    changed = _run(lambda a: a.resume_schedule(schedule_id), app, namespace)
    _print(as_json, {"schedule_id": schedule_id, "paused": False, "changed": changed},
           f"resumed {schedule_id}" if changed else f"{schedule_id} was not paused")


@schedules_app.command("trigger")
def schedules_trigger(schedule_id: str, app: OptionalAppOption = None, namespace: NamespaceOption = None,
                      as_json: JsonOption = False) -> None:
    """Enqueue the schedule's job now, once, outside its ticks."""
    job_id = _run(lambda a: a.trigger_schedule(schedule_id), app, namespace)
    _print(as_json, {"schedule_id": schedule_id, "job_id": job_id}, f"enqueued {job_id} for {schedule_id}")


@schedules_app.command("delete")
def schedules_delete(schedule_id: str, app: OptionalAppOption = None, namespace: NamespaceOption = None,
                     as_json: JsonOption = False) -> None:
    """Delete a schedule (a declared one is written again when a processor with --app starts)."""
    _run(lambda a: a.unschedule(schedule_id), app, namespace)
    _print(as_json, {"schedule_id": schedule_id, "deleted": True}, f"deleted {schedule_id}")
