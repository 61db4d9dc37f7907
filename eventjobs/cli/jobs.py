"""Jobs: `eventjobs enqueue | cancel` write to the log; `jobs list | show`, `history` and `stats` read ClickHouse."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from eventjobs.cli.options import (
    AppOption,
    AsOfOption,
    JsonOption,
    NamespaceOption,
    OptionalAppOption,
    SinceOption,
    YesOption,
    app_or_namespace,
    load_app,
    parse_as_of_option,
    parse_seconds,
    parse_since,
    run_with_app,
    settings_of,
)
from eventjobs.cli.output import (
    err,
    format_seconds,
    format_time,
    freshness,
    out,
    preview_bulk,
    print_json,
    rerun_with_yes,
    show_read_side,
    usage_error,
)
from eventjobs.app import App
from eventjobs.clickhouse import Backend, open_backend
from eventjobs.readside import as_of as history_at
from eventjobs.readside import queries as query

jobs_app = typer.Typer(help="Jobs as the read side (ClickHouse) sees them; cancel them in bulk.",
                       no_args_is_help=True)


def enqueue(
    name: Annotated[str, typer.Argument(help="Registered job name.")],
    app: AppOption,
    args: Annotated[str, typer.Option("--args", help="Job arguments as a JSON object.")] = "{}",
    delay: Annotated[str | None, typer.Option(help="Run after this long, e.g. 10s.")] = None,
    run_at: Annotated[datetime | None, typer.Option("--run-at", help="Run at this ISO time (with timezone).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Enqueue at most once per key.")] = None,
    priority: Annotated[str | None, typer.Option(help="critical, high, normal or low.")] = None,
    queue: Annotated[str | None, typer.Option(help="Override the job's queue.")] = None,
    unique_for: Annotated[str | None, typer.Option(
        "--unique-for", help="One job per idempotency key per window of this length, e.g. 10m (docs/flow-control.md).")] = None,
    unique_states: Annotated[str | None, typer.Option(
        "--unique-states", help="With --unique-for: the statuses (comma-separated) in which the window's job refuses "
        "another; an enqueue after it ended in one left out runs it again.")] = None,
    debounce: Annotated[str | None, typer.Option(
        help="One job per idempotency key per window of this length, run this long after its last enqueue with "
             "the last args, e.g. 30s.")] = None,
    depends_on: Annotated[str | None, typer.Option(
        "--depends-on", help="Comma-separated job ids that must end first (the job waits until then).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Validate and enqueue one job; prints its id once the broker acknowledged it."""
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
                                 param_hint="--args") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter(f"must be a JSON object like {{\"a\": 1}}, got {type(parsed).__name__}",
                                 param_hint="--args")
    options: dict[str, Any] = {}
    if delay is not None:
        options["delay"] = parse_seconds(delay, "--delay")
    if run_at is not None:
        options["run_at"] = run_at
    if idempotency_key is not None:
        options["idempotency_key"] = idempotency_key
    if priority is not None:
        options["priority"] = priority
    if queue is not None:
        options["queue"] = queue
    if unique_for is not None:
        options["unique_for"] = unique_for
    if unique_states is not None:
        options["unique_states"] = [state.strip() for state in unique_states.split(",") if state.strip()]
    if debounce is not None:
        options["debounce"] = debounce
    if depends_on:
        options["depends_on"] = [job_id.strip() for job_id in depends_on.split(",") if job_id.strip()]
    target = load_app(app)
    event = target._build_enqueue(name, parsed, **options)  # validates before anything is sent

    async def send(a: App) -> None:
        if event.depends_on:  # each must exist (UnknownDependency: exit code 1, nothing sent)
            await a._check_dependencies(event.depends_on)
        await a.hooks.before_enqueue(event)  # the app's hooks see it, as with App.enqueue
        await a.writer.append([event])

    run_with_app(send, target)
    if as_json:
        out.print_json(json.dumps({"job_id": event.job_id, "name": name, "queue": event.queue,
                                   "run_at": event.run_at.isoformat() if event.run_at else None}))
    else:
        out.print(event.job_id)


def cancel(
    job_id: str,
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the event).")] = "cancelled from the CLI",
) -> None:
    """Request cancellation: pending, scheduled and retrying jobs stop at once, a running one at its next heartbeat."""
    run_with_app(lambda a: a.cancel(job_id, reason), app_or_namespace(app, namespace))
    out.print(f"cancel requested for {job_id}")


