"""The dashboard in real headless Chromium (Debian's, driven by Playwright) against a real stack:
every page renders with data, a chart has points, the projector's lag shows per partition, Retry really retries a dead-lettered job,
pausing a queue really stops claims, and a page under a rebound DNS name or another site's form
gets nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from eventjobs import App
from eventjobs.core.state import JobStatus
from tests.e2e.conftest import job_events
from tests.support.event_log import end_offsets
from tests.support.tools import CHROMIUM, require_tool
from tests.web.conftest import Stack, in_thread, run

pytestmark = pytest.mark.kafka


def test_every_page_renders_with_data(page: Any, stack: Stack) -> None:
    dead, flaky = stack.job("dead"), stack.job("flaky")

    page.goto("/")
    depth = page.locator("#queue-depth")
    assert depth.is_visible()
    percentiles = page.locator("#percentiles tbody")
    assert percentiles.locator("tr", has_text="emails").count() == 1
    assert percentiles.locator("tr", has_text="default").count() == 1
    assert page.locator("#by-name tbody tr", has_text="sync_inventory").count() == 1
    assert "newest projected event" in page.locator("#freshness").inner_text()
    dead_lettered = {job_id for job_id, state in stack.states.items() if state.status == JobStatus.DEAD_LETTERED}
    assert dead in dead_lettered  # with the refunded order (a Cancel marker fails it at once)
    assert int(page.locator("#dead-count").inner_text()) == len(dead_lettered)

    page.goto("/jobs")
    ids = page.locator("#jobs tbody td.id").all_inner_texts()
    assert set(stack.roles) <= set(ids)
    page.goto("/jobs?name=charge_card")
    assert page.locator("#jobs tbody tr").count() == 2
    assert set(page.locator("#jobs tbody td:nth-child(2)").all_inner_texts()) == {"charge_card"}
    page.goto("/jobs?status=dead_lettered")
    assert set(page.locator("#jobs tbody td.id").all_inner_texts()) == dead_lettered
    page.goto('/jobs?args="amount": 20')
    assert page.locator("#jobs tbody tr").count() == 1

    page.goto(f"/jobs/{dead}")
    assert page.locator("#job-status").inner_text() == "dead_lettered"
    timeline = page.locator("#timeline tbody")
    assert timeline.locator("tr.attempt_failed").count() == 3
    assert timeline.locator("tr.dead_lettered").count() == 1
    assert "warehouse API rejected SKU SKU-DEAD" in timeline.locator("tr.attempt_failed").first.inner_text()
    assert "worker:" in timeline.locator("tr.attempt_started td.actor").first.inner_text()  # the start claims
    failed = timeline.locator("tr.attempt_failed").first
    failed.locator("details summary").click()  # the traceback opens in place
    assert "RuntimeError: warehouse API rejected" in failed.locator("details pre").inner_text()
    page.goto(f"/jobs/{flaky}")
    assert page.locator("#job-status").inner_text() == "completed"
    assert page.locator("#timeline tr.retry_scheduled").count() == 2

    page.goto("/dead-letters")
    row = page.locator(f'#dead-letters tr[data-job-id="{dead}"]')
    assert "RuntimeError: warehouse API rejected SKU SKU-DEAD" in row.inner_text()

    page.goto("/workers")
    worker = page.locator("#workers tbody tr").first
    assert "alive" in worker.inner_text() and "default, emails" in worker.inner_text()

    page.goto("/queues")
    for queue in ("default", "emails"):
        assert page.locator(f'#queues tr[data-queue="{queue}"] .state').inner_text() == "active"


def test_a_chart_has_points(page: Any, stack: Stack) -> None:
    page.goto("/")
    page.wait_for_function("window.eventjobsCharts && window.eventjobsCharts.throughput")
    finished = sum(state.status in (JobStatus.COMPLETED, JobStatus.DEAD_LETTERED) for state in stack.states.values())
    drawn = page.evaluate("window.eventjobsCharts.throughput.data[1].reduce((a, b) => a + b, 0)")
    enqueued = page.evaluate("window.eventjobsCharts.throughput.data[2].reduce((a, b) => a + b, 0)")
    assert drawn == finished
    assert enqueued == len(stack.roles)
    rates = page.evaluate("window.eventjobsCharts.failures.data[1].filter((v) => v !== null)")
    assert rates and max(rates) > 0  # charge_card and sync_inventory failed attempts
    assert page.locator("#chart-throughput canvas").count() == 1


def test_retry_button_runs_a_dead_lettered_job_again(page: Any, stack: Stack) -> None:
    dead = stack.job("dead")
    page.goto("/dead-letters")
    page.locator(f'#dead-letters tr[data-job-id="{dead}"] button.retry').click()
    page.wait_for_url("**/dead-letters?notice=*")
    assert f"job {dead} retried" in page.locator(".notice").inner_text()

    deadline = time.monotonic() + 30
    while True:
        types = [event.type for event in in_thread(lambda: job_events(stack.settings, dead))]
        retried_at = types.index("dead_letter_retried") if "dead_letter_retried" in types else None
        if retried_at is not None and "attempt_started" in types[retried_at:]:
            break  # the retry is on the log, and the job ran again after it
        assert time.monotonic() < deadline, f"no new attempt after the retry: {types}"
        time.sleep(0.3)


def test_the_overview_shows_the_projector_lag_per_partition(page: Any, stack: Stack) -> None:
    # Given the stack's jobs projected (the processor appends transactionally: markers end the partitions)
    partitions = sorted(in_thread(lambda: end_offsets(stack.settings)))
    # When the overview is shown, Then there is a row per partition of the event log, and once the
    # projector reported after catching up, every one is caught up: 0 records behind, no lag
    deadline = time.monotonic() + 30
    while True:
        page.goto("/")
        rows = page.locator("#projector-lag tbody tr[data-partition]")
        shown = [int(p) for p in (rows.nth(i).get_attribute("data-partition") for i in range(rows.count())) if p]
        behind = page.locator("#projector-lag td.behind").all_inner_texts()
        if shown == partitions and set(behind) == {"0"}:
            break
        assert time.monotonic() < deadline, f"partitions {shown} (of {partitions}) with records behind {behind}"
        time.sleep(0.5)
    assert set(page.locator("#projector-lag td.lag").all_inner_texts()) == {"0 ms"}
    assert page.locator("#projector-lag tr.behind").count() == 0
    assert page.locator("#lag").inner_text() == "0"  # the freshness card agrees, past the markers
    note = page.locator("#projector-lag-note").inner_text()
    assert "Reported by the projector" in note and "measured against the log's end now" in note
    assert "not reporting" not in note


def test_a_page_refreshes_its_data_in_place(page: Any, stack: Stack) -> None:
    page.goto("/jobs?name=send_receipt")
    page.evaluate("window.loadedOnce = true")  # gone if the page were loaded again
    job_id = run(lambda app: app.enqueue("send_receipt", {"order": 4242}), stack.settings)
    page.locator(f'#jobs td.id a[href="/jobs/{job_id}"]').wait_for(timeout=15_000)
    assert page.evaluate("window.loadedOnce") is True


def test_pausing_a_queue_in_the_ui_stops_claims(page: Any, stack: Stack) -> None:
    page.goto("/queues")
    row = page.locator('#queues tr[data-queue="emails"]')
    row.locator("input[name=reason]").fill("mail server maintenance")
    row.locator("button.pause").click()
    page.wait_for_url("**/queues?notice=*")
    assert page.locator('#queues tr[data-queue="emails"] .state').inner_text() == "paused"
    assert "mail server maintenance" in page.locator('#queues tr[data-queue="emails"]').inner_text()
    time.sleep(3.0)  # workers follow the queue-control topic within about a second

    job_id = run(lambda app: app.enqueue("send_receipt", {"order": 999}), stack.settings)

    async def not_claimed_for(app: App, seconds: float) -> list[str]:
        await asyncio.sleep(seconds)
        return [e.type for e in await job_events(app.settings, job_id)]

    types = run(lambda app: not_claimed_for(app, 4.0), stack.settings)
    assert "enqueued" in types and "claimed" not in types and "attempt_started" not in types, types

    page.goto("/queues")
    page.locator('#queues tr[data-queue="emails"] button.resume').click()
    page.wait_for_url("**/queues?notice=*")
    assert page.locator('#queues tr[data-queue="emails"] .state').inner_text() == "active"
    state = run(lambda app: app.wait(job_id, timeout=30), stack.settings)
    assert state.status == JobStatus.COMPLETED


def test_a_rebound_dns_name_and_another_sites_form_are_refused_in_a_real_browser(browser: Any, stack: Stack) -> None:
    # Given Chromium resolving a foreign name to 127.0.0.1, as after a DNS-rebinding attack
    port = urlsplit(stack.url).port
    rebinding = browser.browser_type.launch(
        executable_path=require_tool("chromium", CHROMIUM), headless=True,
        args=["--no-sandbox", "--host-resolver-rules=MAP rebound.example 127.0.0.1"])
    try:
        page = rebinding.new_page()
        # When a page under that name asks the dashboard for a page, it gets no data
        answer = page.goto(f"http://rebound.example:{port}/jobs")
        assert answer is not None and answer.status == 400
        assert "does not answer to the host name" in page.content()
        assert stack.job("dead") not in page.content()
        # And when another site's page submits a form to the dashboard's own address
        dead = stack.job("dead")
        page.route("http://evil.example/**", lambda route: route.fulfill(content_type="text/html", body=(
            f'<form method="post" action="{stack.url}/actions/dead-letters/retry">'
            f'<input name="job_id" value="{dead}"></form><script>document.forms[0].submit()</script>')))
        with page.expect_navigation(url=f"{stack.url}/actions/dead-letters/retry") as navigation:
            page.goto("http://evil.example/")
        refused = navigation.value
        # Then the browser named that site and the dashboard refused it, with one clear line
        assert refused is not None and refused.status == 403
        assert "was sent from another site (Origin 'http://evil.example')" in page.inner_text("body")
    finally:
        rebinding.close()
