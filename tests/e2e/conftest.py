"""In-process runtime for end-to-end tests: the real processor, timer service and worker as tasks
against the session broker. Tests that kill processes start their own subprocesses instead."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from eventjobs import App
from eventjobs.core.codec import decode
from eventjobs.core.events import JobEvent
from eventjobs.core.state import JobState, JobStatus
from eventjobs.kafka.clients import partitions_of, read_to_end
from eventjobs.runtime.processor import run_processor
from eventjobs.settings import Settings
from eventjobs.kafka.admin import apply_topics
from eventjobs.runtime.worker import Worker
from tests.support.doc_examples import doc_examples
from tests.support.jobs_app import build_app

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ["default", "render"]


@dataclass
class Runtime:
    app: App
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    def start_processor(self, settings: Settings | None = None, **options: Any) -> None:
        """Run the processor and timer service on `settings` (the app's by default), with
        `run_processor`'s keyword `options`."""
        self.tasks.append(asyncio.create_task(run_processor(settings or self.app.settings, self.stop, **options)))

    async def start_worker(self, **options: object) -> Worker:
        worker = Worker(self.app, queues=options.pop("queues", ["default"]), lease_s=options.pop("lease_s", 5.0),  # type: ignore[arg-type]
                        **options)  # type: ignore[arg-type]
        self.workers.append(worker)
        self.tasks.append(asyncio.create_task(worker.run(self.stop)))
        await asyncio.wait_for(worker.started.wait(), 30)
        return worker

    async def close(self) -> None:
        self.stop.set()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.app.close()
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors


@asynccontextmanager
async def built_app(settings: Settings, build: Callable[..., App] = build_app, queues: list[str] = QUEUES,
                    **options: Any) -> AsyncIterator[App]:
    """The app `build(namespace, kafka_bootstrap=..., **options)` makes on the test's namespace and
    broker, its queues' topics applied; closed at the end of the block. What an app fixture yields."""
    await apply_topics(settings, queues)
    application = build(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap, **options)
    try:
        yield application
    finally:
        await application.close()


@asynccontextmanager
async def processor_runtime(app: App, settings: Settings | None = None, **options: Any) -> AsyncIterator[Runtime]:
    """The in-process runtime of `app` with its processor started (`Runtime.start_processor`; workers
    are the test's to start); closed at the end of the block. What a runtime fixture yields."""
    rt = Runtime(app)
    rt.start_processor(settings, **options)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    async with built_app(settings) as application:
        yield application


@pytest.fixture
async def runtime(app: App) -> AsyncIterator[Runtime]:
    async with processor_runtime(app) as rt:
        yield rt


async def job_events(settings: Settings, job_id: str | None = None) -> list[JobEvent]:
    """Every event on the namespace's log (of one job, if given), in log order per partition."""
    topic = f"{settings.namespace}.events"
    events = [decode(r.value) async for r in read_to_end(settings, await partitions_of(settings, topic))]
    return [e for e in events if job_id is None or e.job_id == job_id]


def spawn(args: list[str], settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """An `eventjobs` subprocess of this test's namespace (processor, worker, ...)."""
    handle = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "eventjobs.cli", *args], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
             "EVENTJOBS_NAMESPACE": settings.namespace, **env},
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def wait_for_status(runtime: Runtime, job_id: str, status: JobStatus | tuple[JobStatus, ...],
                          timeout: float = 30) -> JobState:
    """Poll the changelog view until the job has `status` (or one of them), for statuses `App.wait`
    does not wait for. The changelog shows a state only once the processor committed it, up to
    its commit interval after the event that caused it is in the log."""
    wanted = status if isinstance(status, tuple) else (status,)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        state = await runtime.app.state(job_id)
        if state is not None and state.status in wanted:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {status}; last: {await runtime.app.state(job_id)}")


def exec_doc_example(code: str, settings: Settings, origin: str) -> dict[str, Any]:
    """Run a documented example's module code in `settings`' namespace: the example's one change
    is its app, `App("shop")`, which gets the test's namespace and broker. Returns its globals."""
    assert code.count('App("shop")') == 1, f"{origin}: an example defines its app as App(\"shop\")"
    code = code.replace('App("shop")', f'App("{settings.namespace}", kafka_bootstrap="{settings.kafka_bootstrap}")')
    scope: dict[str, Any] = {"__name__": re.sub(r"\W", "_", origin)}
    exec(compile(code, origin, "exec"), scope)  # noqa: S102 - the project's own docs
    return scope


@asynccontextmanager
async def doc_example(page: str, name: str, settings: Settings,
                      **worker_options: Any) -> AsyncIterator[tuple[dict[str, Any], Worker]]:
    """The example `name` of docs/`page` (`tests.support.doc_examples`) as written, its app in
    `settings`' namespace, with a processor and a worker of its queues running: its globals
    (`main` among them) and the worker."""
    scope = exec_doc_example(doc_examples(page)[name], settings, f"{page}:{name}")
    app: App = scope["app"]
    queues = sorted({d.options.queue for d in app.jobs.values()})
    await apply_topics(settings, queues)
    runtime = Runtime(app)
    runtime.start_processor()
    try:
        yield scope, await runtime.start_worker(queues=queues, **worker_options)
    finally:
        await runtime.close()


async def run_doc_example(page: str, name: str, settings: Settings, **worker_options: Any) -> None:
    """Run the example `name` of docs/`page`: its `main()`, with its services (`doc_example`)."""
    async with doc_example(page, name, settings, **worker_options) as (scope, _):
        await scope["main"]()
