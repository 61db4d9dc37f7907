"""CLI commands of the read side: projections, the projector, queries. Thin: parse, call, print."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
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

from eventjobs import query
from eventjobs.clickhouse import Backend, ClickHouseError, open_backend
from eventjobs.projection.migrations import apply_migrations, default_projections_dir, migration_status
from eventjobs.projection.projector import ProjectorError, ProjectorOptions, events_topic
from eventjobs.settings import Settings, load_settings

T = TypeVar("T")
out = Console()
err = Console(stderr=True)

NamespaceOption = Annotated[Optional[str], typer.Option(help="Namespace (app name); env EVENTJOBS_NAMESPACE.")]
AppOption = Annotated[Optional[str], typer.Option("--app", help="Your app as module:attribute (its namespace is used).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
SinceOption = Annotated[Optional[str], typer.Option(help="Only since TIME: ISO-8601 (UTC if no zone) or ago, e.g. 15m, 2h, 1d.")]
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_AGO_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

projections_app = typer.Typer(help="ClickHouse projections from projections/*.sql.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs as the read side (ClickHouse) sees them.", no_args_is_help=True)


def parse_since(text: str | None) -> datetime | None:
    """'15m' / '2h' / '1d' ago, or an ISO-8601 time (UTC when it has no zone)."""
    if text is None:
        return None
    match = _AGO.match(text)
    if match:
        return datetime.now(timezone.utc) - timedelta(**{_AGO_UNIT[match.group(2)]: float(match.group(1))})
    try:
        return query.utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither a time (2024-05-17T12:00:00Z) nor an age (15m, 2h, 1d)",
                                 param_hint="--since") from None


def _settings(namespace: str | None, app_spec: str | None = None) -> Settings:
    if app_spec:
        from eventjobs.cli_runtime import load_app

        return load_app(app_spec).settings
    return load_settings(namespace=namespace)


@contextmanager
def _backend(settings: Settings) -> Iterator[Backend]:
    backend = open_backend(settings)
    try:
        yield backend
    finally:
        backend.close()


def _run(action: Callable[[], T]) -> T:
    """Run a read-side action; ClickHouse and projector problems become one clear line and exit 1."""
    from aiokafka.errors import KafkaError

    try:
        return action()
    except (ClickHouseError, ProjectorError) as error:
        err.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(1) from None
    except KafkaError as error:  # replay reads the log: say which broker did not answer
        err.print(f"[red]error:[/] Kafka at {_bootstrap_hint()} failed: {error!r}; check KAFKA_BOOTSTRAP_SERVERS "
                  f"and that the broker runs", highlight=False)
        raise typer.Exit(1) from None


def _bootstrap_hint() -> str:
    try:
        return load_settings().kafka_bootstrap
    except Exception:
        return "the configured bootstrap servers"


def _end_offsets(settings: Settings) -> dict[int, int] | None:
    """The event log's end offsets, or None when Kafka does not answer within a few seconds."""
    from eventjobs.kafka import consumer, partitions_of

    async def fetch() -> dict[int, int]:
        client = consumer(settings, group_id=None, request_timeout_ms=5000)
        await client.start()
        try:
            partitions = await partitions_of(settings, events_topic(settings))
            return {tp.partition: offset for tp, offset in (await client.end_offsets(partitions)).items()}
        finally:
            await client.stop()

    try:
        return asyncio.run(asyncio.wait_for(fetch(), 8))
    except Exception:  # freshness is informative: never fail a query because Kafka is away
        return None


def _freshness(settings: Settings, backend: Backend) -> query.Freshness:
    return query.freshness(backend, _end_offsets(settings))


def _print_json(payload: Any) -> None:
    out.print_json(query.to_json(payload).decode())


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}s"


# ---- projections --------------------------------------------------------------------------


