"""The examples of docs/flow-control.md run as written, against the real broker, processor and worker.

Each example is a ```python block whose first line is `# example: <name>`; it defines `app =
App("shop")` and `async def main()`, and checks its own results with `assert`.
"""

from __future__ import annotations

import pytest

from eventjobs.settings import Settings
from tests.e2e.conftest import run_doc_example
from tests.support.doc_examples import doc_examples

PAGE = "flow-control.md"
SECTIONS = ("unique-for", "unique-states", "debounce", "concurrency", "rate")


def test_every_section_has_its_example() -> None:
    assert set(doc_examples(PAGE)) == set(SECTIONS)


@pytest.mark.parametrize("name", SECTIONS)
async def test_the_example_runs(name: str, settings: Settings) -> None:
    await run_doc_example(PAGE, name, settings)
