"""Crashes in separate processes: SIGKILL of a worker mid-job, of a processor under load, and a
processor paused (SIGSTOP) past its session timeout that must not commit when it wakes up."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from subprocess import Popen

from eventjobs import App
from eventjobs.core.events import is_claim
from eventjobs.core.fold import fold
from eventjobs.core.options import ConstantBackoff
from eventjobs.core.state import JobStatus
from eventjobs.settings import Settings
from tests.e2e.conftest import Runtime, job_events, spawn, wait_for_status

APP = "tests.support.jobs_app:app"


async def _wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_worker_killed_mid_job_is_rerun_elsewhere(runtime: Runtime, tmp_path: Path,
                                                        processes: list[Popen[bytes]]) -> None:
    app = runtime.app
    doomed = spawn(["worker", "--app", APP, "--lease", "2s", "--worker-id", "doomed"], app.settings, tmp_path / "w1.log")
    processes.append(doomed)
    job_id = await app.enqueue("sleepy", {"seconds": 4})
    await wait_for_status(runtime, job_id, JobStatus.RUNNING, timeout=60)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)

    rescuer = spawn(["worker", "--app", APP, "--lease", "2s", "--worker-id", "rescuer"], app.settings, tmp_path / "w2.log")
    processes.append(rescuer)
    state = await app.wait(job_id, timeout=60)
    assert state.status is JobStatus.COMPLETED and state.worker_id == "rescuer"
    events = await job_events(app.settings, job_id)
    types = [e.type for e in events]
    assert types.count("lease_expired") == 1 and types.count("completed") == 1
    claims = [(e.attempt, e.worker_id) for e in events if is_claim(e)]
    assert claims[0] == (0, "doomed") and (1, "rescuer") in claims  # a redelivered attempt-0 claim is refused


async def _final_states_match_the_fold(settings: Settings, app: App, job_ids: list[str]) -> Counter[str]:
    events = await job_events(settings)
    folded = fold(events)
    for job_id in job_ids:
        live = await app.state(job_id)
        assert live is not None, job_id
        assert folded[job_id].model_dump(exclude={"recent_event_ids"}) == live.model_dump(exclude={"recent_event_ids"})
    return Counter(e.job_id for e in events if e.type == "completed")


async def test_processor_killed_under_load_resumes_to_the_same_state(app: App, tmp_path: Path,
                                                                     processes: list[Popen[bytes]]) -> None:
    settings = app.settings
    first = spawn(["processor", "--app", APP, "--max-batch", "50"], settings, tmp_path / "p1.log")
    processes.append(first)
    worker = spawn(["worker", "--app", APP, "--concurrency", "20"], settings, tmp_path / "w.log")
    processes.append(worker)
    events = [app._build_enqueue("add", {"a": i, "b": 1}) for i in range(1500)]
    events += [app._build_enqueue("flaky", {"fail_times": 1}, backoff=ConstantBackoff(delay_s=0.2)) for _ in range(100)]
    job_ids = [e.job_id for e in events]
    for start in range(0, len(events), 100):
        await app.writer.append(events[start:start + 100])
        if start == 800:
            await asyncio.sleep(0.5)
            os.kill(first.pid, signal.SIGKILL)  # mid-stream, with transactions in flight
            first.wait(timeout=10)
            processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p2.log"))
    for job_id in job_ids:
        state = await app.wait(job_id, timeout=120)
        assert state.status is JobStatus.COMPLETED, state
    await asyncio.sleep(1.0)
    completed = await _final_states_match_the_fold(settings, app, job_ids)
    assert all(completed[job_id] == 1 for job_id in job_ids), "a job completed twice in effect"


async def test_paused_processor_is_fenced_when_it_wakes_up(app: App, tmp_path: Path,
                                                           processes: list[Popen[bytes]]) -> None:
    settings = app.settings
    zombie = spawn(["processor", "--app", APP], settings, tmp_path / "zombie.log")
    processes.append(zombie)
    worker = spawn(["worker", "--app", APP, "--concurrency", "10"], settings, tmp_path / "w.log")
    processes.append(worker)
    warm = await app.enqueue("add", {"a": 1, "b": 1})
    await app.wait(warm, timeout=60)

    os.kill(zombie.pid, signal.SIGSTOP)  # stalls with its partitions
    batch = [app._build_enqueue("add", {"a": i, "b": 2}) for i in range(200)]
    await app.writer.append(batch)
    successor = spawn(["processor", "--app", APP], settings, tmp_path / "successor.log")
    processes.append(successor)
    for event in batch:  # the successor takes over after the zombie's session times out (10 s)
        assert (await app.wait(event.job_id, timeout=90)).status is JobStatus.COMPLETED

    os.kill(zombie.pid, signal.SIGCONT)  # wakes up believing it still owns its partitions
    more = [app._build_enqueue("add", {"a": i, "b": 3}) for i in range(100)]
    await app.writer.append(more)
    for event in more:
        assert (await app.wait(event.job_id, timeout=90)).status is JobStatus.COMPLETED
    await asyncio.sleep(3)
    job_ids = [warm] + [e.job_id for e in batch + more]
    completed = await _final_states_match_the_fold(settings, app, job_ids)
    assert all(completed[job_id] == 1 for job_id in job_ids)
    # Waking up, the zombie either tries to commit what it folded first and finds its producers
    # fenced (it stops), or first hears from the group coordinator that its partitions went
    # elsewhere (it releases them, rejoins and restores what it gets from the changelog). Both
    # are safe; committing from its stale memory is what must never happen, and the equal
    # states and single completions above show that it did not.
    assert successor.poll() is None, (tmp_path / "successor.log").read_text()[-3000:]  # undisturbed
    log_path = tmp_path / "zombie.log"
    await _wait_for(lambda: _stopped_or_rejoined(zombie, log_path), timeout=60, what="the zombie to stop or rejoin")
    zombie_log = log_path.read_text()
    if zombie.poll() is not None:
        assert zombie.returncode == 1, zombie_log[-3000:]
        assert "is owned by another processor" in zombie_log, zombie_log[-3000:]
        assert "exception was never retrieved" not in zombie_log, zombie_log[-3000:]  # reported once, as the cause
    else:
        zombie.send_signal(signal.SIGTERM)  # a member again, it stops cleanly like any other
        assert zombie.wait(timeout=60) == 0, log_path.read_text()[-3000:]


async def _stopped_or_rejoined(process: Popen[bytes], log_path: Path) -> bool:
    if process.poll() is not None:
        return True
    lines = log_path.read_text().splitlines()
    released = [i for i, line in enumerate(lines) if "released partition" in line]
    return bool(released) and any("owns partition" in line for line in lines[released[0]:])


async def test_timers_survive_a_processor_kill_and_fire_once_in_effect(app: App, tmp_path: Path,
                                                                       processes: list[Popen[bytes]]) -> None:
    from datetime import datetime, timedelta, timezone

    settings = app.settings
    first = spawn(["processor", "--app", APP], settings, tmp_path / "p1.log")
    processes.append(first)
    processes.append(spawn(["worker", "--app", APP, "--concurrency", "20"], settings, tmp_path / "w.log"))
    base = datetime.now(timezone.utc) + timedelta(seconds=2)
    events = [app._build_enqueue("add", {"a": i, "b": 0}, run_at=base + timedelta(milliseconds=20 * i))
              for i in range(200)]
    await app.writer.append(events)
    await asyncio.sleep(3.5)  # about half of the timers have fired
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p2.log"))
    for event in events:
        assert (await app.wait(event.job_id, timeout=90)).status is JobStatus.COMPLETED
    log = await job_events(settings)
    for event in events:
        mine = [e for e in log if e.job_id == event.job_id]
        assert sum(e.type == "attempt_started" for e in mine) == 1, [e.type for e in mine]
        assert sum(e.type == "completed" for e in mine) == 1
        due = [e for e in mine if e.type == "due"]
        assert due and all(e.occurred_at >= event.run_at for e in due)  # never before run_at


async def test_sigterm_lets_running_jobs_finish_and_hands_back_the_rest(runtime: Runtime, tmp_path: Path,
                                                                        processes: list[Popen[bytes]]) -> None:
    app = runtime.app
    worker = spawn(["worker", "--app", APP, "--grace", "1.5s", "--worker-id", "leaving"], app.settings,
                   tmp_path / "w.log")
    processes.append(worker)
    quick = await app.enqueue("sleepy", {"seconds": 0.5})
    slow = await app.enqueue("sleepy", {"seconds": 30})
    await wait_for_status(runtime, quick, JobStatus.RUNNING, timeout=60)
    await wait_for_status(runtime, slow, JobStatus.RUNNING, timeout=60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert (await app.wait(quick, timeout=10)).worker_id == "leaving"  # finished within the grace period
    interrupted = [e for e in await job_events(app.settings, slow) if e.type == "attempt_failed"]
    assert len(interrupted) == 1 and interrupted[0].error_type == "WorkerShutdown" and interrupted[0].retryable
    # handed back for a retry (NoBackoff: at once), not lost and not left claimed
    state = await wait_for_status(runtime, slow, (JobStatus.RETRYING, JobStatus.PENDING), timeout=10)
    assert state.attempt == 1
