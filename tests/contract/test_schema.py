"""The machine-readable contract (docs/schema/v1/) is generated from the models and describes the wire.

Stale files fail here (regenerate with `python -m eventjobs.contract.schemagen`); every event the core
can encode, and every record the processor writes, is valid under its schema; what the strict
decoder refuses for the usual reasons the schema refuses too; and the rules beside the schemas
(partition, job id) hold their test vectors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from pydantic import Field, create_model

from eventjobs.contract import schemagen
from eventjobs.core.codec import decode, encode
from eventjobs.core.commands import enqueue
from eventjobs.core.events import CURRENT_SCHEMA_VERSION, EVENT_TYPES, EnqueuedEvent
from eventjobs.core.ids import job_id_for_key
from eventjobs.core.options import JobOptions
from eventjobs.core.partitioning import job_partition
from eventjobs.core.records import DeadLetterRecord, ReadyRecord, TimerRecord
from eventjobs.core.state import encode_state
from tests.core.strategies import any_event

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_ROOT = ROOT / "docs" / "schema"
FOLDER = SCHEMA_ROOT / schemagen.version_folder()
T0 = datetime(2024, 1, 31, 12, 0, tzinfo=timezone.utc)


def stale_files(folder: Path) -> list[str]:
    """Files of `folder` that differ from what the generator renders now (missing, changed or extra)."""
    rendered = schemagen.render_schemas()
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.json")} if folder.exists() else set()
    changed = [name for name, text in rendered.items()
               if name not in on_disk or (folder / name).read_text(encoding="utf-8") != text]
    return sorted(changed + sorted(on_disk - rendered.keys()))


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((FOLDER / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


EVENT = validator("event.json")
BY_TYPE = {type_: validator(f"events/{type_}.json") for type_ in EVENT_TYPES}


def problems(check: Draft202012Validator, value: Any) -> list[str]:
    return [error.message for error in check.iter_errors(value)]


# -- in step with the models ----------------------------------------------------------------------


def test_the_committed_schema_is_what_the_models_generate() -> None:
    assert stale_files(FOLDER) == [], (
        "docs/schema is stale: run `python -m eventjobs.contract.schemagen` and commit docs/schema/"
    )


def test_a_changed_model_makes_the_schema_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the test above guards against: a field added to a model without regenerating."""
    changed = create_model("EnqueuedEvent", __base__=EnqueuedEvent,
                           shard=(int | None, Field(None, description="A new optional field.")))
    monkeypatch.setitem(EVENT_TYPES, "enqueued", changed)
    assert stale_files(FOLDER) == ["events/enqueued.json"]


def test_the_generator_runs_as_a_module_and_writes_the_current_version(tmp_path: Path) -> None:
    (tmp_path / "v1" / "events").mkdir(parents=True)
    (tmp_path / "v1" / "events" / "gone.json").write_text("{}")  # a type that no longer exists
    (tmp_path / "v0").mkdir()
    (tmp_path / "v0" / "event.json").write_text("{}")  # an earlier version stays as it is
    subprocess.run([sys.executable, "-m", "eventjobs.contract.schemagen", str(tmp_path)], check=True, cwd=ROOT,
                   capture_output=True)
    assert stale_files(tmp_path / schemagen.version_folder()) == []
    assert (tmp_path / "v0" / "event.json").read_text() == "{}"
    assert CURRENT_SCHEMA_VERSION == 1 and schemagen.version_folder() == "v1"


def test_every_event_type_has_a_schema_and_the_union_names_them_all() -> None:
    index = json.loads((FOLDER / "index.json").read_text())
    union = json.loads((FOLDER / "event.json").read_text())
    assert set(union["discriminator"]["mapping"]) == set(EVENT_TYPES) == set(union["x-eventjobs"]["types"])
    assert {p.stem for p in (FOLDER / "events").glob("*.json")} == set(EVENT_TYPES)
    assert index["schema_version"] == CURRENT_SCHEMA_VERSION
    for name in ("ready-record.json", "timer-record.json", "dead-letter-record.json", "job-state.json"):
        validator(name)  # a valid JSON Schema


# -- the schema describes the wire ---------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_event)
def test_every_event_the_core_encodes_is_valid_under_its_schema(event: Any) -> None:
    wire = orjson.loads(encode(event, max_bytes=None))
    assert problems(EVENT, wire) == []
    assert problems(BY_TYPE[event.type], wire) == []


def enqueued_wire(**changes: Any) -> dict[str, Any]:
    event = enqueue("add", {"a": 1}, JobOptions(queue="default"), now=T0, actor="producer:test")
    wire = orjson.loads(encode(event))
    wire.update(changes)
    return wire