@projections_app.command("apply")
def projections_apply(namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Apply the projection files not applied yet, in order (applying twice changes nothing)."""
    settings = _settings(namespace)

    def act() -> list[Any]:
        with _backend(settings) as backend:
            return apply_migrations(backend, default_projections_dir())

    reports = _run(act)
    if as_json:
        _print_json(reports)
        return
    for report in reports:
        colour = "green" if report.action == "applied" else "dim"
        out.print(f"[{colour}]{report.action:8}[/] {report.version:03d}_{report.name}.sql ({report.statements} statements)")
    applied = sum(r.action == "applied" for r in reports)
    out.print(f"{applied} applied, {len(reports) - applied} already applied")


@projections_app.command("status")
def projections_status(namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Which projection files are applied, pending, or changed since they were applied."""
    settings = _settings(namespace)

    def act() -> list[Any]:
        with _backend(settings) as backend:
            return migration_status(backend, default_projections_dir())

    statuses = _run(act)
    if as_json:
        _print_json(statuses)
        return
    table = Table("version", "name", "applied at (UTC)", "note")
    for s in statuses:
        note = "[red]changed since applied[/]" if s.changed else ("" if s.applied_at else "[yellow]pending[/]")
        table.add_row(f"{s.version:03d}", s.name, _time(s.applied_at), note)
    out.print(table)


# ---- the projector ------------------------------------------------------------------------


def project(
    app_spec: AppOption = None,
    namespace: NamespaceOption = None,
    batch_size: Annotated[int, typer.Option(help="Most events per batch.")] = 20_000,
    batch_wait_s: Annotated[float, typer.Option("--batch-wait", help="Longest wait in seconds to fill a batch.")] = 0.5,
    read_api_port: Annotated[int, typer.Option(help="Port of the read API on 127.0.0.1 (chdb only; 0: any free port).")] = 0,
) -> None:
    """Project the event log into ClickHouse until stopped (SIGTERM/SIGINT); serves the read API with chdb."""
    from eventjobs.cli_runtime import run_until_signalled
    from eventjobs.projection.service import run_projector

    settings = _settings(namespace, app_spec)
    options = ProjectorOptions(batch_max_events=batch_size, batch_max_wait_s=batch_wait_s)
    err.print(f"projecting {events_topic(settings)} into ClickHouse (Ctrl-C to stop)")
    _run(lambda: run_until_signalled(
        lambda stop: run_projector(settings, stop, options=options, read_api_port=read_api_port)))


# ---- queries ------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    queue: Annotated[Optional[str], typer.Option(help="Only this queue.")] = None,
    state: Annotated[Optional[str], typer.Option(help=f"Only this state: {', '.join(query.STATUSES)}.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Only this job name.")] = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(help="Most jobs to show.")] = 50,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first."""
    settings = _settings(namespace)

    def act() -> tuple[list[query.JobSummary], query.Freshness]:
        with _backend(settings) as backend:
            jobs = query.list_jobs(backend, queue=queue, status=state, name=name, since=parse_since(since), limit=limit)
            return jobs, _freshness(settings, backend)

    jobs, fresh = _run(act)
    if as_json:
        _print_json({"jobs": jobs, "freshness": fresh.as_json()})
        return
    table = Table("job id", "queue", "name", "state", "attempts", "enqueued (UTC)", "updated (UTC)")
    for job in jobs:
        table.add_row(job.job_id, job.queue, job.name, job.status, str(job.attempts_started), _time(job.enqueued_at),
                      _time(job.updated_at))
    out.print(table)
    err.print(fresh.describe(), style="dim")


@jobs_app.command("show")
def jobs_show(job_id: str, namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """One job: state, attempts, and its result or last error with the traceback."""
    settings = _settings(namespace)

    def act() -> tuple[query.JobDetail, query.Freshness]:
        with _backend(settings) as backend:
            return query.show_job(backend, job_id), _freshness(settings, backend)

    job, fresh = _run(act)
    if as_json:
        _print_json({"job": job, "freshness": fresh.as_json()})
        return
    out.print(f"[bold]{job.job_id}[/] {job.name} on queue {job.queue}: [bold]{job.status}[/]")
    out.print(f"attempts started {job.attempts_started}, current attempt {job.attempt}, budget {job.max_attempts}")
    for label, value in (("enqueued", job.enqueued_at), ("run at", job.run_at), ("started", job.started_at),
                         ("finished", job.finished_at), ("next due", job.next_due_at)):
        if value is not None:
            out.print(f"{label:9} {_time(value)} UTC")
    out.print(f"args      {json.dumps(job.args)}", markup=False)
    if job.reason:
        out.print(f"reason    {job.reason}", markup=False)
    if job.result is not None:
        out.print(f"result    {json.dumps(job.result)}", markup=False)
    if job.error_type:
        out.print(f"last error {job.error_type}: {job.error_message}", markup=False, style="red")
        if job.error_traceback:
            out.print(job.error_traceback, markup=False, highlight=False)
    err.print(fresh.describe(), style="dim")


def history(job_id: str, namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Every event of a job, in log order, with the time between them."""
    settings = _settings(namespace)

    def act() -> tuple[list[query.HistoryEntry], query.Freshness]:
        with _backend(settings) as backend:
            return query.job_history(backend, job_id), _freshness(settings, backend)

    entries, fresh = _run(act)
    if as_json:
        _print_json({"job_id": job_id, "events": entries, "freshness": fresh.as_json()})
        return
    table = Table("time (UTC)", "+since prev", "event", "attempt", "actor", "outcome", "state after")
    for e in entries:
        outcome = e.outcome if not e.reject_reason else f"{e.outcome}: {e.reject_reason}"
        table.add_row(_time(e.occurred_at), _seconds(e.since_previous_s), e.type,
                      "" if e.attempt < 0 else str(e.attempt), e.actor, outcome, e.status_after)
    out.print(table)
    err.print(fresh.describe(), style="dim")


