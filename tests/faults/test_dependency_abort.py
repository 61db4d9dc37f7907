"""An aborted dependency answer: the changelog and the committed log still agree.

The processor reads the event log uncommitted. A dependency's lane answers a waiting job on the
job's own partition (`dependency_resolved`); the job's lane applies the answer as soon as it is
on the broker, and the job runs. If the transaction of the answering lane then aborts (here: held
open, then failed, by `tests/support/faulty_app.py`'s `dependency-abort` fault in a real
processor subprocess), the answer must still be in the committed log *before* the job's claim,
start and success: otherwise the fold of the committed log (the projector, `eventjobs replay
--state`) rejects that history and sees the job waiting forever, while the changelog says it
completed. The processor writes those answers plainly, acknowledged before its transaction
commits (docs/architecture.md, "Dependencies"); its restart derives the answer again with the
same id, which the fold takes as a duplicate.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from subprocess import Popen

import pytest

from eventjobs import App
from eventjobs.core.events import is_claim
from eventjobs.core.partitioning import job_partition
from eventjobs.core.state import JobStatus
from eventjobs.kafka.clients import partitions_of
from eventjobs.runtime.state_check import compare_state, read_changelog
from tests.e2e.conftest import job_events, spawn
from tests.faults.test_process_faults import log_has, poll

pytestmark = pytest.mark.kafka
FAULTY_APP = "tests.support.faulty_app:app"


async def test_an_aborted_dependency_answer_leaves_the_changelog_equal_to_the_committed_log(
    app: App, tmp_path: Path, processes: list[Popen[bytes]]
) -> None:
    once = tmp_path / "aborted-once"
    first_log, second_log = tmp_path / "processor-1.log", tmp_path / "processor-2.log"
    fault = {"EVENTJOBS_TEST_FAULT": "dependency-abort", "EVENTJOBS_TEST_FAULT_ONCE": str(once)}
    processor = spawn(["processor", "--app", FAULTY_APP], app.settings, first_log, **fault)
    processes.append(processor)
    processes.append(spawn(["worker", "--app", FAULTY_APP], app.settings, tmp_path / "worker.log", **fault))

    count = len(await partitions_of(app.settings, f"{app.settings.namespace}.events"))
    dependency = await app.enqueue("add", {"a": 1, "b": 2}, delay=2)
    enqueued = app._build_enqueue("add", {"a": 3, "b": 4}, depends_on=[dependency])
    while job_partition(enqueued.job_id, count) == job_partition(dependency, count):  # another lane answers it
        enqueued = app._build_enqueue("add", {"a": 3, "b": 4}, depends_on=[dependency])
    await app.writer.append([enqueued])
    waiter = enqueued.job_id

    # the waiting job ran on the answer that the dependency's lane then aborted
    state = await app.wait(waiter, timeout=60)
    assert state.status is JobStatus.COMPLETED
    assert once.exists(), "the answering transaction was not held open: the fault did not fire"
    code = await asyncio.to_thread(processor.wait, 60)
    assert code != 0 and log_has(first_log, "the transaction answering a dependency aborts"), \
        first_log.read_text(errors="replace")[-3000:]

    # a restarted processor redoes the aborted batch; then every processor stops
    processor = spawn(["processor", "--app", FAULTY_APP], app.settings, second_log, **fault)
    processes.append(processor)

    async def answered_in_the_committed_log() -> bool:
        changelog, _ = await read_changelog(app.settings)
        return dependency in changelog and changelog[dependency][1].status is JobStatus.COMPLETED

    await poll(answered_in_the_committed_log, 60, "the dependency's completion committed after the restart")
    processor.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(processor.wait, 60) == 0, second_log.read_text(errors="replace")[-3000:]

    comparison = await compare_state(app.settings)
    assert comparison.identical, [(d.job_id, d.kind, d.fields, d.folded and d.folded.status.value,
                                   d.changelog and d.changelog.status.value) for d in comparison.differences]
    changelog, _ = await read_changelog(app.settings)
    assert changelog[waiter][1].status is JobStatus.COMPLETED
    # the committed log holds the answer before the waiting job's claim (the fold accepted it there)
    events = [e for e in await job_events(app.settings) if e.job_id == waiter]
    types = [e.type for e in events]
    claims = [i for i, e in enumerate(events) if is_claim(e)]  # the worker's start, which is also its claim
    assert "dependency_resolved" in types and claims
    assert types.index("dependency_resolved") < claims[0], types
