"""`eventjobs processor | worker | project`: the long-running services, each until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Annotated

import typer

from eventjobs.cli.options import (
    AppOption,
    NamespaceOption,
    OptionalAppOption,
    app_or_namespace,
    load_app,
    parse_seconds,
    positive_seconds,
    settings_of,
)
from eventjobs.cli.output import err, kafka_failure_in_one_line
from eventjobs.runtime.gc_pause import tune_for_service
from eventjobs.metrics import Metrics
from eventjobs.readside.projector import ProjectorOptions, events_topic
from eventjobs.settings import Settings


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a long-lived service until SIGTERM or SIGINT, then let it shut down cleanly (with the
    garbage collector tuned for a service: `runtime.gc_pause.tune_for_service`)."""
    tune_for_service()

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


def _log_service_progress() -> None:
    logging.getLogger("eventjobs").setLevel(logging.INFO)


MetricsPortOption = Annotated[int | None, typer.Option(
    "--metrics-port", min=0, max=65535,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics; env EVENTJOBS_METRICS_PORT (default: off).")]
MetricsHostOption = Annotated[str | None, typer.Option(
    "--metrics-host", help="Address the metrics endpoint binds; env EVENTJOBS_METRICS_HOST (default 127.0.0.1).")]


def _metrics(settings: Settings, port: int | None, host: str | None) -> AbstractContextManager[Metrics | None]:
    """This service's metrics, served while the block runs (None when no port is set)."""
    from eventjobs.metrics import serving

    port = port if port is not None else settings.metrics_port
    host = host or settings.metrics_host
    if port is not None:
        err.print(f"metrics at http://{host}:{port}/metrics")
    return serving(port, host)


def processor(
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
    max_batch: Annotated[int, typer.Option(help="Most events per transaction and partition.")] = 2000,
    commit_interval: Annotated[str, typer.Option(
        help="Least time between two transactions of a partition (a full batch commits at once).")] = "100ms",
    project: Annotated[bool, typer.Option("--project/--no-project",
                                          help="Also run the ClickHouse projector in this process.")] = False,
    retain_completed: Annotated[str | None, typer.Option(
        help="How long a completed, cancelled or discarded job (and its idempotency key) is kept before it is "
             "forgotten; env EVENTJOBS_RETAIN_COMPLETED (default 24h).")] = None,
    dead_letter_retention: Annotated[str | None, typer.Option(
        help="How long a dead-lettered job waits for a retry before it is discarded; a job's "
             "dead_letter_retention option wins; env EVENTJOBS_DEAD_LETTER_RETENTION (default 7d).")] = None,
    republish_after: Annotated[str | None, typer.Option(
        help="How long a pending job's ready record waits before the processor asks whether it is lost (and "
             "publishes it again if so; a record still waiting for a paused or busy queue is not); env "
             "EVENTJOBS_REPUBLISH_AFTER (default 1h).")] = None,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = None,
) -> None:
    """Run the lifecycle processor, the timer service and the schedule service (start several for more
    throughput). With --app, the schedules declared on its jobs are written at start."""
    from eventjobs.readside.service import run_projector
    from eventjobs.runtime.processor import run_processor
    from eventjobs.runtime.schedules import ScheduleService

    _log_service_progress()
    target = app_or_namespace(app, namespace)
    err.print(f"processor for namespace [bold]{target.settings.namespace}[/] at {target.settings.kafka_bootstrap}")
    interval_s = parse_seconds(commit_interval, "--commit-interval")
    settings = target.settings.model_copy(update={
        key: positive_seconds(text, option)
        for key, text, option in (("retain_completed_s", retain_completed, "--retain-completed"),
                                  ("dead_letter_retention_s", dead_letter_retention, "--dead-letter-retention"),
                                  ("republish_after_s", republish_after, "--republish-after"))
        if text is not None
    })

    with _metrics(settings, metrics_port, metrics_host) as metrics:
        async def services(stop: asyncio.Event) -> None:
            projector = {"projector": run_projector(settings, stop, metrics=metrics)} if project else {}
            schedules = {"schedule service": ScheduleService(settings, jobs=target.jobs if app else None,
                                                             writer=target.writer if app else None,
                                                             metrics=metrics).run(stop)}
            await run_processor(settings, stop, with_services={**schedules, **projector}, max_batch=max_batch,
                                commit_interval_s=interval_s, metrics=metrics)

        run_until_signalled(services)


def worker(
    app: AppOption,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues (default: the app's job queues).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        help="Jobs run at once (sync handlers: threads too). Default: 100 if any handler is async, else "
             "min(32, CPUs + 4); sync handlers always get at most min(32, CPUs + 4) threads by default.")] = None,
    capabilities: Annotated[str | None, typer.Option(help="Comma-separated capabilities this worker has.")] = None,
    lease: Annotated[str, typer.Option(help="Lease per attempt, extended by heartbeats (e.g. 30s).")] = "30s",
    grace: Annotated[str, typer.Option(help="On SIGTERM, how long running jobs may finish.")] = "30s",
    worker_id: Annotated[str | None, typer.Option(help="Name in events (default host:pid).")] = None,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = None,
) -> None:
    """Run jobs from the app's queues until SIGTERM (then finish or hand back running jobs)."""
    from eventjobs.runtime.worker import Worker

    _log_service_progress()
    target = load_app(app)
    with _metrics(target.settings, metrics_port, metrics_host) as metrics:
        service = Worker(
            target,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            concurrency=concurrency,
            capabilities=[c.strip() for c in capabilities.split(",") if c.strip()] if capabilities else None,
            lease_s=parse_seconds(lease, "--lease"),
            grace_s=parse_seconds(grace, "--grace"),
            worker_id=worker_id,
            metrics=metrics,
        )
        err.print(f"worker {service.worker_id}: queues {', '.join(service.queues)}, "
                  f"concurrency {service.concurrency} ({service.threads} threads for sync handlers)")
        run_until_signalled(service.run)


def projector(
    app_spec: OptionalAppOption = None,
    namespace: NamespaceOption = None,
    batch_size: Annotated[int, typer.Option(help="Most events per batch.")] = 20_000,
    batch_wait_s: Annotated[float, typer.Option("--batch-wait", help="Longest wait in seconds to fill a batch.")] = 0.5,
    read_api_port: Annotated[int, typer.Option(help="Port of the read API on 127.0.0.1 (chdb only; read-only, token in the owner record or EVENTJOBS_READ_API_TOKEN; 0: any free port).")] = 0,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = None,
) -> None:
    """Project the event log into ClickHouse until stopped (SIGTERM/SIGINT); serves the read API with chdb."""
    from eventjobs.readside.service import run_projector

    settings = settings_of(namespace, app_spec)
    options = ProjectorOptions(batch_max_events=batch_size, batch_max_wait_s=batch_wait_s)
    err.print(f"projecting {events_topic(settings)} into ClickHouse (Ctrl-C to stop)")
    with kafka_failure_in_one_line(), _metrics(settings, metrics_port, metrics_host) as metrics:
        run_until_signalled(lambda stop: run_projector(settings, stop, options=options, read_api_port=read_api_port,
                                                       metrics=metrics))