def stats(
    queue: Annotated[Optional[str], typer.Option(help="Only this queue.")] = None,
    since: SinceOption = None,
    by: Annotated[str, typer.Option(help="Group by job name or queue.")] = "name",
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Throughput, failure rate, p50/p95/p99 run duration and wait, per job name or queue."""
    settings = _settings(namespace)

    def act() -> tuple[list[query.StatsRow], query.Freshness]:
        with _backend(settings) as backend:
            return query.job_stats(backend, queue=queue, since=parse_since(since), by=by), _freshness(settings, backend)  # type: ignore[arg-type]

    rows, fresh = _run(act)
    if as_json:
        _print_json({"stats": rows, "freshness": fresh.as_json()})
        return
    table = Table(by, "enqueued", "completed", "dead-lettered", "retried", "jobs/min", "attempt failure rate",
                  "duration p50/p95/p99", "wait p50/p95/p99")
    for r in rows:
        rate = "" if r.failure_rate is None else f"{r.failure_rate:.1%}"
        table.add_row(r.group, str(r.enqueued), str(r.completed), str(r.dead_lettered), str(r.retried),
                      f"{r.throughput_per_min:.1f}", rate,
                      " / ".join(_seconds(v) for v in (r.duration_p50_s, r.duration_p95_s, r.duration_p99_s)),
                      " / ".join(_seconds(v) for v in (r.wait_p50_s, r.wait_p95_s, r.wait_p99_s)))
    out.print(table)
    err.print(fresh.describe(), style="dim")


def dead_letters(
    queue: Annotated[Optional[str], typer.Option(help="Only this queue.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Only this job name.")] = None,
    limit: Annotated[int, typer.Option(help="Most entries to show.")] = 100,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """The dead-letter queue as projected in ClickHouse: reason and last error per job."""
    settings = _settings(namespace)

    def act() -> tuple[list[query.DeadLetter], query.Freshness]:
        with _backend(settings) as backend:
            return query.dead_letters(backend, queue=queue, name=name, limit=limit), _freshness(settings, backend)

    entries, fresh = _run(act)
    if as_json:
        _print_json({"dead_letters": entries, "freshness": fresh.as_json()})
        return
    table = Table("job id", "queue", "name", "attempts", "dead-lettered (UTC)", "reason", "last error")
    for e in entries:
        error = f"{e.error_type}: {e.error_message}" if e.error_type else ""
        table.add_row(e.job_id, e.queue, e.name, str(e.attempts), _time(e.dead_lettered_at), e.reason, error)
    out.print(table)
    err.print(fresh.describe(), style="dim")


# ---- replay -------------------------------------------------------------------------------


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


def replay(
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Replay the whole log (the default).")] = False,
    since: Annotated[Optional[str], typer.Option(help="Projections only: re-project from the first event at or after TIME (ISO-8601 or 15m/2h/1d ago); earlier rows are kept.")] = None,
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
    from eventjobs.projection import replay as replaying

    if projections == state:
        raise typer.BadParameter("choose one of --projections or --state", param_hint="--projections / --state")
    if from_beginning and since is not None:
        raise typer.BadParameter("--from-beginning and --since exclude each other", param_hint="--since")
    if state and (since is not None or keep_old):
        raise typer.BadParameter("--since and --keep-old apply to --projections only", param_hint="--state")
    if projections and write:
        raise typer.BadParameter("--write applies to --state only", param_hint="--write")
    settings = _settings(namespace)
    if projections:
        start = parse_since(since)

        def act_projections() -> replaying.ProjectionReplay:
            with _backend(settings) as backend, _progress_bar("replaying projections", not as_json) as update:
                options = ProjectorOptions(batch_max_events=batch_size, batch_max_wait_s=0.2)
                return asyncio.run(replaying.replay_projections(settings, backend, since=start, options=options,
                                                                progress=update, keep_old=keep_old))

        report = _run(act_projections)
        if as_json:
            _print_json(report)
            return
        out.print(f"[green]replayed[/] {report.events:,} events into fresh tables in {report.elapsed_s:.1f} s "
                  f"({report.events_per_s:,.0f} events/s) and swapped them into {report.database}: "
                  f"{', '.join(report.tables)}")
        if report.paused_live_projector:
            out.print("the live projector paused for the swap and resumed on the new tables")
        if report.kept_old_in:
            out.print(f"the replaced tables are kept in database {report.kept_old_in}")
        return

    def act_state() -> tuple[replaying.StateComparison, int]:
        async def go() -> tuple[replaying.StateComparison, int]:
            if write:
                await replaying.ensure_processor_stopped(settings)  # refuse before the long fold
            with _progress_bar("folding the event log", not as_json) as update:
                comparison = await replaying.compare_state(settings, progress=update)
            written = await replaying.write_state_corrections(settings, comparison) if write and \
                comparison.differences else 0
            return comparison, written
        return asyncio.run(go())

    comparison, written = _run(act_state)
    if as_json:
        _print_json({
            "identical": comparison.identical, "jobs_folded": comparison.jobs_folded,
            "jobs_in_changelog": comparison.jobs_in_changelog, "events": comparison.events,
            "fold_until": comparison.fold_until, "bounded_by_processor_offsets": comparison.bounded_by_group,
            "undecodable_changelog_records": comparison.undecodable_changelog_records, "corrections_written": written,
            "differences": [{"job_id": d.job_id, "partition": d.partition, "kind": d.kind, "fields": d.fields}
                            for d in comparison.differences],
        })
    else:
        bound = "the processor's committed offsets" if comparison.bounded_by_group else "the end of the log"
        out.print(f"folded {comparison.events:,} events (up to {bound}) into {comparison.jobs_folded:,} jobs in "
                  f"{comparison.elapsed_s:.1f} s; the changelog holds {comparison.jobs_in_changelog:,} jobs")
        if comparison.identical:
            out.print("[green]the changelog equals the fold of the log[/]")
        else:
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
    if comparison.differences and not written:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add the read-side commands to the `eventjobs` app."""
    app.add_typer(projections_app, name="projections")
    app.add_typer(jobs_app, name="jobs")
    app.command("project")(project)
    app.command("replay")(replay)
    app.command("history")(history)
    app.command("stats")(stats)
    existing = {group.name for group in app.registered_groups}
    if "dlq" in existing:
        # the runtime's `dlq` group (list from the dead-letter topic, retry, discard) stays; the
        # read side's view with reasons and last errors is `eventjobs dead-letters`
        app.command("dead-letters")(dead_letters)
    else:
        dlq_app = typer.Typer(help="The dead-letter queue.", no_args_is_help=True)
        dlq_app.command("list")(dead_letters)
        app.add_typer(dlq_app, name="dlq")
