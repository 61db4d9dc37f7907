"""Queue pause and resume against the real broker: workers stop taking a paused queue's jobs
within about a second (buffered ones included), the pause holds across a worker restart (the
worker in its own process), resume lets them run; and every error path of `eventjobs queues`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

from eventjobs.core.state import JobStatus
from eventjobs.settings import Settings
from tests.e2e.conftest import Runtime, spawn, wait_for_status
from tests.support.cli import run_cli


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, settings=settings, env=env, timeout=60)


async def stays(runtime: Runtime, job_id: str, status: JobStatus, seconds: float) -> None:
    """The job keeps `status` for `seconds` (it is never claimed meanwhile)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        state = await runtime.app.state(job_id)
        assert state is not None and state.status is status, state
        await asyncio.sleep(0.1)


async def test_a_pause_holds_across_a_worker_restart_and_resume_runs_the_jobs(
    runtime: Runtime, tmp_path: Path, processes: list[subprocess.Popen[bytes]],
) -> None:
    settings = runtime.app.settings

    def start_worker(name: str) -> subprocess.Popen[bytes]:
        process = spawn(["worker", "--app", "tests.support.jobs_app:app", "--queues", "default", "--worker-id", name],
                        settings, tmp_path / f"{name}.log")
        processes.append(process)
        return process

    first = start_worker("w1")
    warmup = await runtime.app.enqueue("add", {"a": 1, "b": 1})  # the worker runs jobs of the queue
    assert (await runtime.app.wait(warmup, timeout=60)).status is JobStatus.COMPLETED

    paused = cli(settings, "queues", "pause", "default", "--reason", "database migration", "--json")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    await asyncio.sleep(1.0)  # the pause takes effect within about a second
    held = await runtime.app.enqueue("add", {"a": 2, "b": 3})
    await wait_for_status(runtime, held, JobStatus.PENDING)
    await stays(runtime, held, JobStatus.PENDING, 2.0)

    # the worker restarts (SIGTERM, a new process): the queue is still paused for it
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    start_worker("w2")
    deadline = asyncio.get_running_loop().time() + 30
    while not any(w.worker_id == "w2" and w.presence == "alive" for w in await runtime.app.workers()):
        assert asyncio.get_running_loop().time() < deadline, "the restarted worker never announced itself"
        await asyncio.sleep(0.2)
    await stays(runtime, held, JobStatus.PENDING, 2.5)

    listed = cli(settings, "queues", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [default] = [q for q in json.loads(listed.stdout) if q["queue"] == "default"]
    assert default["paused"] is True and default["reason"] == "database migration"

    resumed = cli(settings, "queues", "resume", "default")
    assert resumed.returncode == 0 and "resumed queue default" in resumed.stdout, resumed.stderr
    state = await runtime.app.wait(held, timeout=15)
    assert state.status is JobStatus.COMPLETED and state.result == {"sum": 5} and state.worker_id == "w2"


async def test_buffered_jobs_of_a_paused_queue_are_not_started_and_run_after_resume(runtime: Runtime) -> None:
    app = runtime.app
    gate = asyncio.Event()  # the jobs run until the test opens it

    @app.job(queue="default")
    async def held(args: dict[str, object]) -> None:
        await gate.wait()

    # one slot: while one job holds it, the others wait in the worker's buffer
    worker = await runtime.start_worker(concurrency=1)
    jobs = [await app.enqueue("held", {"n": n}) for n in range(4)]
    deadline = asyncio.get_running_loop().time() + 30
    while not worker.running or sum(len(b) for b in worker.buffers.values()) < 3:
        assert asyncio.get_running_loop().time() < deadline, "the jobs never reached the worker"
        await asyncio.sleep(0.05)
    [(running, _)] = worker.running.values()

    await app.pause_queue("default", "test")
    await asyncio.sleep(1.0)  # the pause takes effect within about a second
    assert not any(worker.buffers.values())  # the buffered ones were put back (fetched again on resume)
    gate.set()  # the running job ends; with the queue running, the next would start at once
    assert (await app.wait(running.job_id, timeout=30)).status is JobStatus.COMPLETED
    for job in jobs:
        if job != running.job_id:
            await stays(runtime, job, JobStatus.PENDING, 0.5)

    await app.resume_queue("default")
    for job in jobs:
        state = await app.wait(job, timeout=30)
        assert state.status is JobStatus.COMPLETED and state.attempts_started == 1  # each ran once


async def test_queue_command_errors_are_one_line_with_an_exit_code(runtime: Runtime) -> None:
    settings = runtime.app.settings

    unknown = cli(settings, "queues", "pause", "nosuchqueue")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        f"error: queue 'nosuchqueue' is not known in namespace '{settings.namespace}'; known queues: default, render "
        "(the app's job queues, queues with ready topics, queues paused before)"]

    missing = cli(settings, "queues", "pause")
    assert missing.returncode == 2 and "Missing argument 'QUEUE'" in missing.stderr

    bad_namespace = cli(settings, "queues", "list", "--namespace", "no such!")
    assert bad_namespace.returncode == 1
    assert bad_namespace.stderr.strip().splitlines() == [
        "error: invalid Settings: namespace: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_-]{0,48}$' "
        "(got 'no such!')"]

    absent = cli(settings, "queues", "resume", "default", "--namespace", "neverappliedns")
    assert absent.returncode == 1 and len(absent.stderr.strip().splitlines()) == 1
    assert "namespace 'neverappliedns' has no topics (neverappliedns.events does not exist)" in absent.stderr

    down = cli(settings, "queues", "pause", "default", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1
    assert down.stderr.startswith("error: Kafka at 127.0.0.1:1 failed") or "cannot reach Kafka at 127.0.0.1:1" in down.stderr

    # nothing of the failed commands was written: the queue list shows no change
    listed = cli(settings, "queues", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {q["queue"]: q["changed_at"] for q in json.loads(listed.stdout)} == {"default": None, "render": None}
