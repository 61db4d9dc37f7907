"""The dead-letter queue: `eventjobs dlq list | retry | retry-all | discard | discard-all` act on the dead-letter topic;
`eventjobs dead-letters` shows ClickHouse's view of it, with reasons and last errors."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer
from rich.table import Table

from eventjobs.app import App
from eventjobs.cli.options import (
    JsonOption, NamespaceOption, OptionalAppOption, YesOption, app_or_namespace, run_with_app,
)
from eventjobs.cli.output import (
    format_time,
    out,
    preview_bulk,
    rerun_with_yes,
    show_read_side,
    usage_error,
)
from eventjobs.readside import queries as query

dlq_app = typer.Typer(help="The dead-letter queue: list, retry, discard.", no_args_is_help=True)


@dlq_app.command("list")
def dlq_list(app: OptionalAppOption = None, namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """What is in the dead-letter queue now (from the dead-letter topic)."""
    entries = run_with_app(lambda a: a.dead_letters(), app_or_namespace(app, namespace))
    if as_json:
        out.print_json(json.dumps([json.loads(e.model_dump_json()) for e in entries]))
        return
    table = Table("job id", "name", "queue", "attempts", "reason", "last error", "dead-lettered at")
    for e in entries:
        table.add_row(e.job_id, e.name, e.queue, str(e.attempts), e.reason,
                      f"{e.error_type}: {e.message}"[:120], e.dead_lettered_at.isoformat(timespec="seconds"))
    out.print(table)
    out.print(f"{len(entries)} job(s) in the dead-letter queue")


@dlq_app.command("retry")
def dlq_retry(job_id: str, app: OptionalAppOption = None, namespace: NamespaceOption = None) -> None:
    """Run a dead-lettered job again with a fresh attempt budget."""
    entry = run_with_app(lambda a: a.retry_dead_letter(job_id), app_or_namespace(app, namespace))
    out.print(f"retrying {entry.job_id} ({entry.name})")


TypeOption = Annotated[str | None, typer.Option("--type", help="Jobs of this job name.")]
AllOption = Annotated[bool, typer.Option("--all", help="Every job in the dead-letter queue, whatever its name.")]


def _bulk(action: str, job_type: str | None, every: bool, yes: bool, app: str | None, namespace: str | None,
          act: Callable[[App, str | None], Awaitable[list[str]]]) -> None:
    """A dead-letter bulk action: a preview of the jobs it would touch, or with --yes the action."""
    if (job_type is None) == (not every):
        raise usage_error(f"say which dead-lettered jobs to {action}: --type NAME, or --all for every one"
                          if job_type is None else "give --type NAME or --all, not both")
    target = app_or_namespace(app, namespace)

    async def run(a: App) -> list[str]:
        if yes:
            return await act(a, job_type)
        return [e.job_id for e in await a.dead_letters(job_type)]

    ids = run_with_app(run, target)
    if yes:
        out.print(f"{'retrying' if action == 'retry' else 'discarded'} {len(ids)} job(s)")
    else:
        preview_bulk(action, ids, rerun_with_yes())


@dlq_app.command("retry-all")
def dlq_retry_all(
    job_type: TypeOption = None,
    every: AllOption = False,
    yes: YesOption = False,
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Retry every dead-lettered job of one name (--type) or all of them (--all); preview without --yes."""
    _bulk("retry", job_type, every, yes, app, namespace, lambda a, name: a.retry_all_dead_letters(name))


@dlq_app.command("discard-all")
def dlq_discard_all(
    job_type: TypeOption = None,
    every: AllOption = False,
    yes: YesOption = False,
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Discard every dead-lettered job of one name (--type) or all of them (--all); preview without --yes."""
    _bulk("discard", job_type, every, yes, app, namespace, lambda a, name: a.discard_all_dead_letters(name))


@dlq_app.command("discard")
def dlq_discard(job_id: str, app: OptionalAppOption = None, namespace: NamespaceOption = None) -> None:
    """Drop a dead-lettered job for good."""
    entry = run_with_app(lambda a: a.discard_dead_letter(job_id), app_or_namespace(app, namespace))
    out.print(f"discarded {entry.job_id} ({entry.name})")


def dead_letters(
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    name: Annotated[str | None, typer.Option(help="Only this job name.")] = None,
    limit: Annotated[int, typer.Option(help="Most entries to show.")] = 100,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """The dead-letter queue as projected in ClickHouse: reason and last error per job."""

    def render(entries: list[query.DeadLetter]) -> None:
        table = Table("job id", "queue", "name", "attempts", "dead-lettered (UTC)", "reason", "last error")
        for e in entries:
            error = f"{e.error_type}: {e.error_message}" if e.error_type else ""
            table.add_row(e.job_id, e.queue, e.name, str(e.attempts), format_time(e.dead_lettered_at), e.reason, error)
        out.print(table)

    show_read_side(namespace, lambda backend: query.dead_letters(backend, queue=queue, name=name, limit=limit),
                   as_json, "dead_letters", render)
