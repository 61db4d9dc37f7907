"""A job the processor forgets (its `finished` retention passed): the read side keeps its history
and final state, and folds the next event of its id from no state, as the processor does.

Pure tests of `project_event`, then the `jobs` row round trip through ClickHouse (both backends),
which is what a restarted projector resumes from.
"""

from __future__ import annotations

from typing import Any

from eventjobs.clickhouse import Backend
from eventjobs.core.codec import encode
from eventjobs.core.events import JobEvent
from eventjobs.core.fold import apply
from eventjobs.core.ids import job_id_for_key
from eventjobs.core.options import ConstantBackoff, JobOptions
from eventjobs.core.state import JobStatus
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.queries import list_jobs, show_job
from eventjobs.readside.rows import JOB_EVENT_COLUMNS, ProjectedJob, project_event
from eventjobs.readside.store import Batch, ProjectionStore
from tests.core.builders import JobLog, Run, reach

KEY = "order-42"
JOB_ID = job_id_for_key("send_email", KEY)
OPTIONS = JobOptions(max_attempts=3, backoff=ConstantBackoff(delay_s=10), idempotency_key=KEY)
COLUMN = {name: index for index, name in enumerate(JOB_EVENT_COLUMNS)}


def project(job: ProjectedJob | None, events: list[JobEvent], first_offset: int = 0
            ) -> tuple[ProjectedJob | None, list[dict[str, Any]]]:
    """Fold `events` (offsets from `first_offset`, partition 0) as the projector does; the rows as dicts."""
    rows = []
    for offset, event in enumerate(events, start=first_offset):
        projected = project_event(job, event, encode(event), 0, offset)
        job = projected.job
        rows.append({name: projected.row[index] for name, index in COLUMN.items()})
    return job, rows


def completed_then_forgotten() -> tuple[JobLog, Run, int]:
    """A job completed and then forgotten; (its log, the run, how many events that was)."""
    log, run = JobLog(JOB_ID), Run()
    reach(JobStatus.COMPLETED, log=log, run=run, options=OPTIONS)
    log.tick(3600)
    run.apply(log.retention_passed(0, "finished"))
    assert run.state is None  # the processor forgot it
    return log, run, len(run.log)


def test_a_forgotten_job_keeps_its_final_state_and_is_marked_forgotten() -> None:
    _, run, _ = completed_then_forgotten()
    job, rows = project(None, run.log)
    assert job is not None and job.forgotten
    assert job.state.status is JobStatus.COMPLETED and job.state.result == {"sent": True}
    assert job.version == len(run.log) - 1  # the retention_passed offset: the `jobs` row is rewritten
    forget = rows[-1]
    assert (forget["type"], forget["outcome"], forget["counted"], forget["status_after"]) == (
        "retention_passed", "forgotten", 0, "")
    # the row still names the job's queue and name, and nothing before it changed
    assert (forget["queue"], forget["name"]) == ("default", "send_email")
    assert [r["outcome"] for r in rows[:-1]] == ["applied", "applied", "applied", "applied", "derived"]


def test_events_of_a_forgotten_job_are_folded_from_no_state_like_the_processor() -> None:
    log, run, _ = completed_then_forgotten()
    job, _ = project(None, run.log)
    # a redelivered retention_passed and a late worker event: unknown to the processor now
    late = [run.log[-1], log.succeeded(result={"again": True})]
    after, rows = project(job, late, first_offset=100)
    assert [apply(None, e).rejected is not None for e in late] == [True, True]
    assert [r["outcome"] for r in rows] == ["unknown_job", "unknown_job"]
    assert [r["counted"] for r in rows] == [0, 0]
    assert after is job  # nothing changes: no `jobs` row is written


def test_an_enqueue_with_the_same_id_after_forgetting_creates_a_new_job() -> None:
    log, run, first_life = completed_then_forgotten()
    log.tick(60)
    reach(JobStatus.RUNNING, log=log, run=run, options=OPTIONS)  # the same key, enqueued again
    job, rows = project(None, run.log)
    second = rows[first_life:]
    assert [(r["type"], r["outcome"], r["counted"], r["status_after"]) for r in second] == [
        ("enqueued", "applied", 1, "pending"),
        ("claimed", "applied", 1, "claimed"),
        ("attempt_started", "applied", 1, "running"),
    ]
    assert second[2]["wait_s"] > 0 and second[2]["has_wait"] == 1  # wait from the new enqueue
    assert job is not None and not job.forgotten
    assert job.state == run.state  # exactly the processor's new job
    assert job.state.enqueued_event_id == run.log[first_life].event_id
    assert job.pending_echo == () and job.version == len(run.log) - 1


