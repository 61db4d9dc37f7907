"""The README's "Testing your jobs" examples pass as a user's own suite would run them: in a
pytest process of their own, with no broker, the `job_tester` fixture coming from the entry
point that installing eventjobs registers (nothing in that suite names the plugin)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
_FILE = re.compile(r"^# (\S+\.py)\b.*$", re.M)


def _python_blocks(heading: str) -> list[str]:
    section = (ROOT / "README.md").read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _files(block: str) -> dict[str, str]:
    """A block's files: each starts at a line `# name.py ...`."""
    marks = list(_FILE.finditer(block))
    assert marks and marks[0].start() == 0, f"a testing example starts with its file name: {block[:80]!r}"
    return {mark.group(1): block[mark.start():marks[i + 1].start() if i + 1 < len(marks) else len(block)]
            for i, mark in enumerate(marks)}


def _a_users_project(pytester: pytest.Pytester) -> None:
    """The README's app as `shop/jobs.py`, and pytest-asyncio in auto mode."""
    shop = pytester.mkpydir("shop")
    (shop / "jobs.py").write_text(_python_blocks("Using it")[0])
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")


def test_the_readme_testing_examples_pass_in_a_users_suite(pytester: pytest.Pytester) -> None:
    _a_users_project(pytester)
    files = {name: code for block in _python_blocks("Testing your jobs") for name, code in _files(block).items()}
    assert sorted(files) == ["conftest.py", "test_batches.py", "test_receipts.py"]
    for name, code in files.items():
        (pytester.path / name).write_text(code)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_batches.py::test_receipts_for_a_batch_of_orders PASSED*"])


def test_the_fixture_without_an_app_says_how_to_give_it_one(pytester: pytest.Pytester) -> None:
    _a_users_project(pytester)
    pytester.makepyfile(test_no_app="def test_it(job_tester):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the job_tester fixture needs your app: define a fixture named 'eventjobs_app' "
                                 "that returns it, e.g. in conftest.py:*"])


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    _a_users_project(pytester)
    pytester.makepyfile(test_no_app="def test_it(job_tester):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:eventjobs")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'job_tester' not found*"])
