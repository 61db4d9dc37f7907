"""`eventjobs replay`: rebuild the ClickHouse projections from the log, or check (and correct) the
processor's job-state table against it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from eventjobs.cli.options import JsonOption, NamespaceOption, parse_since, settings_of
from eventjobs.cli.output import err, kafka_failure_in_one_line, out, print_json
from eventjobs.clickhouse import open_backend
from eventjobs.readside.projector import ProjectorOptions
from eventjobs.readside.replay import replay_projections
from eventjobs.runtime.state_check import (
    StateComparison,
    compare_state,
    ensure_processor_stopped,
    write_state_corrections,
)
from eventjobs.settings import Settings


def replay(
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Replay the whole log (the default).")] = False,
    since: Annotated[str | None, typer.Option(help="Projections only: re-project from the first event at or after TIME (ISO-8601 or 15m/2h/1d ago); earlier rows are kept.")] = None,
    projections: Annotated[bool, typer.Option("--projections", help="Rebuild the ClickHouse projections into fresh tables and swap them in.")] = False,
    state: Annotated[bool, typer.Option("--state", help="Fold the log and compare with the processor's job-state changelog.")] = False,
    write: Annotated[bool, typer.Option("--write", help="With --state: write corrections to the changelog (refused while a processor runs).")] = False,
    keep_old: Annotated[bool, typer.Option("--keep-old", help="With --projections: keep the replaced tables in the replay database.")] = False,
    batch_size: Annotated[int, typer.Option(help="Most events per projector batch.")] = 20_000,
    show: Annotated[int, typer.Option(help="With --state: most differences to print.")] = 20,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rebuild what is derived from the event log: the ClickHouse projections or the processor's job states."""
    if projections == state:
        raise typer.BadParameter("choose one of --projections or --state", param_hint="--projections / --state")
    if from_beginning and since is not None:
        raise typer.BadParameter("--from-beginning and --since exclude each other", param_hint="--since")
    if state and (since is not None or keep_old):
        raise typer.BadParameter("--since and --keep-old apply to --projections only", param_hint="--state")
    if projections and write:
        raise typer.BadParameter("--write applies to --state only", param_hint="--write")
    settings = settings_of(namespace)
    if projections:
        _replay_projections(settings, parse_since(since), keep_old, batch_size, as_json)
    else:
        _check_state(settings, write, show, as_json)


def _replay_projections(settings: Settings, since: datetime | None, keep_old: bool, batch_size: int,
                        as_json: bool) -> None:
    options = ProjectorOptions(batch_max_events=batch_size, batch_max_wait_s=0.2)
    with (
        kafka_failure_in_one_line(),
        closing(open_backend(settings, writes=True)) as backend,
        _progress_bar("replaying projections", not as_json) as update,
    ):
        report = asyncio.run(replay_projections(settings, backend, since=since, options=options, progress=update,
                                                keep_old=keep_old))
    if as_json:
        print_json(report)
        return
    out.print(f"[green]replayed[/] {report.events:,} events into fresh tables in {report.elapsed_s:.1f} s "
              f"({report.events_per_s:,.0f} events/s) and swapped them into {report.database}: "
              f"{', '.join(report.tables)}")
    if report.paused_live_projector:
        out.print("the live projector paused for the swap and resumed on the new tables")
    if report.kept_old_in:
        out.print(f"the replaced tables are kept in database {report.kept_old_in}")


def _check_state(settings: Settings, write: bool, show: int, as_json: bool) -> None:
    """Compare (and with `write` correct) the job-state changelog; exit code 2 when differences remain."""

    async def check() -> tuple[StateComparison, int]:
        if write:
            await ensure_processor_stopped(settings)  # refuse before the long fold
        with _progress_bar("folding the event log", not as_json) as update:
            comparison = await compare_state(settings, progress=update)
        written = await write_state_corrections(settings, comparison) if write and comparison.differences else 0
        return comparison, written

    with kafka_failure_in_one_line():
        comparison, written = asyncio.run(check())
    if as_json:
        print_json({
            "identical": comparison.identical, "jobs_folded": comparison.jobs_folded,
            "jobs_in_changelog": comparison.jobs_in_changelog, "events": comparison.events,
            "fold_until": comparison.fold_until, "bounded_by_processor_offsets": comparison.bounded_by_group,
            "undecodable_changelog_records": comparison.undecodable_changelog_records, "corrections_written": written,
            "differences": [{"job_id": d.job_id, "partition": d.partition, "kind": d.kind, "fields": d.fields}
                            for d in comparison.differences],
        })
    else:
        _print_comparison(comparison, written, show)
    if comparison.differences and not written:
        raise typer.Exit(2)


def _print_comparison(comparison: StateComparison, written: int, show: int) -> None:
    bound = "the processor's committed offsets" if comparison.bounded_by_group else "the end of the log"
    out.print(f"folded {comparison.events:,} events (up to {bound}) into {comparison.jobs_folded:,} jobs in "
              f"{comparison.elapsed_s:.1f} s; the changelog holds {comparison.jobs_in_changelog:,} jobs")
    if comparison.identical:
        out.print("[green]the changelog equals the fold of the log[/]")
        return
    table = Table("job id", "partition", "difference", "fields")
    for d in comparison.differences[:show]:
        what = {"missing": "not in the changelog", "extra": "only in the changelog"}.get(d.kind, "differs")
        table.add_row(d.job_id, str(d.partition), what, ", ".join(d.fields))
    out.print(table)
    more = len(comparison.differences) - show
    out.print(f"{len(comparison.differences):,} job(s) differ" + (f" ({more:,} not shown)" if more > 0 else ""))
    if written:
        out.print(f"[green]wrote {written:,} correction(s)[/] to the changelog")
    else:
        out.print("run again with --write (processor stopped) to write the corrections")


class _EventsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} events/s", style="cyan")


@contextmanager
def _progress_bar(description: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr (events done of total, events/s, ETA); a no-op when disabled."""
    if not enabled:
        yield lambda done, total: None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _EventsPerSecond(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=False)
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update
