"""A processor restoring a changelog partition with undecodable records: it serves the partition,
quarantines each bad record once with its reason, tombstones it, and a later restore is clean.
An undecodable slot table (limit-state) is reported and left out: that key's table starts again empty."""

from __future__ import annotations

import signal
from pathlib import Path
from subprocess import Popen

from eventjobs import App
from tests.e2e.conftest import spawn
from tests.faults.test_hostile_records import (
    APP,
    NOT_UTF8,
    _log_lines,
    _ordinary_jobs_complete,
    _records,
    _start_services,
    _wait_for,
    _write,
)

HOSTILE = [(b"bad-state-1", b"not json"), (b"bad-state-2", b'{"job_id": "bad-state-2"}'), (NOT_UTF8, b"{}")]


async def test_undecodable_changelog_records_are_quarantined_once_and_tombstoned_on_restore(
    app: App, tmp_path: Path, processes: list[Popen[bytes]]
) -> None:
    processor, worker = await _start_services(app, tmp_path, processes)
    await _write(app, app.names.job_state, HOSTILE, partition=0)
    processor.send_signal(signal.SIGTERM)  # the next processor restores partition 0 with them in it
    assert processor.wait(timeout=30) == 0

    restarted = spawn(["processor", "--app", APP], app.settings, tmp_path / "restarted.log")
    processes.append(restarted)
    await _ordinary_jobs_complete(app)
    assert restarted.poll() is None and worker.poll() is None

    async def quarantined() -> list:  # type: ignore[type-arg]
        found = [r for r in await _records(app, app.names.quarantine) if (r.key, r.value) in HOSTILE]
        return found if len(found) == len(HOSTILE) else []

    copies = await _wait_for(quarantined, what="a quarantined copy of every bad changelog record")
    assert all(dict(r.headers)["eventjobs.reason"].startswith(b"undecodable job state") for r in copies)
    latest = {r.key: r.value for r in await _records(app, app.names.job_state) if r.partition == 0}
    assert all(latest[key] is None for key, _ in HOSTILE)  # tombstoned: not read again
    assert len(_log_lines(tmp_path / "restarted.log", "bad record (undecodable state)")) == 1  # logged once

    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=30) == 0
    again = spawn(["processor", "--app", APP], app.settings, tmp_path / "again.log")
    processes.append(again)
    await _ordinary_jobs_complete(app)
    assert _log_lines(tmp_path / "again.log", "bad record") == []
    assert len([r for r in await _records(app, app.names.quarantine) if (r.key, r.value) in HOSTILE]) == len(HOSTILE)


async def test_an_undecodable_slot_table_is_reported_and_left_out_on_restore(
    app: App, tmp_path: Path, processes: list[Popen[bytes]]
) -> None:
    processor, worker = await _start_services(app, tmp_path, processes)
    await _write(app, app.names.limit_state, [(b"bad-owner-1", b"not json"), (b"bad-owner-2", b"[]")], partition=0)
    processor.send_signal(signal.SIGTERM)  # the next processor restores partition 0's slot tables with them in it
    assert processor.wait(timeout=30) == 0

    restarted = spawn(["processor", "--app", APP], app.settings, tmp_path / "restarted.log")
    processes.append(restarted)
    await _ordinary_jobs_complete(app)
    assert restarted.poll() is None and worker.poll() is None
    (line,) = _log_lines(tmp_path / "restarted.log", "bad record (undecodable slot table)")  # the first, logged
    assert f"{app.names.limit_state}/0@" in line and "invalid slot table" in line
