"""The pytest plugin of eventjobs: the ``job_tester`` fixture.

Installing eventjobs registers it (entry point ``pytest11``, name ``eventjobs``), so every pytest
run in an environment with eventjobs imports eventjobs at its start; ``-p no:eventjobs`` turns
it off. A suite gives it its app with a fixture named ``eventjobs_app``::

    # conftest.py
    import pytest
    from shop.jobs import app

    @pytest.fixture
    def eventjobs_app():
        return app

    # test_jobs.py
    async def test_receipt(job_tester):
        run = await job_tester.run("send_receipt", {"order": 1})
        assert run.status is JobStatus.COMPLETED

Each test gets a new `JobTester` (its own frozen clock and in-memory log); nothing reaches Kafka.
"""

from __future__ import annotations

import pytest

from eventjobs.testing.tester import JobTester

APP_FIXTURE = "eventjobs_app"


@pytest.fixture
def job_tester(request: pytest.FixtureRequest) -> JobTester:
    """A `JobTester` of the suite's app (the ``eventjobs_app`` fixture): real handlers, no broker."""
    try:
        app = request.getfixturevalue(APP_FIXTURE)
    except pytest.FixtureLookupError:
        pytest.fail(
            f"the job_tester fixture needs your app: define a fixture named {APP_FIXTURE!r} that returns it, "
            f"e.g. in conftest.py:\n\n    @pytest.fixture\n    def {APP_FIXTURE}():\n        from myproject.jobs import app\n"
            f"        return app\n", pytrace=False,
        )
    return JobTester(app)
