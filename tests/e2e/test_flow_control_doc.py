"""The examples of docs/flow-control.md run as written, against the real broker, processor and worker.

Each example is a ```python block whose first line is `# example: <name>`; it defines `app =
App("shop")` and `async def main()`, and checks its own results with `assert`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eventjobs import App
from eventjobs.kafka.admin import apply_topics
from eventjobs.settings import Settings
from tests.e2e.conftest import Runtime, exec_doc_example

DOC = Path(__file__).resolve().parents[2] / "docs" / "flow-control.md"
EXAMPLE = re.compile(r"```python\n# example: (?P<name>[\w-]+)\n(?P<code>.*?)```", re.S)
SECTIONS = ("unique-for", "debounce", "concurrency")


def examples() -> dict[str, str]:
    return {m["name"]: m["code"] for m in EXAMPLE.finditer(DOC.read_text())}


def test_every_section_has_its_example() -> None:
    assert set(examples()) == set(SECTIONS)


@pytest.mark.parametrize("name", SECTIONS)
async def test_the_example_runs(name: str, settings: Settings) -> None:
    scope = exec_doc_example(examples()[name], settings, f"{DOC.name}:{name}")
    app: App = scope["app"]
    await apply_topics(settings, sorted({d.options.queue for d in app.jobs.values()}))
    runtime = Runtime(app)
    runtime.start_processor()
    try:
        await runtime.start_worker(queues=sorted({d.options.queue for d in app.jobs.values()}))
        await scope["main"]()
    finally:
        await runtime.close()
