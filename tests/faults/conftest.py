"""Fixtures of the fault tests: the end-to-end fixtures (an app with its topics applied, the
in-process runtime, and the subprocesses a test started), re-exported from tests/e2e/conftest.py."""

from tests.e2e.conftest import app, processes, runtime  # noqa: F401 - fixtures, found by pytest by name
