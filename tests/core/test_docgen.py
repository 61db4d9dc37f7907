"""docs/events.md is generated from the code and must not drift from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from eventjobs.contract.docgen import render_events_md
from eventjobs.core.events import EVENT_TYPES
from eventjobs.core.state import TRANSITIONS, JobStatus

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_docs_events_md_is_up_to_date() -> None:
    expected = render_events_md()
    assert DOC.read_text() == expected, "docs/events.md is stale: run `python -m eventjobs.contract.docgen > docs/events.md`"


def test_the_generator_runs_as_a_module() -> None:
    out = subprocess.run([sys.executable, "-m", "eventjobs.contract.docgen"], capture_output=True, text=True, check=True).stdout
    assert out == render_events_md()


def test_every_event_type_and_field_is_documented() -> None:
    text = render_events_md()
    for type_, cls in EVENT_TYPES.items():
        assert f"### `{type_}`" in text
        section = text.split(f"### `{type_}`", 1)[1].split("\n### ", 1)[0]
        assert f"Written by: {cls.written_by}." in section
        for name in cls.model_fields:
            if name not in ("event_id", "job_id", "type", "occurred_at", "schema_version", "causation_id", "actor"):
                assert f"| `{name}` |" in section, f"{type_}.{name} is not documented"


def test_the_diagram_has_an_edge_for_every_transition() -> None:
    text = render_events_md()
    diagram = text.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = {(a, b): labels for a, b, labels in re.findall(r"^\s+(\S+) --> (\S+)(?:: (.*))?$", diagram, re.M)}
    assert "`dependency_requested` is accepted in every status without moving the job" in text
    for row in TRANSITIONS:
        if row.event == "dependency_requested":
            continue  # a loop on every status: the diagram names it in a sentence instead
        source = row.source.value if row.source else "[*]"
        target = row.target.value if row.target else "[*]"
        assert (source, target) in edges
        assert row.event in edges[(source, target)]
    for status in JobStatus:
        assert f"| `{status.value}` |" in text
