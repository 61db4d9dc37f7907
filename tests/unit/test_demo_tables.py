"""The demo's tables: job ids told apart, every line within 80 columns."""

from __future__ import annotations

import re
from types import SimpleNamespace

from rich.console import Console

from eventjobs.core.ids import new_job_id
from eventjobs.core.state import JobStatus
from eventjobs.dev.demo_runner import dead_letters_table, history_table, log_view_table, metrics_table, short_id
from tests.core.builders import JobLog, reach

EXPECTATIONS = ["completes", "fails twice, retried, completes", "exhausts 3 attempts, dead-lettered",
                "Cancel marker: fails at once", "enqueued twice with one idempotency key: runs once"]


def _render(table: object) -> list[str]:
    console = Console(width=80, record=True, force_terminal=False, color_system=None)
    console.print(table)
    return console.export_text().splitlines()


def _ids_in_one_millisecond(count: int) -> list[str]:
    ids = [new_job_id() for _ in range(count)]
    assert len({i[:8] for i in ids}) == 1 or count > 1  # usually one millisecond: same first 8 hex digits
    return ids


def test_log_view_shows_distinct_ids_within_80_columns() -> None:
    ids = _ids_in_one_millisecond(len(EXPECTATIONS))
    states = {}
    for job_id, status in zip(ids, [JobStatus.COMPLETED, JobStatus.COMPLETED, JobStatus.DEAD_LETTERED,
                                    JobStatus.CANCELLED, JobStatus.COMPLETED]):
        state, _, _ = reach(status, log=JobLog(job_id))
        states[job_id] = state
    lines = _render(log_view_table(states, dict(zip(ids, EXPECTATIONS))))
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines), "\n".join(line for line in lines if len(line) > 80)
    assert len({short_id(i) for i in ids}) == len(ids)
    for job_id in ids:
        assert short_id(job_id) in text
    # one row per job: nothing wrapped onto a second line
    assert sum(bool(re.search(r"[0-9a-f]{12}", line)) for line in lines) == len(ids)


def test_dead_letter_and_history_tables_fit_80_columns() -> None:
    ids = _ids_in_one_millisecond(3)
    dead = [SimpleNamespace(job_id=i, name="sync_inventory", reason="exhausted 3 attempts of a very long budget",
                            error_type="ConnectionError", error_message="inventory service unavailable " * 3)
            for i in ids]
    lines = _render(dead_letters_table(dead))
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert all(short_id(i) in text for i in ids)
    history = [SimpleNamespace(since_enqueued_s=0.123 * n, type="attempt_failed", attempt=n,
                               actor=f"worker:some-rather-long-hostname.example.internal:{4000 + n}") for n in range(3)]
    lines = _render(history_table(ids[0], history))
    assert all(len(line) <= 80 for line in lines)
    assert short_id(ids[0]) in "\n".join(lines)
    stats = [SimpleNamespace(group="exhausts_inventory_sync", enqueued=30, completed=30, retried=2, dead_lettered=1,
                             failure_rate=0.25, duration_p50_s=0.0123, duration_p99_s=1.5, wait_p50_s=0.02)]
    lines = _render(metrics_table(stats))
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
