"""The runtime CLI as a user runs it: dead-letter list, retry and discard, cancel."""

from __future__ import annotations

import json
import subprocess

from eventjobs.core.state import JobStatus
from tests.e2e.conftest import Runtime, wait_for_status
from tests.support.cli import run_cli


def cli(runtime: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, settings=runtime.app.settings, timeout=60)


async def test_dead_letter_list_retry_and_discard_from_the_cli(runtime: Runtime) -> None:
    await runtime.start_worker()
    app = runtime.app
    to_retry = await app.enqueue("fails_until_retried", {})
    to_discard = await app.enqueue("gives_up", {})
    for job_id in (to_retry, to_discard):
        assert (await app.wait(job_id, timeout=30)).status is JobStatus.DEAD_LETTERED

    listed = cli(runtime, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {e["job_id"]: e for e in json.loads(listed.stdout)}
    assert set(entries) == {to_retry, to_discard}
    assert entries[to_retry]["error_type"] == "RuntimeError" and entries[to_retry]["attempts"] == 2
    assert entries[to_discard]["reason"].startswith("not retryable")

    retried = cli(runtime, "dlq", "retry", to_retry)
    assert retried.returncode == 0 and f"retrying {to_retry}" in retried.stdout
    discarded = cli(runtime, "dlq", "discard", to_discard)
    assert discarded.returncode == 0 and f"discarded {to_discard}" in discarded.stdout
    assert (await wait_for_status(runtime, to_retry, JobStatus.COMPLETED)).result == {"attempt": 2}
    assert (await wait_for_status(runtime, to_discard, JobStatus.DISCARDED)).status is JobStatus.DISCARDED

    unknown = cli(runtime, "dlq", "retry", to_retry)  # no longer in the dead-letter queue
    assert unknown.returncode == 1 and f"job {to_retry} is not in the dead-letter queue" in unknown.stderr
    empty = cli(runtime, "dlq", "list", "--json")
    assert json.loads(empty.stdout) == []


async def test_retry_all_of_one_type(runtime: Runtime) -> None:
    await runtime.start_worker()
    app = runtime.app
    broken = [await app.enqueue("fails_until_retried", {}) for _ in range(3)]
    other = await app.enqueue("gives_up", {})
    for job_id in [*broken, other]:
        await app.wait(job_id, timeout=30)
    preview = cli(runtime, "dlq", "retry-all", "--type", "fails_until_retried")  # without --yes: changes nothing
    assert preview.returncode == 0 and preview.stdout.startswith("would retry 3 job(s)"), preview.stderr
    assert len(await app.dead_letters()) == 4
    result = cli(runtime, "dlq", "retry-all", "--type", "fails_until_retried", "--yes")
    assert result.returncode == 0 and "retrying 3 job(s)" in result.stdout
    for job_id in broken:
        assert (await wait_for_status(runtime, job_id, JobStatus.COMPLETED)).attempts_started == 3
    assert [e.job_id for e in await app.dead_letters()] == [other]


async def test_cancel_from_the_cli(runtime: Runtime) -> None:
    job_id = await runtime.app.enqueue("add", {"a": 1, "b": 2}, delay=60)
    result = cli(runtime, "cancel", job_id)
    assert result.returncode == 0 and f"cancel requested for {job_id}" in result.stdout
    assert (await runtime.app.wait(job_id, timeout=30)).status is JobStatus.CANCELLED
