"""The read-side CLI as a user runs it (a subprocess, `--json`), and the projector across a ClickHouse outage."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pydantic import SecretStr

from eventjobs.clickhouse import ClickHouseError, ClickHouseUnavailable, ServerBackend
from eventjobs.core.fold import fold
from eventjobs.core.state import JobStatus
from eventjobs.dev.broker import free_port
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import Projector, ProjectorOptions
from eventjobs.readside.service import run_projector
from eventjobs.settings import Settings
from eventjobs.kafka.admin import apply_topics
from tests.readside.fastlog import job_log, produce_fast
from tests.readside.tables import ROOT, cli_env, run_cli
from tests.readside.test_projector import assert_projection_matches
from tests.support.event_log import end_offsets

pytestmark = pytest.mark.kafka


@pytest.fixture
async def projected(settings: Settings, server_url: str) -> tuple[Settings, list]:
    """A log of ~1,500 events projected into the test server's database; settings point the CLI there."""
    await apply_topics(settings)
    log = job_log(1500, seed=21)
    await produce_fast(settings, log)
    settings = settings.model_copy(update={"clickhouse_url": SecretStr(server_url)})
    backend = ServerBackend(server_url, settings.namespace)
    try:
        await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
        projector = Projector(backend, settings, control=False, stop_at=await end_offsets(settings),
                              options=ProjectorOptions(batch_max_events=1000, batch_max_wait_s=0.1))
        await asyncio.wait_for(projector.run(asyncio.Event()), 60)
        yield settings, log
    finally:
        backend.command(f"DROP DATABASE IF EXISTS `{settings.namespace}` SYNC", database="")
        backend.close()


def _json(args: list[str], settings: Settings) -> dict:
    result = run_cli([*args, "--json"], cli_env(settings))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_cli_json_of_jobs_history_stats_and_dead_letters(projected: tuple[Settings, list]) -> None:
    settings, log = projected
    states = fold(log)
    some = next(e.job_id for e in log if states[e.job_id].attempts_started == 2)  # a retried job
    # jobs list: newest first, filtered, and the read side is up to date
    listed = await asyncio.to_thread(_json, ["jobs", "list", "--queue", "emails", "--limit", "5"], settings)
    assert len(listed["jobs"]) == 5 and {j["queue"] for j in listed["jobs"]} == {"emails"}
    assert [j["enqueued_at"] for j in listed["jobs"]] == sorted((j["enqueued_at"] for j in listed["jobs"]),
                                                               reverse=True)
    assert listed["freshness"]["lag_events"] == 0
    # jobs show: the folded state
    shown = (await asyncio.to_thread(_json, ["jobs", "show", some], settings))["job"]
    assert (shown["job_id"], shown["status"], shown["attempts_started"]) == (some, states[some].status.value, 2)
    assert shown["args"] == states[some].args and shown["enqueued_at"].endswith("Z")
    # history: every event of the job, in log order
    history = await asyncio.to_thread(_json, ["history", some], settings)
    assert [e["type"] for e in history["events"]] == [e.type for e in log if e.job_id == some]
    assert history["events"][0]["since_previous_s"] is None and history["events"][-1]["since_enqueued_s"] > 0
    # stats by queue: counts equal the log's
    stats = (await asyncio.to_thread(_json, ["stats", "--by", "queue"], settings))["stats"]
    enqueued = Counter(e.queue for e in log if e.type == "enqueued")
    assert {row["group"]: row["enqueued"] for row in stats} == dict(enqueued)
    assert all(row["duration_p50_s"] is not None and 0 <= row["failure_rate"] <= 1 for row in stats)
    # dead letters: exactly the dead-lettered jobs, with their last error
    dead = (await asyncio.to_thread(_json, ["dead-letters"], settings))["dead_letters"]
    assert {d["job_id"] for d in dead} == {j for j, s in states.items() if s.status is JobStatus.DEAD_LETTERED}
    assert {d["error_type"] for d in dead} == {"ValueError"}


async def test_cli_unknown_job_id_is_a_clear_error_with_exit_code_1(projected: tuple[Settings, list]) -> None:
    settings, _ = projected
    for args in (["jobs", "show", "no-such-job"], ["history", "no-such-job"], ["jobs", "show", "no-such-job", "--json"]):
        result = await asyncio.to_thread(run_cli, args, cli_env(settings))
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "no-such-job" in result.stderr and "not projected yet" in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""


def _serve(directory: Path, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "tests.support.chdb_http", str(directory), "fake server",
                                "--no-advertise", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().startswith("http://")
    return process


def _count(url: str, database: str) -> int:
    backend = ServerBackend(url, database)
    try:
        return int(backend.query("SELECT count() FROM job_events").scalar())
    finally:
        backend.close()


async def _wait_count(url: str, database: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if await asyncio.to_thread(_count, url, database) >= count:
                return
        except ClickHouseUnavailable:
            pass  # down
        except ClickHouseError:
            pass  # up, tables not created yet
        assert time.monotonic() < deadline, f"projector did not reach {count} rows"
        await asyncio.sleep(0.2)


async def test_projector_backs_off_while_clickhouse_is_down_and_resumes_without_skipping(
        settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given a projector writing to a ClickHouse server (the HTTP fixture in its own process)
    await apply_topics(settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(tmp_path / "ch", port)
    settings = settings.model_copy(update={"clickhouse_url": SecretStr(url)})
    log = job_log(6000, seed=31)
    first, second = log[:3000], log[3000:]
    await produce_fast(settings, first)
    stop = asyncio.Event()
    task = asyncio.create_task(run_projector(settings, stop, options=ProjectorOptions(batch_max_events=500,
                                                                                     batch_max_wait_s=0.1)))
    try:
        await _wait_count(url, settings.namespace, len(first))
        # When ClickHouse goes away while more events arrive
        server.kill()
        server.wait()
        caplog.clear()
        await produce_fast(settings, second)
        await asyncio.sleep(3.0)
        assert not task.done(), "the projector must wait for ClickHouse, not fail"
        warnings = [r.getMessage() for r in caplog.records if "ClickHouse unavailable" in r.getMessage()]
        assert len(warnings) >= 2 and "nothing is skipped" in warnings[0]
        # Then, once it is back, the projector goes on where it stopped
        server = _serve(tmp_path / "ch", port)
        await _wait_count(url, settings.namespace, len(log))
        backend = ServerBackend(url, settings.namespace)
        try:
            await asyncio.sleep(0.5)
            assert_projection_matches(backend, log, len(log))  # every record exactly once, states = the fold
        finally:
            backend.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        server.kill()
        server.wait()
