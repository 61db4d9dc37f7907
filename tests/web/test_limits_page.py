"""The dashboard's view of concurrency limits in real headless Chromium, against a real stack:
processor (with the projector), worker and dashboard as subprocesses of one namespace, running
jobs of a limited key while more of them wait.

The jobs live in `build_app`; the subprocesses load it as `--app tests.web.test_limits_page:app`.
A handler holds its slot until the file named by LIMITS_GATE_FILE exists, so the test decides
when the running jobs finish."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventjobs import App, Limit
from eventjobs.core.state import JobStatus
from eventjobs.dev.broker import free_port
from eventjobs.kafka.admin import apply_topics
from eventjobs.settings import Settings
from tests.web.conftest import ROOT, _spawn, _stop, in_thread, wait_for_dashboard

pytestmark = pytest.mark.kafka

APP = "tests.web.test_limits_page:app"
GATE_ENV = "LIMITS_GATE_FILE"


def build_app(namespace: str, **settings: Any) -> App:
    application = App(namespace, **settings)

    @application.job(queue="default", concurrency=Limit(key=lambda args: args["tenant"], max=2))
    async def sync_tenant(args: dict[str, Any]) -> dict[str, Any]:
        gate = os.environ.get(GATE_ENV)
        for _ in range(1200 if gate else 0):  # at most 2 minutes
            if await asyncio.to_thread(os.path.exists, gate or ""):
                break
            await asyncio.sleep(0.1)
        return {"tenant": args["tenant"]}

    return application


app = build_app(os.environ.get("EVENTJOBS_NAMESPACE", "weblimits"))


@dataclass
class Stack:
    settings: Settings
    url: str
    gate: Path
    busy: list[str]  # the jobs of tenant t-1, in enqueue order
    quiet: str  # the one job of tenant t-2


async def _enqueue_and_wait(settings: Settings) -> tuple[list[str], str]:
    """Five jobs of t-1 (two run, three wait for a slot) and one of t-2 (runs); returns their ids."""
    application = build_app(settings.namespace, settings=settings)
    try:
        busy = [await application.enqueue("sync_tenant", {"tenant": "t-1", "n": n}) for n in range(5)]
        quiet = await application.enqueue("sync_tenant", {"tenant": "t-2", "n": 5})
        deadline = time.monotonic() + 60
        while True:
            states = [await application.state(job_id) for job_id in [*busy, quiet]]
            statuses = [s.status if s is not None else None for s in states]
            if (sorted(s.value for s in statuses[:5] if s is not None) == ["running"] * 2 + ["waiting"] * 3
                    and statuses[5] is JobStatus.RUNNING):
                return busy, quiet
            assert time.monotonic() < deadline, f"the jobs did not settle within 60 s: {statuses}"
            await asyncio.sleep(0.2)
    finally:
        await application.close()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Overrides the demo stack of conftest, so its `page` fixture opens this dashboard."""
    home = tmp_path_factory.mktemp("limits-dashboard")
    namespace = f"w{uuid.uuid4().hex[:12]}"
    settings = Settings(kafka_bootstrap=kafka_bootstrap, namespace=namespace, topics_dir=ROOT / "topics",
                        state_dir=home / "state")
    in_thread(lambda: apply_topics(settings, ["default", "emails"]))
    gate = home / "gate"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "EVENTJOBS_NAMESPACE": namespace,
           "EVENTJOBS_STATE_DIR": str(settings.state_dir), GATE_ENV: str(gate)}
    env.pop("EVENTJOBS_DASHBOARD_TOKEN", None)
    port = free_port()
    processes = [
        _spawn(["processor", "--app", APP, "--project"], env, home / "processor.log"),
        _spawn(["worker", "--app", APP, "--queues", "default", "--concurrency", "8"], env, home / "worker.log"),
        _spawn(["dashboard", "--app", APP, "--port", str(port)], env, home / "dashboard.log"),
    ]
    try:
        busy, quiet = in_thread(lambda: _enqueue_and_wait(settings))
        url = f"http://127.0.0.1:{port}"
        wait_for_dashboard(url, processes[-1], home / "dashboard.log")
        yield Stack(settings, url, gate, busy, quiet)
    finally:
        gate.touch()
        _stop(processes)


def _row(page: Any, limit: str, key: str) -> Any:
    return page.locator(f'#limits tr[data-limit="{limit}"][data-key="{key}"]')


def test_the_queue_page_shows_each_keys_slots_and_waiting_jobs_and_the_job_page_why_a_job_waits(
        page: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    # Given two jobs of tenant t-1 running, three waiting for its slots, and one of t-2 running
    # Then the queues page shows both keys, the busiest first (the page refreshes itself while
    # the projector catches up)
    page.goto("/queues")
    busy, quiet = _row(page, "sync_tenant", "t-1"), _row(page, "sync_tenant", "t-2")
    expect(busy.locator(".waiting")).to_have_text("3", timeout=45_000)
    expect(quiet.locator(".in-use")).to_have_text("1 / 2", timeout=15_000)
    assert busy.locator(".in-use").inner_text() == "2 / 2"
    assert quiet.locator(".waiting").inner_text() == "0"
    assert busy.locator(".rate").inner_text() == "—"  # a limit without a rate
    assert page.locator("#limits tbody tr").first.get_attribute("data-key") == "t-1"

    # and restricted to a queue: the keys its jobs asked for, or the empty state
    page.goto("/queues?queue=default")
    assert page.locator("#limits tbody tr").count() == 2
    page.goto("/queues?queue=emails")
    assert page.locator("#limits tbody tr").inner_text().strip() == "no job of queue emails has a concurrency limit"

    # and each waiting job's page says which key it waits for and where it stands
    positions = set()
    for job_id in stack.busy:
        page.goto(f"/jobs/{job_id}")
        status = page.locator("#job-status").inner_text()
        wait = page.locator("#slot-wait")
        if status == "running":
            assert wait.count() == 0
            continue
        assert status == "waiting"
        text = " ".join(wait.inner_text().split())
        assert text.startswith("limit sync_tenant key t-1: position "), text
        assert text.endswith("of 3; 2 of 2 slots in use (limits)"), text
        positions.add(int(text.split("position ")[1].split(" ")[0]))
    assert positions == {1, 2, 3}

    # When the running jobs may finish, Then every job of the key runs and the page shows its
    # slots free again
    stack.gate.touch()
    page.goto("/queues")
    expect(busy.locator(".waiting")).to_have_text("0", timeout=60_000)
    expect(busy.locator(".in-use")).to_have_text("0 / 2", timeout=30_000)  # (a grant and a release may be
    # projected in either order: the page may show one step ahead of another meanwhile)
    expect(quiet.locator(".in-use")).to_have_text("0 / 2", timeout=15_000)
    page.goto(f"/jobs/{stack.busy[-1]}")
    expect(page.locator("#job-status")).to_have_text("completed", timeout=15_000)
    assert page.locator("#slot-wait").count() == 0
