"""The pages (GET only: nothing here changes anything): overview, jobs, a job, dead letters,
workers, queues (with the concurrency limits' keys), and the JSON the overview's charts refresh from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from eventjobs.clickhouse.backend import Backend
from eventjobs.readside import queries
from eventjobs.readside.as_of import AsOfError, list_jobs_as_of, show_job_as_of
from eventjobs.web.filters import PAGE_SIZE, WINDOWS, BadFilter, job_filter, job_id, moment, queue_name, window
from eventjobs.web.views import problem, render


def _now(request: Request) -> datetime:
    """Now, from the App's clock (the one its events are stamped with)."""
    now: datetime = request.app.state.app.clock.now()
    return now


def chart_series(points: list[queries.MinutePoint], since: datetime, until: datetime) -> dict[str, list[Any]]:
    """Per-minute columns for the charts, every minute of the window present (zero when nothing
    was counted; the failure rate is null there, drawn as a gap)."""
    by_minute = {int(p.minute.timestamp()): p for p in points}
    start = int(since.timestamp()) // 60 * 60
    x, finished, enqueued, failure = [], [], [], []
    for minute in range(start, int(until.timestamp()) // 60 * 60 + 60, 60):
        point = by_minute.get(minute)
        x.append(minute)
        finished.append(point.finished if point else 0)
        enqueued.append(point.enqueued if point else 0)
        rate = point.failure_rate if point else None
        failure.append(None if rate is None else round(rate * 100, 2))
    return {"x": x, "finished": finished, "enqueued": enqueued, "failure_rate_pct": failure}


def _series(backend: Backend, since: datetime, until: datetime) -> dict[str, list[Any]]:
    return chart_series(queries.minute_series(backend, since=since), since, until)


async def overview(request: Request) -> Response:
    try:
        key, span = window(request.query_params)
    except BadFilter as error:
        return problem(request, 400, str(error))
    until = _now(request)
    since = until - span

    def ask(backend: Backend) -> dict[str, Any]:
        by_queue, by_name = queries.job_stats_by_queue_and_name(backend, since=since)
        return {"depth": queries.queue_depth(backend),
                "stats": by_queue,
                "by_name": by_name,
                "dead_count": queries.dead_letter_count(backend),
                "series": _series(backend, since, until),
                "reported_lag": queries.reported_lag(backend)}

    data, fresh = await request.app.state.reads.page(ask)
    lag = queries.lag_report(data.pop("reported_lag"), fresh.end_offsets, until)
    return render(request, "overview.html", {**data, "lag": lag, "window": key, "windows": list(WINDOWS),
                                             "freshness": fresh})


async def series(request: Request) -> Response:
    try:
        _, span = window(request.query_params)
    except BadFilter as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    until = _now(request)
    return JSONResponse(await request.app.state.reads.ask(lambda backend: _series(backend, until - span, until)))


async def jobs(request: Request) -> Response:
    try:
        chosen = job_filter(request.query_params, _now(request))
    except BadFilter as error:
        return problem(request, 400, f"bad filter: {error}")

    def ask(backend: Backend) -> list[queries.JobSummary]:
        if chosen.as_of is not None:
            return list_jobs_as_of(backend, chosen.as_of, queue=chosen.queue, status=chosen.status, name=chosen.name,
                                   since=chosen.since, until=chosen.until, limit=PAGE_SIZE + 1, offset=chosen.offset)
        return queries.list_jobs(backend, queue=chosen.queue, status=chosen.status, name=chosen.name,
                                 since=chosen.since, until=chosen.until, args_contain=chosen.args,
                                 limit=PAGE_SIZE + 1, offset=chosen.offset)

    try:
        rows, fresh = await request.app.state.reads.page(ask)
    except AsOfError as error:  # a position the read side has not projected
        return problem(request, 400, f"bad filter: as_of: {error}")
    return render(request, "jobs.html", {
        "jobs": rows[:PAGE_SIZE], "has_next": len(rows) > PAGE_SIZE, "filter": chosen,
        "statuses": queries.STATUSES, "params": request.query_params, "freshness": fresh})


async def job(request: Request) -> Response:
    try:
        wanted = job_id(request.path_params["job_id"])
        as_of = moment(request.query_params, _now(request))
    except BadFilter as error:
        return problem(request, 400, str(error))

    def ask(backend: Backend) -> tuple[queries.JobDetail, list[queries.HistoryEntry]]:
        detail = queries.show_job(backend, wanted) if as_of is None else show_job_as_of(backend, wanted, as_of)
        return detail, queries.job_history(backend, wanted)

    try:
        (detail, history), fresh = await request.app.state.reads.page(ask)
    except queries.JobNotFound as error:
        return problem(request, 404, str(error))
    except AsOfError as error:
        return problem(request, 400, f"as_of: {error}")
    # a job as of a past moment is history: no action on it (they act on the job as it is now)
    return render(request, "job.html", {"job": detail, "history": history, "freshness": fresh, "as_of": as_of,
                                        "dead_lettered": as_of is None and detail.status == "dead_lettered"})


async def dead_letters(request: Request) -> Response:
    name = request.query_params.get("name", "").strip() or None
    entries, fresh = await request.app.state.reads.page(
        lambda backend: queries.dead_letters(backend, name=name, limit=500))
    names = sorted({entry.name for entry in entries})
    return render(request, "dead_letters.html", {"entries": entries, "names": names, "name": name or "",
                                                 "freshness": fresh})


async def workers(request: Request) -> Response:
    """The worker registry (`<ns>.workers`, read from Kafka: it is not projected)."""
    return render(request, "workers.html", {"workers": await request.app.state.app.workers()})


#: the queues page lists at most this many concurrency limit keys, the busiest first
LIMIT_KEYS_LISTED = 50


async def queues(request: Request) -> Response:
    """Every queue with its pause state (`<ns>.queue-control`) and its open jobs (the projection),
    and the keys of the concurrency limits (of one queue's jobs with `?queue=`): slots, waiting, rate."""
    try:
        chosen = queue_name(request.query_params)
    except BadFilter as error:
        return problem(request, 400, str(error))
    statuses = await request.app.state.app.queues()

    def ask(backend: Backend) -> tuple[list[queries.QueueDepth], list[queries.LimitKey]]:
        return queries.queue_depth(backend), queries.limit_keys(backend, queue=chosen, limit=LIMIT_KEYS_LISTED)

    depth, limits = await request.app.state.reads.ask(ask)
    open_jobs: dict[str, int] = {}
    for row in depth:
        open_jobs[row.queue] = open_jobs.get(row.queue, 0) + row.total
    listed = {status.queue: status for status in statuses}
    for queue in open_jobs.keys() - listed.keys():  # seen by the read side, unknown to the cluster's topics
        listed[queue] = None
    rows = [{"queue": queue, "open": open_jobs.get(queue, 0), "status": listed[queue]} for queue in sorted(listed)]
    return render(request, "queues.html", {"queues": rows, "limits": limits, "limits_queue": chosen,
                                            "limits_listed": LIMIT_KEYS_LISTED})
