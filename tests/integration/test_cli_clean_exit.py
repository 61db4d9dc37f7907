"""Services stopped by a user error say so in one line and leave no unclosed Kafka clients behind."""

from __future__ import annotations

import pytest

from eventjobs.settings import Settings
from tests.support.cli import run_cli


@pytest.mark.parametrize("command", [
    ["processor"],
    ["processor", "--project"],
    ["worker", "--app", "tests.support.jobs_app:app"],
])
def test_service_without_topics_fails_with_one_line_and_closes_its_clients(settings: Settings,
                                                                           command: list[str]) -> None:
    # Given a namespace whose topics were never applied
    result = run_cli(*command, settings=settings, timeout=90)

    assert result.returncode != 0
    assert "Unclosed" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "topics apply" in errors[0] or "missing" in errors[0], result.stderr


def test_worker_with_a_bad_app_fails_with_one_line(settings: Settings) -> None:
    result = run_cli("worker", "--app", "tests.support.no_such_module:app", settings=settings, timeout=60)

    assert result.returncode == 1
    assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr
