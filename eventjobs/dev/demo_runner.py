"""`eventjobs demo`: the whole system on this machine, end to end, in about half a minute.

Starts the local Kafka broker, applies the topics, runs a processor (with the timer service and
the ClickHouse projector) and a worker as separate processes, enqueues real jobs of the demo
shop (`eventjobs.dev.demo`) including failing, retried, cancelled, timed-out and duplicate ones,
waits for every job to finish, then shows what the ClickHouse projections say.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, UTC
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eventjobs.app import App
from eventjobs.clickhouse.backend import Backend
from eventjobs.core.state import JobState
from eventjobs.dev.broker import LocalKafka
from eventjobs.dev.processes import stop_processes
from eventjobs.settings import DEFAULT_BOOTSTRAP, Settings, load_settings
from eventjobs.kafka.admin import apply_topics

NAMESPACE = "demo"
QUEUES = ["default", "emails"]


class DemoServeError(RuntimeError):
    """`demo --serve` cannot serve: its dashboard port is taken, or a process it started exited."""


def _spawn(args: list[str], settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap, "EVENTJOBS_NAMESPACE": settings.namespace}
    return subprocess.Popen([sys.executable, "-m", "eventjobs.cli", *args], env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)


async def _enqueue_all(app: App) -> dict[str, str]:
    """Enqueue the demo's jobs; returns job id -> what the job is meant to show."""
    jobs: dict[str, str] = {}
    for order in range(1, 31):
        jobs[await app.enqueue("send_receipt", {"order": order})] = "completes"
    for amount in (10, 25, 40):
        jobs[await app.enqueue("charge_card", {"amount": amount})] = "fails twice, retried, completes"
    for sku in ("SKU-1", "SKU-2"):
        jobs[await app.enqueue("sync_inventory", {"sku": sku})] = "exhausts 3 attempts, dead-lettered"
    jobs[await app.enqueue("ship_order", {"order": 7})] = "completes and enqueues a child job"
    jobs[await app.enqueue("ship_order", {"order": 8, "refunded": True})] = "Cancel marker: fails at once"
    jobs[await app.enqueue("render_invoice", {"pages": 3})] = "sync handler, completes"
    jobs[await app.enqueue("render_invoice", {"pages": 400})] = "times out, dead-lettered"
    key = f"order-99-{uuid.uuid4().hex[:8]}"  # unique per run: the key would also dedupe across runs
    twice = [await app.enqueue("charge_card", {"amount": 99}, idempotency_key=key) for _ in range(2)]
    jobs[twice[0]] = "enqueued twice with one idempotency key: runs once"
    later = datetime.now(UTC) + timedelta(seconds=2)
    jobs[await app.enqueue("send_receipt", {"order": 100}, run_at=later)] = "scheduled 2 s ahead"
    doomed = await app.enqueue("send_receipt", {"order": 101}, delay=600)
    await app.cancel(doomed, "customer unsubscribed")
    jobs[doomed] = "scheduled, then cancelled"
    return jobs