def test_a_minimal_foreign_enqueue_is_valid_for_the_schema_and_the_decoder() -> None:
    wire = {"event_id": str(uuid.uuid4()), "job_id": str(uuid.uuid4()), "type": "enqueued",
            "occurred_at": "2024-01-31T12:00:00.123Z", "actor": "producer:go", "name": "add",
            "queue": "default", "args": {"a": 1}, "options": {}}
    assert problems(EVENT, wire) == []
    assert decode(json.dumps(wire).encode()).job_id == wire["job_id"]


@pytest.mark.parametrize(("change", "why"), [
    ({"colour": "red"}, "an unknown field"),
    ({"occurred_at": "2024-01-31T12:00:00+01:00"}, "a timestamp not in UTC 'Z' form"),
    ({"occurred_at": "2024-01-31T12:00:00.1234Z"}, "a timestamp finer than milliseconds"),
    ({"type": "enqueud"}, "an unknown type"),
    ({"args": [1, 2]}, "args that are not an object"),
    ({"priority": "urgent"}, "an unknown priority"),
    ({"schema_version": 2}, "a schema version this reader does not know"),
    ({"queue": "has space"}, "a queue name outside its pattern"),
    ({"options": {"max_attempts": 0}}, "an attempt budget below 1"),
])
def test_what_the_decoder_refuses_the_schema_refuses(change: dict[str, Any], why: str) -> None:
    wire = enqueued_wire(**change)
    assert problems(EVENT, wire), why
    with pytest.raises(ValueError):
        decode(json.dumps(wire).encode())


def test_type_is_required_on_the_wire() -> None:
    wire = enqueued_wire()
    del wire["type"]
    assert problems(EVENT, wire) and problems(BY_TYPE["enqueued"], wire)


def test_the_records_beside_events_are_valid_under_their_schemas() -> None:
    from eventjobs.core.fold import apply

    event = enqueue("add", {"a": 1}, JobOptions(queue="default", ttl=60), now=T0, actor="producer:test")
    state = apply(None, event).state
    assert state is not None
    ready = ReadyRecord(job_id=event.job_id, attempt=0, name="add", queue="default", priority=event.priority,
                        args=event.args, options=event.options, enqueued_at=T0, ready_at=T0, partition=3)
    timer = TimerRecord(job_id=event.job_id, kind="retry", attempt=1, due_at=T0)
    dead = DeadLetterRecord(job_id=event.job_id, name="add", queue="default", reason="attempts exhausted",
                            error_type="KeyError", message="'b'", traceback="", attempts=20,
                            dead_letter_event_id=str(uuid.uuid4()), dead_lettered_at=T0)
    for name, data in [("ready-record.json", ready.encode()), ("timer-record.json", timer.encode()),
                       ("dead-letter-record.json", dead.encode()), ("job-state.json", encode_state(state))]:
        assert problems(validator(name), orjson.loads(data)) == [], name


# -- the rules beside the schemas ------------------------------------------------------------------


def test_the_index_states_the_partition_rule_with_kafkas_own_murmur2_vectors() -> None:
    index = json.loads((FOLDER / "index.json").read_text())
    rule = index["job_partition"]
    java = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
            "a-little-bit-longer-string": -1486304829,
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, "abc": 479470107}
    assert {e["input"]: e["murmur2"] for e in rule["murmur2_examples"]} == java  # Kafka's UtilsTest
    for example in rule["examples"]:
        assert job_partition(example["job_id"], example["partition_count"]) == example["partition"]
    assert index["topics"]["{namespace}.events"]["partition"].endswith(schemagen.PARTITION_RULE)


def test_the_index_states_the_job_id_rule_so_that_another_language_can_compute_it() -> None:
    rule = json.loads((FOLDER / "index.json").read_text())["job_id"]["with_idempotency_key"]
    namespace = uuid.UUID(rule["namespace"])
    for example in rule["examples"]:
        by_hand = str(uuid.uuid5(namespace, example["name"] + "\x1f" + example["idempotency_key"]))
        assert by_hand == example["job_id"] == job_id_for_key(example["name"], example["idempotency_key"])
        event = enqueue(example["name"], {}, JobOptions(queue="default", idempotency_key=example["idempotency_key"]),
                        now=T0, actor="producer:test")
        assert event.job_id == example["job_id"]  # what App.enqueue uses


def test_events_md_spells_out_the_contract() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    for needle in ("## Kafka records", "## Job ids", "## Schema versions", "## Machine-readable schema",
                   schemagen.PARTITION_RULE, "6f1c6c5e-8a31-4d0b-9a57-0c4be7d1f2a9", "read_committed",
                   "eventjobs.moved-from"):
        assert needle in text, needle
