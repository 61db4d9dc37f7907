"""Helpers for read-side tests: compare two databases' projections row by row, run the CLI, start a projector."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eventjobs.clickhouse import Backend, ClickHouseError, chdb_dir, open_owners_api, qualified
from eventjobs.clickhouse.ownership import live_owner
from eventjobs.readside.rows import DEAD_LETTER_COLUMNS, JOB_COLUMNS, JOB_EVENT_COLUMNS
from eventjobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
METRIC_COLUMNS = (
    "countIfMerge(enqueued)", "countIfMerge(started)", "countIfMerge(succeeded_attempts)",
    "countIfMerge(failed_attempts)", "countIfMerge(completed)", "countIfMerge(failed)", "countIfMerge(retried)",
    "countIfMerge(dead_lettered)", "countIfMerge(cancelled)", "countIfMerge(expired)",
    "countIfMerge(duplicates_rejected)", "quantilesDeterministicIfMerge(0.5, 0.95, 0.99)(wait_quantiles)",
    "quantilesDeterministicIfMerge(0.5, 0.95, 0.99)(duration_quantiles)",
    # a Float64 sum depends on the order partial sums merge in (batches differ): equal to 1e-6
    "round(sumIfMerge(duration_sum), 6)",
)


def table_rows(backend: Backend, database: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection table of `database` as ordered Python rows (payloads as hashes, metrics merged)."""
    events = [c if c != "payload" else "cityHash64(payload)" for c in JOB_EVENT_COLUMNS]
    queries = {
        "job_events": f"SELECT {', '.join(events)} FROM {qualified(database, 'job_events')} "
                      "ORDER BY log_partition, log_offset",
        "jobs": f"SELECT {', '.join(JOB_COLUMNS)} FROM {qualified(database, 'jobs')} FINAL ORDER BY job_id",
        "dead_letters": f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM {qualified(database, 'dead_letters')} FINAL "
                        "WHERE deleted = 0 ORDER BY job_id",
        "job_metrics_1m": f"SELECT minute, queue, name, {', '.join(METRIC_COLUMNS)} FROM "
                          f"{qualified(database, 'job_metrics_1m')} GROUP BY minute, queue, name "
                          "ORDER BY minute, queue, name",
        "projector_progress": f"SELECT log_partition, max(state_offset) FROM "
                              f"{qualified(database, 'projector_progress')} GROUP BY log_partition ORDER BY 1",
    }
    return {table: backend.query(sql, database="").rows for table, sql in queries.items()}


def assert_same_projections(backend: Backend, expected_db: str, actual_db: str) -> dict[str, int]:
    """Row-by-row equality of two databases' projections; returns the row count per table."""
    expected, actual = table_rows(backend, expected_db), table_rows(backend, actual_db)
    for table in expected:
        assert len(actual[table]) == len(expected[table]), table
        for number, (want, got) in enumerate(zip(expected[table], actual[table])):
            assert got == want, f"{table} row {number}: {got} != {want}"
    return {table: len(rows) for table, rows in expected.items()}


def cli_env(settings: Settings, state_dir: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap, "EVENTJOBS_NAMESPACE": settings.namespace,
           "EVENTJOBS_TOPICS_DIR": str(settings.topics_dir), "COLUMNS": "200"}
    if state_dir is not None:
        env["EVENTJOBS_STATE_DIR"] = str(state_dir)
    if settings.clickhouse_url is not None:
        env["EVENTJOBS_CLICKHOUSE_URL"] = settings.clickhouse_url.get_secret_value()
    else:
        env.pop("EVENTJOBS_CLICKHOUSE_URL", None)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventjobs.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def start_projector(settings: Settings, state_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """`eventjobs project` (chdb under `state_dir`) in its own process."""
    return subprocess.Popen([sys.executable, "-m", "eventjobs.cli", "project", *extra], cwd=ROOT,
                            env=cli_env(settings, state_dir), stderr=subprocess.DEVNULL)


def read_api(settings: Settings, timeout_s: float = 60) -> Backend:
    """The running projector's read API, once it advertises one.

    Never opens the chdb directory itself (`open_backend` would, before the projector has
    recorded itself as the owner, and then hold the lock the projector waits for).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        owner = live_owner(chdb_dir(settings).resolve())
        if owner is not None and owner.read_api:
            try:
                return open_owners_api(owner, settings.namespace)
            except ClickHouseError:
                pass
        assert time.monotonic() < deadline, "the projector did not serve its read API in time"
        time.sleep(0.2)


def wait_for_count(backend: Backend, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := backend.query("SELECT count() FROM job_events").scalar()) < count:
        assert time.monotonic() < deadline, f"projector did not catch up ({seen} of {count} rows)"
        time.sleep(0.2)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
