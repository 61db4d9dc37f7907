"""Screenshots of every dashboard page on the demo's real data, for docs/operations.md.

Runs `eventjobs demo --serve` (with a fresh state directory), opens each page in headless
Chromium (Debian's /usr/bin/chromium, through Playwright), saves `docs/dashboard/<page>.png`,
then stops the demo with SIGINT. Before the screenshots it keeps enqueuing a mix of the demo's
jobs for a few minutes (`--minutes`, default 4), so the charts have more than one minute to show.
Uses the broker at KAFKA_BOOTSTRAP_SERVERS when it is set, otherwise the demo starts the local one.

    .venv/bin/python docs/dashboard/make_screenshots.py [--minutes 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, demo: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if demo.poll() is not None:
            raise SystemExit(f"the demo exited with code {demo.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the dashboard did not answer at {url}")


async def trickle(bootstrap: str, minutes: float) -> None:
    """A mix of the demo's jobs every few seconds: mostly receipts, some flaky charges and failures."""
    from eventjobs import App
    from eventjobs.dev.demo import app as demo
    from eventjobs.settings import load_settings

    app = App("demo", settings=load_settings(kafka_bootstrap=bootstrap, namespace="demo"))
    app.jobs = demo.jobs
    rng = random.Random(7)
    try:
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            for _ in range(rng.randint(4, 14)):
                await app.enqueue("send_receipt", {"order": rng.randint(1000, 9999)})
            if rng.random() < 0.6:
                await app.enqueue("charge_card", {"amount": rng.randint(5, 90)})
            if rng.random() < 0.15:
                await app.enqueue("sync_inventory", {"sku": f"SKU-{rng.randint(10, 99)}"})
            await asyncio.sleep(5)
    finally:
        await app.close()


def shoot(page: Page, path: str, name: str) -> None:
    page.goto(path)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(HERE / f"{name}.png"), full_page=True)
    print(f"docs/dashboard/{name}.png  <- {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="how long to enqueue more jobs first")
    minutes = parser.parse_args().minutes
    port = free_port()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    with tempfile.TemporaryDirectory() as state:
        command = [sys.executable, "-m", "eventjobs.cli", "demo", "--serve", "--dashboard-port", str(port)]
        if bootstrap:
            command += ["--bootstrap", bootstrap]
        demo = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "EVENTJOBS_STATE_DIR": state}, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(base + "/dead-letters", demo)
            if minutes > 0:
                print(f"enqueuing more of the demo's jobs for {minutes:g} minute(s) ...", flush=True)
                asyncio.run(trickle(bootstrap or "127.0.0.1:9092", minutes))
            time.sleep(5)  # the projector catches up with the last derived events
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                                     args=["--no-sandbox"])
                page = browser.new_page(base_url=base, viewport={"width": 1400, "height": 900})
                shoot(page, "/?window=15m", "overview")
                shoot(page, "/jobs", "jobs")
                page.goto("/jobs?name=sync_inventory&status=dead_lettered")
                first = page.locator("#jobs tbody td.id a").first
                job_path = first.get_attribute("href") or "/jobs"
                page.goto(job_path)
                page.locator("#timeline tr.attempt_failed details summary").first.click()
                page.screenshot(path=str(HERE / "job.png"), full_page=True)
                print(f"docs/dashboard/job.png  <- {job_path}")
                shoot(page, "/dead-letters", "dead-letters")
                shoot(page, "/workers", "workers")
                page.goto("/queues")
                row = page.locator('#queues tr[data-queue="emails"]')
                row.locator("input[name=reason]").fill("mail provider maintenance")
                row.locator("button.pause").click()
                page.wait_for_url("**/queues?notice=*")
                page.screenshot(path=str(HERE / "queues.png"), full_page=True)
                print("docs/dashboard/queues.png  <- /queues (emails paused)")
                page.locator('#queues tr[data-queue="emails"] button.resume').click()
                page.wait_for_url("**/queues?notice=*")
                browser.close()
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=90)


if __name__ == "__main__":
    main()
