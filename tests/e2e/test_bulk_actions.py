"""Bulk actions from the CLI against the real broker: `jobs cancel` by name or queue and
`dlq discard-all` / `retry-all` by name. Without --yes they show a count and a few ids and change
nothing; with --yes they act on exactly the matching jobs. Every error path is one line and an
exit code, and leaves the jobs as they were."""

from __future__ import annotations

import json
import subprocess

from eventjobs.core.state import JobStatus
from tests.e2e.conftest import Runtime, wait_for_status
from tests.support.cli import run_cli


def cli(runtime: Runtime, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, settings=runtime.app.settings, env=env, timeout=60)


async def statuses(runtime: Runtime, job_ids: list[str]) -> list[JobStatus | None]:
    return [state.status if (state := await runtime.app.state(job_id)) else None for job_id in job_ids]


async def test_cancel_by_name_or_queue_previews_then_cancels_exactly_the_matching_jobs(runtime: Runtime) -> None:
    app = runtime.app
    adds = [await app.enqueue("add", {"a": i, "b": 0}, delay=300) for i in range(7)]
    other = await app.enqueue("flaky", {}, delay=300)
    renders = [await app.enqueue("render", {}, delay=300) for _ in range(2)]  # queue "render"
    everyone = [*adds, other, *renders]
    for job_id in everyone:
        await wait_for_status(runtime, job_id, JobStatus.SCHEDULED)

    preview = cli(runtime, "jobs", "cancel", "--name", "add")
    assert preview.returncode == 0, preview.stderr
    lines = preview.stdout.strip().splitlines()
    assert lines[0].startswith("would cancel 7 job(s): ") and lines[0].endswith(", ... (2 more)")
    assert sum(job_id in lines[0] for job_id in adds) == 5 and other not in lines[0]
    assert lines[1].startswith("nothing changed; to cancel them, run again with --yes: eventjobs jobs cancel --name add")
    assert await statuses(runtime, everyone) == [JobStatus.SCHEDULED] * len(everyone)

    done = cli(runtime, "jobs", "cancel", "--name", "add", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["matched"], answer["cancelled"], sorted(answer["job_ids"])) == (7, 7, sorted(adds))
    for job_id in adds:
        assert (await app.wait(job_id, timeout=30)).status is JobStatus.CANCELLED
    assert await statuses(runtime, [other, *renders]) == [JobStatus.SCHEDULED] * 3

    by_queue = cli(runtime, "jobs", "cancel", "--queue", "render", "--yes")
    assert by_queue.returncode == 0 and "cancel requested for 2 job(s)" in by_queue.stdout, by_queue.stderr
    for job_id in renders:
        assert (await app.wait(job_id, timeout=30)).status is JobStatus.CANCELLED
    assert await statuses(runtime, [other]) == [JobStatus.SCHEDULED]
    again = cli(runtime, "jobs", "cancel", "--queue", "render")
    assert again.returncode == 0 and again.stdout.strip() == "would cancel 0 job(s)"


async def test_discard_all_and_retry_all_of_a_name_preview_then_act(runtime: Runtime) -> None:
    await runtime.start_worker()
    app = runtime.app
    refunded = [await app.enqueue("gives_up", {}) for _ in range(2)]
    broken = await app.enqueue("fails_until_retried", {})
    for job_id in [*refunded, broken]:
        assert (await app.wait(job_id, timeout=30)).status is JobStatus.DEAD_LETTERED

    preview = cli(runtime, "dlq", "discard-all", "--type", "gives_up")
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.startswith("would discard 2 job(s): ") and "--yes" in preview.stdout
    assert sorted(e.job_id for e in await app.dead_letters()) == sorted([*refunded, broken])

    discarded = cli(runtime, "dlq", "discard-all", "--type", "gives_up", "--yes")
    assert discarded.returncode == 0 and "discarded 2 job(s)" in discarded.stdout, discarded.stderr
    for job_id in refunded:
        assert (await wait_for_status(runtime, job_id, JobStatus.DISCARDED)).status is JobStatus.DISCARDED

    retry_preview = cli(runtime, "dlq", "retry-all", "--all")
    assert retry_preview.returncode == 0 and retry_preview.stdout.startswith(f"would retry 1 job(s): {broken}")
    retried = cli(runtime, "dlq", "retry-all", "--all", "--yes")
    assert retried.returncode == 0 and "retrying 1 job(s)" in retried.stdout, retried.stderr
    assert (await wait_for_status(runtime, broken, JobStatus.COMPLETED)).result == {"attempt": 2}
    assert await app.dead_letters() == []


async def test_bulk_action_errors_are_one_line_with_an_exit_code_and_change_nothing(runtime: Runtime) -> None:
    app = runtime.app
    job_id = await app.enqueue("add", {"a": 1, "b": 1}, delay=300)
    await wait_for_status(runtime, job_id, JobStatus.SCHEDULED)

    cases = [
        (("jobs", "cancel", "--yes"), {}, 2,
         "error: say which jobs to cancel: --name NAME and/or --queue QUEUE (both: jobs matching both)"),
        (("dlq", "discard-all", "--yes"), {}, 2,
         "error: say which dead-lettered jobs to discard: --type NAME, or --all for every one"),
        (("dlq", "retry-all", "--type", "add", "--all", "--yes"), {}, 2, "error: give --type NAME or --all, not both"),
        (("jobs", "cancel", "--name", "add", "--yes", "--namespace", "Bad/ns"), {}, 1,
         "error: invalid Settings: namespace: String should match pattern"),
        (("jobs", "cancel", "--name", "add", "--yes", "--namespace", "neverappliedns"), {}, 1,
         "error: namespace 'neverappliedns' has no topics"),
        (("jobs", "cancel", "--name", "add", "--yes"), {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, 1,
         "error: Kafka at 127.0.0.1:1 failed"),
        (("dlq", "retry-all", "--type", "add", "--yes"), {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, 1,
         "error: Kafka at 127.0.0.1:1 failed"),
    ]
    for args, env, code, message in cases:
        result = cli(runtime, *args, **env)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(message), (args, result.stderr)
        assert result.stdout == "", (args, result.stdout)
    assert await statuses(runtime, [job_id]) == [JobStatus.SCHEDULED]  # nothing was cancelled
