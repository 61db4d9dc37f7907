"""A real stack for the dashboard: processor (with the ClickHouse projector) and worker of the
demo app as subprocesses of one namespace, real jobs (one of them dead-lettered), and the
dashboard itself as `eventjobs dashboard`; plus Debian's chromium driven by Playwright.

Module-scoped, so the browser tests share one stack and one browser."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from eventjobs import App
from eventjobs.clickhouse import open_backend
from eventjobs.core.state import JobState
from eventjobs.dev.broker import free_port
from eventjobs.kafka.admin import apply_topics
from eventjobs.readside import queries
from eventjobs.settings import Settings
from tests.support.tools import CHROMIUM, require_tool

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ["default", "emails"]
DEMO_APP = "eventjobs.dev.demo:app"
T = TypeVar("T")


def demo_app(settings: Settings) -> App:
    """An App of the test's namespace with the demo's jobs (the processes run the same ones)."""
    from eventjobs.dev.demo import app as demo

    app = App(settings.namespace, settings=settings)
    app.jobs = demo.jobs
    return app


def in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end in a fresh event loop on another thread: Playwright's sync API
    keeps its own loop running on the test's thread, where `asyncio.run` is refused."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def run(call: Callable[[App], Coroutine[Any, Any, T]], settings: Settings) -> T:
    """One call on a fresh App of the namespace (closed afterwards)."""

    async def main() -> T:
        app = demo_app(settings)
        try:
            return await call(app)
        finally:
            await app.close()

    return in_thread(main)


@dataclass
class Stack:
    settings: Settings
    url: str
    states: dict[str, JobState]
    roles: dict[str, str]  # job id -> what it shows
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def job(self, role: str) -> str:
        return next(job_id for job_id, r in self.roles.items() if r == role)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "eventjobs.cli", *args], cwd=ROOT, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


async def _enqueue_and_finish(app: App) -> tuple[dict[str, str], dict[str, JobState]]:
    roles: dict[str, str] = {}
    for order in range(5):
        roles[await app.enqueue("send_receipt", {"order": order})] = "receipt"
    for amount in (10, 20):
        roles[await app.enqueue("charge_card", {"amount": amount})] = "flaky"
    roles[await app.enqueue("sync_inventory", {"sku": "SKU-DEAD"})] = "dead"
    roles[await app.enqueue("ship_order", {"order": 8, "refunded": True})] = "refused"
    states = dict(zip(roles, await asyncio.gather(*(app.wait(job_id, timeout=90) for job_id in roles))))
    return roles, states


def _projected(settings: Settings, count: int) -> bool:
    with closing(open_backend(settings)) as backend:
        rows = queries.list_jobs(backend, limit=1000)
    return sum(row.status in ("completed", "cancelled", "dead_lettered") for row in rows) >= count


def wait_for_dashboard(url: str, process: subprocess.Popen[bytes], log: Path, within_s: float = 30) -> None:
    """Until the dashboard at `url` answers (its process must stay up meanwhile: else its log)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            urllib.request.urlopen(url + "/static/dashboard.css", timeout=2).close()
            return
        except OSError:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the dashboard did not answer within {within_s:.0f} s"
            time.sleep(0.2)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("dashboard")
    namespace = f"w{uuid.uuid4().hex[:12]}"
    settings = Settings(kafka_bootstrap=kafka_bootstrap, namespace=namespace, topics_dir=ROOT / "topics",
                        state_dir=home / "state")
    in_thread(lambda: apply_topics(settings, QUEUES))
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "EVENTJOBS_NAMESPACE": namespace,
           "EVENTJOBS_STATE_DIR": str(settings.state_dir)}
    env.pop("EVENTJOBS_DASHBOARD_TOKEN", None)
    processes = [
        _spawn(["processor", "--app", DEMO_APP, "--project"], env, home / "processor.log"),
        _spawn(["worker", "--app", DEMO_APP, "--queues", ",".join(QUEUES), "--concurrency", "20"], env,
               home / "worker.log"),
    ]
    port = free_port()
    processes.append(_spawn(["dashboard", "--app", DEMO_APP, "--port", str(port)], env, home / "dashboard.log"))
    try:
        roles, states = run(_enqueue_and_finish, settings)
        deadline = time.monotonic() + 60
        while not _projected(settings, len(roles)):
            assert time.monotonic() < deadline, "the projector did not catch up within 60 s"
            time.sleep(0.3)
        url = f"http://127.0.0.1:{port}"
        wait_for_dashboard(url, processes[-1], home / "dashboard.log")
        yield Stack(settings, url, states, roles, processes)
    finally:
        _stop(processes)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = require_tool("chromium", CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    context = browser.new_context(base_url=stack.url, viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
