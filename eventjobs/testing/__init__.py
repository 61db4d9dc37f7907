"""Test your jobs with no broker: the real handlers, context, outcome rules and fold, inline.

    from eventjobs.testing import JobTester, run_job, assert_enqueued, assert_completed

    run = await run_job(app, "send_receipt", {"order": 1})
    assert run.state.status is JobStatus.COMPLETED

`JobTester` keeps a frozen clock and an in-memory log; `advance(seconds)` fires the timers due
(retries, snoozes, run_at, ttl) and runs what they make runnable, `drain()` runs children and
dependents. The pytest fixture `job_tester` comes with the package (plugin
`eventjobs.testing.pytest_plugin`, entry point `pytest11`).
"""

from eventjobs.core.clock import FrozenClock
from eventjobs.testing.assertions import assert_completed, assert_enqueued, assert_not_enqueued
from eventjobs.testing.tester import MAX_ATTEMPTS_PER_CALL, JobRun, JobTester, StillRunnable, run_job, run_job_sync

__all__ = [
    "MAX_ATTEMPTS_PER_CALL",
    "FrozenClock",
    "JobRun",
    "JobTester",
    "StillRunnable",
    "assert_completed",
    "assert_enqueued",
    "assert_not_enqueued",
    "run_job",
    "run_job_sync",
]
