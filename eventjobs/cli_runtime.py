"""CLI commands of the runtime: processor, worker, enqueue, cancel and dead-letter actions."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from eventjobs.app import App
from eventjobs.settings import load_settings

T = TypeVar("T")
out = Console()
err = Console(stderr=True)

AppOption = Annotated[str, typer.Option("--app", help="Your app as module:attribute, e.g. myproject.jobs:app.")]
OptionalAppOption = Annotated[Optional[str], typer.Option("--app", help="Your app as module:attribute (or give --namespace).")]
NamespaceOption = Annotated[Optional[str], typer.Option(help="Topic namespace (the app name), when no --app is given.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class AppLoadError(ValueError):
    """`--app` does not name an eventjobs App."""


def parse_duration(text: str, option: str) -> float:
    """'10s', '250ms', '5m', '1.5h', '2d' or plain seconds."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration; use e.g. 10s, 250ms, 5m, 1h or a number of seconds",
                                 param_hint=option)
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def load_app(spec: str) -> App:
    """Import `module:attribute` (the current directory is importable) and check it is an App."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"--app {spec!r} must look like module:attribute, e.g. myproject.jobs:app")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AppLoadError(f"--app {spec!r}: cannot import module {module_name!r}: {error}") from error
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        found = type(app).__name__ if app is not None else "nothing"
        raise AppLoadError(f"--app {spec!r}: {module_name}.{attribute} is {found}, not an eventjobs.App")
    return app


def _app_or_namespace(app_spec: str | None, namespace: str | None) -> App:
    if app_spec:
        return load_app(app_spec)
    settings = load_settings(namespace=namespace)
    return App(settings.namespace, settings=settings)


def _configure_logging() -> None:
    logging.getLogger("eventjobs").setLevel(logging.INFO)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a long-lived service until SIGTERM or SIGINT, then let it shut down cleanly."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


def _run(coroutine_factory: Callable[[App], Awaitable[T]], app: App) -> T:
    async def runner() -> T:
        try:
            return await coroutine_factory(app)
        finally:
            await app.close()

    return asyncio.run(runner())


def register(cli: typer.Typer) -> None:
    dlq = typer.Typer(help="The dead-letter queue: list, retry, discard.", no_args_is_help=True)
    cli.add_typer(dlq, name="dlq")

    @cli.command("processor")
    def processor_command(
        app: OptionalAppOption = None,
        namespace: NamespaceOption = None,
        max_batch: Annotated[int, typer.Option(help="Most events per transaction and partition.")] = 2000,
        commit_interval: Annotated[str, typer.Option(
            help="Least time between two transactions of a partition (a full batch commits at once).")] = "100ms",
        project: Annotated[bool, typer.Option("--project/--no-project",
                                              help="Also run the ClickHouse projector in this process.")] = False,
    ) -> None:
        """Run the lifecycle processor and the timer service (start several for more throughput)."""
        from eventjobs.processor import run_processor

        _configure_logging()
        target = _app_or_namespace(app, namespace)
        err.print(f"processor for namespace [bold]{target.settings.namespace}[/] at {target.settings.kafka_bootstrap}")
        interval_s = parse_duration(commit_interval, "--commit-interval")
        run_until_signalled(lambda stop: run_processor(target.settings, stop, project=project, max_batch=max_batch,
                                                       commit_interval_s=interval_s))

    @cli.command("worker")
    def worker_command(
        app: AppOption,
        queues: Annotated[Optional[str], typer.Option(help="Comma-separated queues (default: the app's job queues).")] = None,
        concurrency: Annotated[int, typer.Option(help="Jobs run at once.")] = 10,
        capabilities: Annotated[Optional[str], typer.Option(help="Comma-separated capabilities this worker has.")] = None,
        lease: Annotated[str, typer.Option(help="Lease per attempt, extended by heartbeats (e.g. 30s).")] = "30s",
        grace: Annotated[str, typer.Option(help="On SIGTERM, how long running jobs may finish.")] = "30s",
        worker_id: Annotated[Optional[str], typer.Option(help="Name in events (default host:pid).")] = None,
    ) -> None:
        """Run jobs from the app's queues until SIGTERM (then finish or hand back running jobs)."""
        from eventjobs.worker import Worker

        _configure_logging()
        target = load_app(app)
        worker = Worker(
            target,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            concurrency=concurrency,
            capabilities=[c.strip() for c in capabilities.split(",") if c.strip()] if capabilities else None,
            lease_s=parse_duration(lease, "--lease"),
            grace_s=parse_duration(grace, "--grace"),
            worker_id=worker_id,
        )
        err.print(f"worker {worker.worker_id}: queues {', '.join(worker.queues)}, concurrency {concurrency}")
        run_until_signalled(worker.run)

    @cli.command("enqueue")
    def enqueue_command(
        name: Annotated[str, typer.Argument(help="Registered job name.")],
        app: AppOption,
        args: Annotated[str, typer.Option("--args", help="Job arguments as a JSON object.")] = "{}",
        delay: Annotated[Optional[str], typer.Option(help="Run after this long, e.g. 10s.")] = None,
        run_at: Annotated[Optional[datetime], typer.Option("--run-at", help="Run at this ISO time (with timezone).")] = None,
        idempotency_key: Annotated[Optional[str], typer.Option(help="Enqueue at most once per key.")] = None,
        priority: Annotated[Optional[str], typer.Option(help="critical, high, normal or low.")] = None,
        queue: Annotated[Optional[str], typer.Option(help="Override the job's queue.")] = None,
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
            options["delay"] = parse_duration(delay, "--delay")
        if run_at is not None:
            options["run_at"] = run_at
        if idempotency_key is not None:
            options["idempotency_key"] = idempotency_key
        if priority is not None:
            options["priority"] = priority
        if queue is not None:
            options["queue"] = queue
        target = load_app(app)
        event = target.build_enqueue(name, parsed, **options)  # validates before anything is sent
        _run(lambda a: a.append([event]), target)
        if as_json:
            out.print_json(json.dumps({"job_id": event.job_id, "name": name, "queue": event.queue,
                                       "run_at": event.run_at.isoformat() if event.run_at else None}))
        else:
            out.print(event.job_id)

    @cli.command("cancel")
    def cancel_command(
        job_id: str,
        app: OptionalAppOption = None,
        namespace: NamespaceOption = None,
        reason: Annotated[str, typer.Option(help="Why (kept in the event).")] = "cancelled from the CLI",
    ) -> None:
        """Request cancellation: pending, scheduled and retrying jobs stop at once, a running one at its next heartbeat."""
        _run(lambda a: a.cancel(job_id, reason), _app_or_namespace(app, namespace))
        out.print(f"cancel requested for {job_id}")

    @dlq.command("list")
    def dlq_list(app: OptionalAppOption = None, namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
        """What is in the dead-letter queue now (from the dead-letter topic)."""
        entries = _run(lambda a: a.dead_letters(), _app_or_namespace(app, namespace))
        if as_json:
            out.print_json(json.dumps([json.loads(e.model_dump_json()) for e in entries]))
            return
        table = Table("job id", "name", "queue", "attempts", "reason", "last error", "dead-lettered at")
        for e in entries:
            table.add_row(e.job_id, e.name, e.queue, str(e.attempts), e.reason,
                          f"{e.error_type}: {e.message}"[:120], e.dead_lettered_at.isoformat(timespec="seconds"))
        out.print(table)
        out.print(f"{len(entries)} job(s) in the dead-letter queue")

    @dlq.command("retry")
    def dlq_retry(job_id: str, app: OptionalAppOption = None, namespace: NamespaceOption = None) -> None:
        """Run a dead-lettered job again with a fresh attempt budget."""
        entry = _run(lambda a: a.retry_dead_letter(job_id), _app_or_namespace(app, namespace))
        out.print(f"retrying {entry.job_id} ({entry.name})")

    @dlq.command("retry-all")
    def dlq_retry_all(
        job_type: Annotated[Optional[str], typer.Option("--type", help="Only jobs of this name.")] = None,
        app: OptionalAppOption = None,
        namespace: NamespaceOption = None,
    ) -> None:
        """Retry every dead-lettered job (of one type with --type)."""
        retried = _run(lambda a: a.retry_all_dead_letters(job_type), _app_or_namespace(app, namespace))
        out.print(f"retrying {len(retried)} job(s)")

    @dlq.command("discard")
    def dlq_discard(job_id: str, app: OptionalAppOption = None, namespace: NamespaceOption = None) -> None:
        """Drop a dead-lettered job for good."""
        entry = _run(lambda a: a.discard_dead_letter(job_id), _app_or_namespace(app, namespace))
        out.print(f"discarded {entry.job_id} ({entry.name})")
