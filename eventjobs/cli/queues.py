"""`eventjobs queues list | pause | resume`: which queues workers take jobs from (`<ns>.queue-control`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from eventjobs.app import App
from eventjobs.cli.options import JsonOption, NamespaceOption, OptionalAppOption, app_or_namespace, run_with_app
from eventjobs.cli.output import out
from eventjobs.core.control import QueueStatus

queues_app = typer.Typer(help="Queues: list them, pause and resume them.", no_args_is_help=True)
QueueArgument = Annotated[str, typer.Argument(help="The queue name.", metavar="QUEUE", show_default=False)]


def _status_json(status: QueueStatus) -> dict[str, object]:
    return status.model_dump(mode="json")


@queues_app.command("list")
def queues_list(app: OptionalAppOption = None, namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Every queue (the app's job queues, queues with ready topics, queues paused before), paused or not."""
    target = app_or_namespace(app, namespace)
    statuses = run_with_app(lambda a: a.queues(), target)
    if as_json:
        out.print_json(json.dumps([_status_json(s) for s in statuses]))
        return
    table = Table("queue", "state", "reason", "changed (UTC)", "changed by")
    for s in statuses:
        table.add_row(s.queue, "[yellow]paused[/]" if s.paused else "running", s.reason or "",
                      s.changed_at.strftime("%Y-%m-%d %H:%M:%S") if s.changed_at else "", s.changed_by or "")
    out.print(table)
    out.print(f"{len(statuses)} queue(s), {sum(s.paused for s in statuses)} paused")


def _change(queue: str, paused: bool, reason: str | None, app: str | None, namespace: str | None, as_json: bool) -> None:
    target = app_or_namespace(app, namespace)

    async def change(a: App) -> QueueStatus:
        if paused:
            await a.pause_queue(queue, reason or "paused by operator")
        else:
            await a.resume_queue(queue, reason or "resumed by operator")
        return next(s for s in await a.queues() if s.queue == queue)

    status = run_with_app(change, target)
    if as_json:
        out.print_json(json.dumps(_status_json(status)))
    elif paused:
        out.print(f"paused queue {queue}: workers stop taking its jobs within about a second (running ones finish)")
    else:
        out.print(f"resumed queue {queue}: workers take its jobs again within about a second")


@queues_app.command("pause")
def queues_pause(
    queue: QueueArgument,
    reason: Annotated[str, typer.Option(help="Why (shown in `queues list`).")] = "paused by operator",
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop workers taking jobs of QUEUE (jobs wait in it); holds across worker restarts until resumed."""
    _change(queue, True, reason, app, namespace, as_json)


@queues_app.command("resume")
def queues_resume(
    queue: QueueArgument,
    reason: Annotated[str, typer.Option(help="Why (shown in `queues list`).")] = "resumed by operator",
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Let workers take jobs of QUEUE again."""
    _change(queue, False, reason, app, namespace, as_json)
