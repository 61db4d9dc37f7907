"""ClickHouse unreachable for a while: the projector process waits, then catches up, with no gap
and no double count.

`tests/readside/test_cli.py::test_projector_backs_off_while_clickhouse_is_down_and_resumes_without_skipping`
proves the back-off with the projector as a task of the test process, over a synthetic log, with
the server stopped once between writes. Here everything runs as it does in production, each in
its own OS process: the processor and a worker produce a real log (derived events in
transactions, retries, dead letters, duplicate enqueues), and `eventjobs project` writes it to a
ClickHouse server at EVENTJOBS_CLICKHOUSE_URL (`tests/support/chdb_http.py`, a ClickHouse HTTP
interface over chdb, in its own process). The server is SIGKILLed twice while the projector
writes small batches (so an INSERT can die half-answered: written by the server, never
acknowledged), stays away for a few seconds, and is started again on the same port and data
directory. Afterwards `job_events` holds every record of the log exactly once (compared record
by record: partition, offset, event id), and `jobs` and `dead_letters` equal the fold of the log.
The per-minute metrics equal the fold too: a server killed in the middle of an INSERT can leave
the metric view's rows unwritten while `job_events` got the rows (the view is not atomic with
its source, on a ClickHouse server too); the projector's retry finds the rows written and
rebuilds the view rows of their minutes (`ProjectionStore.repair_views`, docs/readside.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import Popen

import pytest
from pydantic import SecretStr

from eventjobs import App
from eventjobs.clickhouse import ClickHouseError, ServerBackend
from eventjobs.core.codec import decode
from eventjobs.dev.broker import free_port
from eventjobs.kafka.clients import partitions_of, read_to_end
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.settings import Settings
from tests.e2e.conftest import ROOT
from tests.faults.test_process_faults import (  # noqa: F401 - `fault_app` is a fixture
    Load,
    Services,
    fault_app,
    log_has,
    log_size,
    mixed_load,
    poll,
    stop_cleanly,
    wait_all_terminal,
)
from tests.readside.test_projector import assert_projection_matches

pytestmark = pytest.mark.kafka


def _serve(directory: Path, port: int) -> Popen[str]:
    """The stand-in ClickHouse server on a fixed port (so it comes back where the projector expects it)."""
    process = subprocess.Popen([sys.executable, "-m", "tests.support.chdb_http", str(directory), "fake server",
                                "--no-advertise", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().startswith("http://")
    return process


def _rows(url: str, database: str, sql: str) -> list[tuple[object, ...]]:
    backend = ServerBackend(url, database)
    try:
        return backend.query(sql).rows
    finally:
        backend.close()


def _projected(url: str, database: str) -> int:
    """Rows in job_events now (-1 while the server or the table is not there)."""
    try:
        return int(_rows(url, database, "SELECT count() FROM job_events")[0][0])  # type: ignore[call-overload]
    except ClickHouseError:
        return -1


async def _log_records(settings: Settings) -> list[tuple[int, int, str]]:
    """(partition, offset, event id) of every committed record of the event log."""
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    partitions = await partitions_of(settings, names.events)
    return sorted([(r.partition, r.offset, decode(r.value).event_id)
                   async for r in read_to_end(settings, partitions)])


async def test_projector_waits_out_clickhouse_outages_and_catches_up_without_gap_or_double_count(
        fault_app: App, tmp_path: Path, processes: list[Popen[bytes]]) -> None:
    app = fault_app
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "clickhouse"
    server = _serve(data, port)
    settings = app.settings.model_copy(update={"clickhouse_url": SecretStr(url), "state_dir": tmp_path / "state"})
    services = Services(settings, tmp_path, processes)
    processor = services.start("processor", "processor")
    worker = services.start("worker", "worker", "--concurrency", "20")
    projector = subprocess.Popen(
        [sys.executable, "-m", "eventjobs.cli", "project", "--batch-size", "200", "--batch-wait", "0.05"], cwd=ROOT,
        stdout=open(services.log("projector"), "ab"), stderr=subprocess.STDOUT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap, "EVENTJOBS_NAMESPACE": settings.namespace,
             "EVENTJOBS_CLICKHOUSE_URL": url, "EVENTJOBS_STATE_DIR": str(tmp_path / "state")})
    processes.append(projector)
    try:
        events, expected = mixed_load(app, 1200, seed=5)
        load = Load(app, events, pause_s=0.5)  # 12 chunks over about 6 s, then retries and timers
        outages = 0
        for threshold in (800, 3000):  # two outages while the projector writes
            await poll(lambda t=threshold: asyncio.to_thread(lambda: _projected(url, settings.namespace) >= t), 60,
                       f"{threshold} rows projected", every=0.05)
            mark = log_size(services.log("projector"))
            server.kill()  # at once: an INSERT under way dies with it
            server.wait()
            outages += 1
            away = time.monotonic()
            await poll(lambda m=mark: log_has(services.log("projector"), "ClickHouse unavailable", m), 30,
                       "the projector to notice the outage")
            while time.monotonic() - away < 4:  # away for a few seconds while the log grows
                assert projector.poll() is None, services.tail("projector")
                await asyncio.sleep(0.2)
            server = _serve(data, port)  # same port, same data directory
        await load.task
        await wait_all_terminal(app, list(expected), timeout=90)
        await stop_cleanly(services, [processor, worker])  # the log is final now
        records = await _log_records(settings)

        async def caught_up() -> bool:
            return await asyncio.to_thread(_projected, url, settings.namespace) >= len(records)

        await poll(caught_up, 90, f"the projector to project all {len(records)} records", every=0.2)
        assert projector.poll() is None, services.tail("projector")  # never exited: it waited
        await asyncio.sleep(1.0)  # a late duplicate write would show up now
        projected = await asyncio.to_thread(
            _rows, url, settings.namespace,
            "SELECT log_partition, log_offset, event_id FROM job_events ORDER BY log_partition, log_offset")
        assert len(projected) == len(records), "a record projected twice"
        missing = sorted(set(records) - {tuple(r) for r in projected})
        assert not missing, f"{len(missing)} record(s) never projected: {missing[:5]}"
        assert [tuple(r) for r in projected] == records
        log = [decode(r.value) async for r in read_to_end(settings, await partitions_of(
            settings, TopicNames(settings.namespace, load_specs(settings.topics_dir)).events))]
        backend = ServerBackend(url, settings.namespace)
        try:  # jobs, dead letters and the metrics equal the fold of the log
            await asyncio.to_thread(assert_projection_matches, backend, log, len(records))
        finally:
            backend.close()
        assert outages == 2
    finally:
        projector.send_signal(signal.SIGTERM)
        try:
            projector.wait(timeout=30)
        except subprocess.TimeoutExpired:
            projector.kill()
        server.kill()
        server.wait()
