"""The README's Python example runs as written against the real broker, processor and worker."""

from __future__ import annotations

import re
from pathlib import Path

from eventjobs import App
from eventjobs.core.state import JobStatus
from eventjobs.settings import Settings
from eventjobs.kafka.admin import apply_topics
from tests.e2e.conftest import Runtime, exec_doc_example

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using it", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


async def test_readme_example(settings: Settings) -> None:
    await apply_topics(settings, ["emails"])
    namespace = exec_doc_example(_example(), settings, "README.md")
    app: App = namespace["app"]
    runtime = Runtime(app)
    runtime.start_processor()
    await runtime.start_worker(queues=["emails"])
    try:
        await namespace["main"]()  # enqueues with a 10 s delay and waits for the result
        job_id = app._build_enqueue("send_receipt", {"order": 42}, idempotency_key="order-42").job_id
        state = await app.wait(job_id, timeout=5)
        assert state.status is JobStatus.COMPLETED and state.result == {"sent": True}
    finally:
        await runtime.close()
