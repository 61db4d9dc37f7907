"""The worker registry against the real broker: a worker announces itself with its busy slots,
says goodbye when stopped, and a killed worker (its own process, SIGKILL) shows as gone."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventjobs import App
from eventjobs.core.control import WorkerStatus
from eventjobs.core.state import JobStatus
from eventjobs.kafka.admin import apply_topics
from eventjobs.settings import Settings
from tests.e2e.conftest import QUEUES, Runtime, built_app, processor_runtime, spawn
from tests.support.cli import run_cli

HEARTBEAT_S = 0.5  # the workers of these tests announce themselves twice a second; gone after 1.5 s


@pytest.fixture
async def quick_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """The in-process processor, with an app whose workers heartbeat every HEARTBEAT_S."""
    async with built_app(settings, worker_heartbeat_s=HEARTBEAT_S) as app, processor_runtime(app) as rt:
        yield rt


async def until(app: App, check: str, predicate: object, timeout: float = 20) -> list[WorkerStatus]:
    """Poll `app.workers()` until `predicate(workers)` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    found: list[WorkerStatus] = []
    while asyncio.get_running_loop().time() < deadline:
        found = await app.workers()
        if predicate(found):  # type: ignore[operator]
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"never saw {check}; last: {found}")


async def test_a_worker_announces_itself_reports_busy_slots_and_says_goodbye(quick_runtime: Runtime) -> None:
    app = quick_runtime.app
    worker = await quick_runtime.start_worker(worker_id="registry-w1", concurrency=3, queues=["default"])

    [me] = await until(app, "the worker", lambda ws: len(ws) == 1)
    assert (me.worker_id, me.presence, me.state) == ("registry-w1", "alive", "running")
    assert me.queues == ("default",) and me.concurrency == 3 and me.pid == os.getpid() and me.heartbeat_s == HEARTBEAT_S
    assert me.started_at <= me.last_seen

    job_id = await app.enqueue("sleepy", {"seconds": 3})
    busy = await until(app, "a busy slot", lambda ws: ws and ws[0].busy == 1)
    assert busy[0].last_seen > me.last_seen  # heartbeats move last_seen on
    assert (await app.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
    await until(app, "the slot free again", lambda ws: ws and ws[0].busy == 0)

    quick_runtime.stop.set()  # a clean stop: the goodbye record
    await asyncio.wait_for(asyncio.gather(*quick_runtime.tasks), 30)
    quick_runtime.tasks.clear()
    [gone] = await app.workers()
    assert (gone.presence, gone.state, gone.busy) == ("stopped", "stopped", 0)
    assert worker.registry is not None and worker.registry.failures == 0


async def test_killed_worker_shows_as_gone_and_stopped_one_as_stopped_from_the_cli(
    settings: Settings, tmp_path: Path, processes: list[subprocess.Popen[bytes]],
) -> None:
    await apply_topics(settings, QUEUES)
    env = {"EVENTJOBS_WORKER_HEARTBEAT": str(HEARTBEAT_S)}
    for name in ("killed", "stopped"):
        processes.append(spawn(["worker", "--app", "tests.support.jobs_app:app", "--worker-id", name],
                               settings, tmp_path / f"{name}.log", **env))

    def listed() -> dict[str, dict[str, object]]:
        result = run_cli("workers", "--json", settings=settings, timeout=60)
        assert result.returncode == 0, result.stderr
        return {w["worker_id"]: w for w in json.loads(result.stdout)}

    async def wait_for(presences: dict[str, str], timeout: float = 40) -> dict[str, dict[str, object]]:
        deadline = asyncio.get_running_loop().time() + timeout
        seen: dict[str, dict[str, object]] = {}
        while asyncio.get_running_loop().time() < deadline:
            seen = listed()
            if {k: v["presence"] for k, v in seen.items()} == presences:
                return seen
            await asyncio.sleep(0.3)
        raise AssertionError(f"wanted {presences}, saw {seen}; logs: "
                             + " | ".join((tmp_path / f"{n}.log").read_text()[-500:] for n in ("killed", "stopped")))

    alive = await wait_for({"killed": "alive", "stopped": "alive"})
    assert alive["killed"]["pid"] == processes[0].pid and alive["killed"]["queues"] == ["default", "render"]

    processes[0].send_signal(signal.SIGKILL)
    processes[1].send_signal(signal.SIGTERM)
    assert processes[1].wait(timeout=30) == 0
    final = await wait_for({"killed": "gone", "stopped": "stopped"})
    assert final["killed"]["state"] == "running"  # it never said goodbye: gone by silence

    table = run_cli("workers", settings=settings, timeout=60)
    assert table.returncode == 0 and "2 worker(s), 0 alive" in table.stdout


def test_workers_command_errors_are_one_line_with_an_exit_code(settings: Settings) -> None:
    cases = [
        (("--namespace", "no such!"), {}, "error: invalid Settings: namespace: String should match pattern"),
        (("--namespace", "neverappliedns"), {}, "error: namespace 'neverappliedns' has no topics"),
        ((), {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "error: Kafka at 127.0.0.1:1 failed"),
    ]
    for args, env, message in cases:
        result = run_cli("workers", *args, settings=settings, env=env, timeout=60)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(message), result.stderr
        assert result.stdout == ""