@jobs_app.command("list")
def jobs_list(
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    state: Annotated[str | None, typer.Option(help=f"Only this state: {', '.join(query.STATUSES)}.")] = None,
    name: Annotated[str | None, typer.Option(help="Only this job name.")] = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(help="Most jobs to show.")] = 50,
    as_of: AsOfOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first (with --as-of: the jobs that existed then, in the state they had)."""
    started_after = parse_since(since)
    moment = parse_as_of_option(as_of)

    def render(jobs: list[query.JobSummary]) -> None:
        table = Table("job id", "queue", "name", "state", "attempts", "enqueued (UTC)", "updated (UTC)")
        for job in jobs:
            table.add_row(job.job_id, job.queue, job.name, job.status, str(job.attempts_started),
                          format_time(job.enqueued_at), format_time(job.updated_at))
        out.print(table)

    def ask(backend: Backend) -> list[query.JobSummary]:
        if moment is not None:
            return history_at.list_jobs_as_of(backend, moment, queue=queue, status=state, name=name,
                                              since=started_after, limit=limit)
        return query.list_jobs(backend, queue=queue, status=state, name=name, since=started_after, limit=limit)

    show_read_side(namespace, ask, as_json, "jobs", render, as_of=moment)


@jobs_app.command("show")
def jobs_show(job_id: str, as_of: AsOfOption = None, namespace: NamespaceOption = None,
              as_json: JsonOption = False) -> None:
    """One job: state, attempts, and its result or last error with the traceback (with --as-of: as it stood then)."""
    moment = parse_as_of_option(as_of)

    def ask(backend: Backend) -> query.JobDetail:
        if moment is not None:
            return history_at.show_job_as_of(backend, job_id, moment)
        return query.show_job(backend, job_id)

    show_read_side(namespace, ask, as_json, "job", _print_job, as_of=moment)


def _print_links(depends_on: list[str], waiting_for: list[str], dependents: list[str], parent: str,
                 children: list[str]) -> None:
    """A job's ties to other jobs, one line each (nothing for a job that has none)."""
    for label, ids in (("depends on", depends_on), ("waiting for", waiting_for), ("waited on by", dependents)):
        if ids:
            out.print(f"{label:12} {', '.join(ids)}", markup=False)
    if parent:
        out.print(f"{'parent':12} {parent}", markup=False)
    if children:
        more = f" (first {query.MAX_CHILDREN_LISTED:,})" if len(children) >= query.MAX_CHILDREN_LISTED else ""
        out.print(f"{'children':12} {len(children)}{more}: {', '.join(children)}", markup=False)


def _print_job(job: query.JobDetail) -> None:
    out.print(f"[bold]{job.job_id}[/] {job.name} on queue {job.queue}: [bold]{job.status}[/]")
    out.print(f"attempts started {job.attempts_started}, current attempt {job.attempt}, budget {job.max_attempts}")
    for label, value in (("enqueued", job.enqueued_at), ("run at", job.run_at), ("started", job.started_at),
                         ("finished", job.finished_at), ("next due", job.next_due_at)):
        if value is not None:
            out.print(f"{label:9} {format_time(value)} UTC")
    out.print(f"args      {json.dumps(job.args)}", markup=False)
    if job.reason:
        out.print(f"reason    {job.reason}", markup=False)
    _print_links(job.depends_on, job.waiting_for, job.dependents, job.parent_job_id, job.children)
    wait = job.slot_wait
    if wait is not None and job.status == "scheduled":
        if wait.starts_at is not None:
            out.print(f"held back by the rate of limit {wait.limit!r} key {wait.key!r} ({wait.rate}): starts at "
                      f"{format_time(wait.starts_at)} UTC", markup=False)
    elif wait is not None:
        place = f"position {wait.position} of {wait.waiting}" if wait.position is not None else "asking"
        slots = f"{wait.in_use} of {wait.max} slots in use" if wait.max is not None else f"rate {wait.rate}"
        out.print(f"waiting for a slot of limit {wait.limit!r} key {wait.key!r} ({place}; {slots})", markup=False)
    if job.snoozes:
        out.print(f"snoozed   {job.snoozes} time(s)")
    if job.result is not None:
        out.print(f"result    {json.dumps(job.result)}", markup=False)
    if job.error_type:
        out.print(f"last error {job.error_type}: {job.error_message}", markup=False, style="red")
        if job.error_traceback:
            out.print(job.error_traceback, markup=False, highlight=False)