def test_without_the_forgotten_flag_the_reenqueue_would_be_a_duplicate() -> None:
    # what the flag fixes: folded from the final state, the enqueue is refused as a duplicate
    log, run, first_life = completed_then_forgotten()
    job, _ = project(None, run.log)
    assert job is not None
    log.tick(60)
    enqueued = log.enqueued(OPTIONS)
    assert apply(job.state, enqueued).rejected is not None
    created, rows = project(job, [enqueued], first_offset=first_life)
    assert rows[0]["outcome"] == "applied" and created is not None and created.state.status is JobStatus.PENDING


def test_a_dead_letter_retention_discards_and_counts_like_an_operator_discard() -> None:
    log, run = JobLog(JOB_ID), Run()
    reach(JobStatus.DEAD_LETTERED, log=log, run=run, options=OPTIONS)
    log.tick(86_400)
    run.apply(log.retention_passed(0, "dead_letter"))
    log.tick(3600)
    run.apply(log.retention_passed(0, "finished"))
    job, rows = project(None, run.log)
    discard, forget = rows[-2], rows[-1]
    assert (discard["outcome"], discard["counted"], discard["status_after"]) == ("applied", 1, "discarded")
    assert (forget["outcome"], forget["counted"], forget["status_after"]) == ("forgotten", 0, "")
    assert job is not None and job.forgotten and job.state.status is JobStatus.DISCARDED
    # the operator's discard of the same dead letter is the same kind of row
    operator_log, operator_run = JobLog(JOB_ID), Run()
    state, _, _ = reach(JobStatus.DEAD_LETTERED, log=operator_log, run=operator_run, options=OPTIONS)
    _, operator_rows = project(None, [*operator_run.log, operator_log.discard(state.dead_letter_event_id)])
    assert (operator_rows[-1]["outcome"], operator_rows[-1]["counted"]) == (discard["outcome"], discard["counted"])


def test_the_forgotten_flag_survives_the_jobs_table_and_a_new_job_clears_it(backend: Backend) -> None:
    # the state a restarted projector resumes from is the `jobs` row: it must say "forgotten"
    apply_migrations(backend, default_projections_dir())
    store = ProjectionStore(backend)
    log, run, first_life = completed_then_forgotten()
    forgotten, rows = project(None, run.log)
    assert forgotten is not None
    store.write(Batch([], {JOB_ID: forgotten}, set(), {0: first_life - 1}, first_life))
    loaded = store.load_jobs([JOB_ID])[JOB_ID]
    assert loaded == forgotten and loaded.forgotten
    status = backend.query("SELECT status, forgotten FROM jobs FINAL WHERE job_id = {id:String}", {"id": JOB_ID})
    assert status.rows == [("completed", 1)]
    # queries still show the job, with its final state, and say it was forgotten
    shown = show_job(backend, JOB_ID)
    assert (shown.status, shown.result, shown.forgotten) == ("completed", {"sent": True}, True)
    assert [(j.job_id, j.status, j.forgotten) for j in list_jobs(backend)] == [(JOB_ID, "completed", True)]
    # folding on from the loaded row: a new job with the id, which replaces the row
    log.tick(60)
    enqueued = log.enqueued(OPTIONS)
    created, _ = project(loaded, [enqueued], first_offset=first_life)
    assert created is not None and not created.forgotten
    store.write(Batch([], {JOB_ID: created}, set(), {0: first_life}, 1))
    assert store.load_jobs([JOB_ID])[JOB_ID] == created
    status = backend.query("SELECT status, forgotten FROM jobs FINAL WHERE job_id = {id:String}", {"id": JOB_ID})
    assert status.rows == [("pending", 0)]
    assert show_job(backend, JOB_ID).forgotten is False
