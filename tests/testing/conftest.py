"""The suite's app for the `job_tester` fixture, which the eventjobs pytest plugin provides
(entry point `pytest11`: nothing here loads it)."""

from __future__ import annotations

import pytest

from eventjobs import App
from tests.testing.jobs import app


@pytest.fixture
def eventjobs_app() -> App:
    return app