def history(job_id: str, namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Every event of a job, in log order, with the time between them."""
    settings = settings_of(namespace)
    with closing(open_backend(settings)) as backend:
        entries = query.job_history(backend, job_id)
        links = query.job_links(backend, job_id)
        fresh = freshness(settings, backend)
    if as_json:
        print_json({"job_id": job_id, "events": entries, "links": links, "freshness": fresh.as_json()})
        return
    if links is not None:
        _print_links(links.depends_on, links.waiting_for, links.dependents, links.parent_job_id, links.children)
    table = Table("time (UTC)", "+since prev", "event", "attempt", "actor", "outcome", "state after")
    for e in entries:
        outcome = e.outcome if not e.reject_reason else f"{e.outcome}: {e.reject_reason}"
        table.add_row(format_time(e.occurred_at), format_seconds(e.since_previous_s), e.type,
                      "" if e.attempt < 0 else str(e.attempt), e.actor, outcome, e.status_after)
    out.print(table)
    err.print(fresh.describe(), style="dim")


def stats(
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    since: SinceOption = None,
    by: Annotated[str, typer.Option(help="Group by job name or queue.")] = "name",
    as_of: AsOfOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Throughput, failure rate, p50/p95/p99 run duration and wait, per job name or queue.

    With --as-of: the same up to that moment, and how many jobs were in each state then."""
    started_after = parse_since(since)
    moment = parse_as_of_option(as_of)

    def render(rows: list[query.StatsRow]) -> None:
        table = Table(by, "enqueued", "completed", "dead-lettered", "retried", "jobs/min", "attempt failure rate",
                      "duration p50/p95/p99", "wait p50/p95/p99")
        for r in rows:
            rate = "" if r.failure_rate is None else f"{r.failure_rate:.1%}"
            table.add_row(r.group, str(r.enqueued), str(r.completed), str(r.dead_lettered), str(r.retried),
                          f"{r.throughput_per_min:.1f}", rate,
                          " / ".join(format_seconds(v) for v in (r.duration_p50_s, r.duration_p95_s, r.duration_p99_s)),
                          " / ".join(format_seconds(v) for v in (r.wait_p50_s, r.wait_p95_s, r.wait_p99_s)))
        out.print(table)

    if moment is None:
        # `by` is any text here: the queries refuse one they do not know, naming the allowed values
        show_read_side(namespace, lambda backend: query.job_stats(
            backend, queue=queue, since=started_after, by=by), as_json, "stats", render)  # type: ignore[arg-type]  # see above
        return
    settings = settings_of(namespace)
    with closing(open_backend(settings)) as backend:
        rows = history_at.stats_as_of(backend, moment, queue=queue, since=started_after, by=by)  # type: ignore[arg-type]  # idem
        counts = history_at.status_counts_as_of(backend, moment, queue=queue, by=by)  # type: ignore[arg-type]  # idem
        fresh = freshness(settings, backend)
    if as_json:
        print_json({"stats": rows, "states": counts, "as_of": moment.as_json(), "freshness": fresh.as_json()})
        return
    out.print(moment.describe(), style="bold", highlight=False)
    render(rows)
    table = Table(by, "jobs", *query.STATUSES)
    for count in counts:
        table.add_row(count.group, str(count.total), *(str(count.by_status[s]) for s in query.STATUSES))
    out.print(table)
    err.print(fresh.describe(), style="dim")




@jobs_app.command("cancel")
def jobs_cancel(
    name: Annotated[str | None, typer.Option(help="Cancel jobs of this job name.")] = None,
    queue: Annotated[str | None, typer.Option(help="Cancel jobs of this queue.")] = None,
    yes: YesOption = False,
    reason: Annotated[str, typer.Option(help="Why (kept in each job's cancel event).")] = "cancelled by operator",
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel every job not started yet (pending, scheduled, retrying) of a job name and/or queue.

    Without --yes: prints how many jobs would be cancelled and a few ids, and changes nothing."""
    if name is None and queue is None:
        raise usage_error("say which jobs to cancel: --name NAME and/or --queue QUEUE (both: jobs matching both)")
    target = app_or_namespace(app, namespace)

    async def run(a: App) -> tuple[list[str], int]:
        ids = [state.job_id for state in await a.find_jobs(name=name, queue=queue)]
        return ids, (await a.cancel_jobs(ids, reason) if yes else 0)

    ids, cancelled = run_with_app(run, target)
    if as_json:
        out.print_json(json.dumps({"matched": len(ids), "cancelled": cancelled, "job_ids": ids, "confirmed": yes}))
    elif yes:
        out.print(f"cancel requested for {cancelled} job(s)")
    else:
        preview_bulk("cancel", ids, rerun_with_yes())
