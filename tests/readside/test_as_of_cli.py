"""`--as-of` as a user runs it (the CLI in a subprocess, over a log the projector read from the real
broker), and the examples of docs/readside.md "History as of any moment" run as written."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from datetime import datetime

import pytest

from eventjobs.core.events import JobEvent
from eventjobs.core.fold import apply
from eventjobs.core.state import JobState
from eventjobs.clickhouse import ServerBackend
from eventjobs.settings import Settings
from tests.readside.tables import ROOT, cli_env, run_cli
from tests.readside.test_cli import projected  # noqa: F401 (the fixture)

pytestmark = pytest.mark.kafka


def _json(args: list[str], settings: Settings) -> dict:
    result = run_cli([*args, "--json"], cli_env(settings))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _stored(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _fold(events: list[JobEvent]) -> JobState:
    state = None
    for event in events:
        state = apply(state, event).state or state
    assert state is not None
    return state


def _rows(settings: Settings, job_id: str) -> list[tuple[int, int, datetime]]:
    """The job's (partition, offset, stored occurred_at) in log order."""
    assert settings.clickhouse_url is not None
    backend = ServerBackend(settings.clickhouse_url.get_secret_value(), settings.namespace)
    try:
        return [tuple(row) for row in backend.query(  # type: ignore[misc]
            "SELECT log_partition, log_offset, occurred_at FROM job_events WHERE job_id = {id:String} "
            "ORDER BY log_offset", {"id": job_id}).rows]
    finally:
        backend.close()


async def test_jobs_show_list_and_stats_as_of_a_position_and_a_time(projected: tuple[Settings, list]) -> None:  # noqa: F811
    settings, log = projected
    # Given a job that failed once and then succeeded
    job_id = next(e.job_id for e in log if e.type == "retry_scheduled")
    events = [e for e in log if e.job_id == job_id]
    rows = await asyncio.to_thread(_rows, settings, job_id)
    assert len(rows) == len(events)
    failed = next(i for i, e in enumerate(events) if e.type == "attempt_failed")
    partition, offset, at = rows[failed]
    # When it is shown as of the record of its failed attempt, and as of that time
    by_position = (await asyncio.to_thread(_json, ["jobs", "show", job_id, "--as-of", f"offset:{partition}:{offset}"],
                                           settings))
    by_time = (await asyncio.to_thread(_json, ["jobs", "show", job_id, "--as-of", at.isoformat()], settings))
    # Then each is the fold of its events up to there
    expected = _fold(events[:failed + 1])
    assert by_position["as_of"] == {"at": None, "offsets": {str(partition): offset}}
    last_in_time = max(i for i, (_, _, stored_at) in enumerate(rows) if stored_at <= at)
    at_time = _fold(events[:last_in_time + 1])
    for shown, state in ((by_position["job"], expected), (by_time["job"], at_time)):
        assert (shown["status"], shown["attempts_started"], shown["error_type"]) == (
            state.status.value, state.attempts_started, state.last_error.error_type if state.last_error else "")
    assert by_position["job"]["status"] == "retrying" and by_position["job"]["result"] is None
    now = await asyncio.to_thread(_json, ["jobs", "show", job_id], settings)
    assert now["job"]["status"] == "completed" and "as_of" not in now
    # And jobs list / stats as of that position cover that partition, in the state of each job then
    listed = (await asyncio.to_thread(_json, ["jobs", "list", "--as-of", f"offset:{partition}:{offset}",
                                              "--limit", "5000"], settings))["jobs"]
    assert job_id in {j["job_id"] for j in listed} and {j["status"] for j in listed if j["job_id"] == job_id} == {
        "retrying"}
    stats = await asyncio.to_thread(_json, ["stats", "--as-of", f"offset:{partition}:{offset}", "--by", "queue"],
                                    settings)
    assert sum(row["total"] for row in stats["states"]) == len(listed)
    assert sum(row["enqueued"] for row in stats["stats"]) == len(listed)  # one enqueue per job in this log


async def test_bad_moments_are_one_line_with_what_is_allowed(projected: tuple[Settings, list]) -> None:  # noqa: F811
    settings, log = projected
    env = cli_env(settings)
    for args, code, message in (
        (["jobs", "list", "--as-of", "last tuesday"], 2, "is not a moment: give an ISO-8601 time"),
        (["stats", "--as-of", "2999-01-01"], 2, "is in the future"),
        (["jobs", "show", log[0].job_id, "--as-of", "2020-01-01T00:00:00Z"], 1,
         f"job '{log[0].job_id}' did not exist as of 2020-01-01 00:00:00.000 UTC: it first appears at"),
        (["jobs", "list", "--as-of", "offset:0:99999999"], 1, "is past the newest projected offset"),
        (["jobs", "list", "--as-of", "offset:0:1,0:2"], 2, "names partition 0 twice"),
    ):
        result = await asyncio.to_thread(run_cli, args, env)
        assert result.returncode == code, (args, result.stderr)
        assert message in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""


def doc_commands() -> list[tuple[list[str], str | None]]:
    """The commands of the section (argv without `eventjobs`) and the error line each shows, if any."""
    text = (ROOT / "docs" / "readside.md").read_text()
    section = text.split("## History as of any moment", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    commands: list[tuple[list[str], str | None]] = []
    for line in block.splitlines():
        if line.startswith("$ eventjobs "):
            commands.append((shlex.split(line[len("$ eventjobs "):]), None))
        elif line.strip():
            commands[-1] = (commands[-1][0], line.strip())
    return commands


async def test_the_docs_examples_run_as_written(projected: tuple[Settings, list]) -> None:  # noqa: F811
    """The section's job id, times and position are those of the log tests/readside/fastlog.py
    makes (seed 21, starting 2026-01-05 09:00 UTC): the id is swapped for one of this log's
    (ids are random), the times and the position are used as written."""
    settings, log = projected
    commands = doc_commands()
    assert len(commands) == 6
    documented_id = next(arg for args, _ in commands for arg in args if re.fullmatch(r"[0-9a-f-]{36}", arg))
    job_id = next(e.job_id for e in log if e.type == "attempt_started")
    outputs = []
    for args, error in commands:
        args = [job_id if arg == documented_id else arg for arg in args]
        result = await asyncio.to_thread(run_cli, args, cli_env(settings))
        if error is None:
            assert result.returncode == 0, (args, result.stderr)
            outputs.append(result.stdout)
        else:
            assert result.returncode != 0 and error in " ".join(result.stderr.split()), (args, result.stderr)
    # the examples say something: at 09:00:02 jobs were running, partition 2 had jobs at offset 180
    assert "as of 2026-01-05 09:00:02.000 UTC" in outputs[0] and "running" in outputs[1]
    assert json.loads(outputs[2])["jobs"]