async def _wait_all(app: App, jobs: dict[str, str], console: Console) -> dict[str, JobState]:
    states: dict[str, JobState] = {}
    columns = (TextColumn("waiting for jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("jobs", total=len(jobs))

        async def one(job_id: str) -> None:
            states[job_id] = await app.wait(job_id, timeout=120)
            progress.advance(task)

        await asyncio.gather(*(one(job_id) for job_id in jobs))
    return states


def short_id(job_id: str) -> str:
    """The last 12 hex digits of a job id: the random part of a uuid7 (its first 8 are the time,
    the same for every job enqueued in one millisecond), so ids of one run can be told apart."""
    return job_id.replace("-", "")[-12:]


def _table(*columns: str | tuple[str, int], title: str) -> Table:
    """A table that fits 80 columns: each column has a most width (name, width), and a longer cell
    is cut with an ellipsis, never wrapped; the id column is never cut."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in columns:
        name, width = column if isinstance(column, tuple) else (column, None)
        if name == "id":  # what tells the rows apart
            table.add_column(name, no_wrap=True, min_width=12)
        else:
            table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=width)
    return table


def log_view_table(states: dict[str, JobState], jobs: dict[str, str]) -> Table:
    """The job-state changelog's view of the demo's jobs (one "completes" row stands for all)."""
    table = _table(("job", 14), "id", ("expected", 18), ("status", 13), "att", ("result / last error", 18),
                   title="What happened (the processor's job-state changelog)")
    shown: set[str] = set()
    for job_id, expectation in jobs.items():
        if expectation == "completes" and "completes" in shown:
            continue
        shown.add(expectation)
        state = states[job_id]
        detail = (str(state.result) if state.result is not None
                  else f"{state.last_error.error_type}: {state.last_error.message}" if state.last_error
                  else state.reason or "")
        table.add_row(state.name, short_id(job_id), expectation, state.status.value, str(state.attempts_started),
                      detail)
    return table


def _show_log_view(states: dict[str, JobState], jobs: dict[str, str], console: Console) -> None:
    console.print(log_view_table(states, jobs))


def metrics_table(stats: list[Any]) -> Table:
    table = _table(("job", 14), "enq", "done", "retried", "dead", "fail %", "p50 run", "p99 run", "p50 wait",
                   title="ClickHouse metrics (job_metrics_1m, since this run began)")
    for row in stats:
        table.add_row(row.group, str(row.enqueued), str(row.completed), str(row.retried), str(row.dead_lettered),
                      f"{row.failure_rate:.0%}" if row.failure_rate is not None else "-",
                      _ms(row.duration_p50_s), _ms(row.duration_p99_s), _ms(row.wait_p50_s))
    return table


def dead_letters_table(dead: list[Any]) -> Table:
    table = _table("id", ("name", 14), ("reason", 20), ("last error", 28), title="Dead-letter queue (dead_letters)")
    for entry in dead[:10]:
        table.add_row(short_id(entry.job_id), entry.name, entry.reason, f"{entry.error_type}: {entry.error_message}")
    return table


def history_table(job_id: str, history: list[Any]) -> Table:
    table = _table(("+s", 8), ("event", 20), "attempt", ("actor", 36), title=f"History of charge_card {short_id(job_id)} (job_events)")
    for entry in history:
        table.add_row(f"{entry.since_enqueued_s:.3f}", entry.type,
                      str(entry.attempt) if entry.attempt >= 0 else "-", entry.actor)
    return table


async def _show_projections(settings: Settings, since: datetime, count: int, console: Console) -> None:
    from eventjobs.readside import queries as query
    from eventjobs.clickhouse import open_backend

    backend = await asyncio.to_thread(open_backend, settings)
    try:
        deadline = time.monotonic() + 60
        while True:  # the projector runs beside the processor; wait until it has caught up
            rows = await asyncio.to_thread(query.list_jobs, backend, since=since, limit=10_000)
            finished = [r for r in rows if r.status in ("completed", "cancelled", "dead_lettered")]
            if len(finished) >= count or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        by_status: dict[str, int] = {}
        for row in rows:
            by_status[row.status] = by_status.get(row.status, 0) + 1
        console.print(f"[bold]ClickHouse `jobs` projection[/]: {len(rows)} jobs of this run: "
                      + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
        stats = await asyncio.to_thread(query.job_stats, backend, since=since, by="name")
        console.print(metrics_table(stats))
        dead = await asyncio.to_thread(query.dead_letters, backend)
        console.print(dead_letters_table(dead))
        flaky = next((r for r in rows if r.name == "charge_card" and r.attempts_started == 3), None)
        if flaky is not None:
            history = await asyncio.to_thread(query.job_history, backend, flaky.job_id)
            console.print(history_table(flaky.job_id, history))
            await _show_as_of(backend, flaky.job_id, history, console, settings.namespace)
    finally:
        backend.close()


async def _show_as_of(backend: Backend, job_id: str, history: list[Any], console: Console, namespace: str) -> None:
    """The same job as it stood right after its first failed attempt: history as of a moment."""
    from eventjobs.readside.as_of import AsOf, show_job_as_of

    first_failure = next((e for e in history if e.type == "attempt_failed"), None)
    if first_failure is None:
        return
    moment = AsOf(at=first_failure.occurred_at)
    then = await asyncio.to_thread(show_job_as_of, backend, job_id, moment)
    at = first_failure.occurred_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    console.print(f"[bold]The same job {moment.describe()}[/] (its first failure), from the history alone: "
                  f"status {then.status}, attempt {then.attempt}, {then.attempts_started} started, last error "
                  f"{then.error_type}: {then.error_message}\n  (`eventjobs jobs show {job_id} --as-of {at} --namespace {namespace}`)",
                  highlight=False)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def run_demo(home: Path, port: int, console: Console, *, serve_port: int | None = None, bootstrap: str | None = None,
             namespace: str = NAMESPACE) -> None:
    """The demo; with `serve_port`, then the dashboard on its data until SIGINT/SIGTERM, after
    which everything this run started stops (the broker too, if this run started it). With
    `bootstrap`, the broker there is used and no local one is started."""
    if serve_port is not None:
        _check_port_free(serve_port)  # before the demo runs, not after
    broker = LocalKafka(home=home, port=port)
    started_broker = False
    given = "" if bootstrap is None else f" --bootstrap {bootstrap}"
    if bootstrap is None:
        started_broker = not broker.status().running
        with console.status("starting Kafka (the first run downloads the broker jars with Maven)..."):
            status = broker.up()
        bootstrap = status.bootstrap
        console.print(f"[green]Kafka[/] at {bootstrap} (pid {status.pid})")
    settings = load_settings(kafka_bootstrap=bootstrap, namespace=namespace)
    reports = asyncio.run(apply_topics(settings, QUEUES))
    console.print(f"topics: {sum(r.action == 'created' for r in reports)} created, {len(reports)} in namespace "
                  f"{settings.namespace!r}")
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = [
        _spawn(["processor", "--app", "eventjobs.dev.demo:app", "--project"], settings, logs / "processor.log"),
        _spawn(["worker", "--app", "eventjobs.dev.demo:app", "--queues", ",".join(QUEUES), "--concurrency", "20"],
               settings, logs / "worker.log"),
    ]
    console.print(f"processor (with timers and the ClickHouse projector) and worker started; logs in {logs}")
    try:
        asyncio.run(_main(settings, console))
        if serve_port is not None:
            processes.append(serve_dashboard(settings, serve_port, processes, logs, console))
    finally:
        stop_processes(processes, timeout_s=40)
        if serve_port is not None and started_broker:
            broker.down()
    if serve_port is not None:
        console.print("stopped the dashboard, the worker and the processor" + (" and Kafka" if started_broker else ""))
        return
    ns = "" if settings.namespace == NAMESPACE else f" --namespace {settings.namespace}"
    env = "" if bootstrap == DEFAULT_BOOTSTRAP else f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} "
    kept = "" if given else "Kafka keeps running (stop it with `eventjobs dev down`). "
    console.print(f"\n{kept}Try `eventjobs jobs list --namespace {settings.namespace}`, "
                  f"`eventjobs stats --namespace {settings.namespace}`, `eventjobs dlq list --namespace "
                  f"{settings.namespace}`.")
    console.print(f"Open the dashboard on this data: `{env}eventjobs dashboard --namespace {settings.namespace}`, then "
                  f"http://127.0.0.1:8080/ (or run `eventjobs demo{ns}{given} --serve`, which keeps everything "
                  f"running with the dashboard until Ctrl-C).")


def serve_dashboard(settings: Settings, port: int, services: list[subprocess.Popen[bytes]], logs: Path,
                    console: Console) -> subprocess.Popen[bytes]:
    """Start the dashboard on the demo's data and keep it and `services` running until SIGINT or
    SIGTERM; returns the dashboard's process (the caller stops it with the rest). A process that
    exits on its own ends the wait with `DemoServeError`."""
    dashboard = _spawn(["dashboard", "--app", "eventjobs.dev.demo:app", "--port", str(port)], settings,
                       logs / "dashboard.log")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_answering(url, dashboard, logs / "dashboard.log", stop)
        console.print(f"[green]dashboard[/] at [bold]{url}[/] on the demo's data; Kafka, the processor and the "
                      f"worker keep running. Ctrl-C stops everything this run started.")
        while not stop.wait(0.5):
            exited = [process for process in (*services, dashboard) if process.poll() is not None]
            if exited and not stop.wait(1.0):  # Ctrl-C in a terminal reaches the children too
                raise DemoServeError(f"the {exited[0].args[3]} exited with code {exited[0].returncode}; see its "  # type: ignore[index, str-bytes-safe]  # _spawn's list: args[3] names the service
                                     f"log in {logs}")
    except BaseException:
        dashboard.terminate()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print("stopping ...")
    return dashboard


def _check_port_free(port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise DemoServeError(f"the dashboard port {port} on 127.0.0.1 is already in use by another process; "
                                 f"choose another with --dashboard-port") from None


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], log: Path, stop: threading.Event) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stop.is_set():
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise DemoServeError(f"the dashboard exited with code {process.returncode}: {' '.join(tail)}")
        try:
            with urllib.request.urlopen(url + "static/dashboard.css", timeout=2):
                return
        except OSError:
            stop.wait(0.3)
    if not stop.is_set():
        raise DemoServeError(f"the dashboard did not answer at {url} within 60 s; see {log}")


async def _main(settings: Settings, console: Console) -> None:
    from eventjobs.dev.demo import app

    demo_app = App(settings.namespace, settings=settings)
    demo_app.jobs = app.jobs
    try:
        with console.status("waiting for the processor and the worker to join their groups..."):
            await demo_app.wait(await demo_app.enqueue("send_receipt", {"order": 0}), timeout=120)
        since = datetime.now(UTC)
        started = time.monotonic()
        jobs = await _enqueue_all(demo_app)
        console.print(f"enqueued {len(jobs)} jobs")
        states = await _wait_all(demo_app, jobs, console)
        console.print(f"all {len(jobs)} jobs finished in {time.monotonic() - started:.1f} s")
        _show_log_view(states, jobs, console)
        children = sum(1 for s in states.values() if s.result and "receipt_job" in s.result)
        await _show_projections(settings, since, len(jobs) + children, console)
    finally:
        await demo_app.close()
