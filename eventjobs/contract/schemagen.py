"""Generate the machine-readable contract, ``docs/schema/v<schema_version>/*.json``, from the models.

Why this module exists: the event log is a public contract. Producers and followers in other
languages need more than prose: a JSON Schema (draft 2020-12) for every event type and for the
records the processor writes beside events (ready, timer, dead-letter, job state), plus the two
rules no schema can express, in data: the job partition rule and the job id of an idempotency
key, with test vectors. Everything here is rendered from the same pydantic models the codec
decodes with, so it cannot drift from the code: ``tests/contract/test_schema.py`` fails when a
model changed and the committed files were not regenerated.

    python -m eventjobs.contract.schemagen              # writes docs/schema/v1/
    python -m eventjobs.contract.schemagen OTHER/DIR    # writes OTHER/DIR/v1/

Only the current version's folder is written; the folders of earlier versions are kept as they
are (see "Schema versions" in docs/events.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from eventjobs.core.events import CURRENT_SCHEMA_VERSION, DERIVED_TYPES, EVENT_ADAPTER, EVENT_TYPES
from eventjobs.core.ids import EVENTJOBS_NAMESPACE, job_id_for_key
from eventjobs.core.partitioning import job_partition, murmur2
from eventjobs.core.records import DeadLetterRecord, ReadyRecord, TimerRecord
from eventjobs.core.schedules import SCHEDULE_EVENT_ADAPTER, SCHEDULE_EVENT_TYPES
from eventjobs.core.state import JobState

__all__ = [
    "DIALECT",
    "JOB_ID_EXAMPLES",
    "PARTITION_EXAMPLES",
    "PARTITION_RULE",
    "contract",
    "render_schemas",
    "version_folder",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: The job partition rule, as text (``eventjobs.core.partitioning.job_partition``).
PARTITION_RULE = "(murmur2(utf8(job_id)) & 0x7fffffff) % partition_count"

#: Job ids whose partitions are listed as test vectors (UUIDv7 ids as `App.enqueue` makes them,
#: a uuid5 id of an idempotency key, and short strings).
_PARTITION_IDS = (
    "0190a5c2-6b1e-7c3a-9f00-1a2b3c4d5e6f",
    "0190a5c2-6b1e-7c3b-8e11-aabbccddeeff",
    "0190a5c2-6b1f-7000-b123-000000000001",
    "5d3a1c55-54b3-5f8e-8d0f-4d3c2b1a0f9e",
    "job-1",
    "21",
)
#: (job name, idempotency key) pairs whose job ids are listed as test vectors.
_KEY_EXAMPLES = (("send_receipt", "order-42"), ("add", "1+2"), ("resize", "photo/ü-7.png"))
#: Kafka's own murmur2 test vectors (clients' UtilsTest), as signed 32-bit Java ints.
_MURMUR2_JAVA = (
    ("21", -973932308),
    ("foobar", -790332482),
    ("a-little-bit-long-string", -985981536),
    ("a-little-bit-longer-string", -1486304829),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ("abc", 479470107),
)


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


PARTITION_EXAMPLES: list[dict[str, Any]] = [
    {"job_id": job_id, "partition_count": count, "partition": job_partition(job_id, count)}
    for job_id in _PARTITION_IDS
    for count in (6, 12)
]
JOB_ID_EXAMPLES: list[dict[str, str]] = [
    {"name": name, "idempotency_key": key, "job_id": job_id_for_key(name, key)} for name, key in _KEY_EXAMPLES
]


def version_folder(version: int = CURRENT_SCHEMA_VERSION) -> str:
    return f"v{version}"


def contract() -> dict[str, Any]:
    """The rules beside the schemas, as data: topics, keys, partitions, ids, versions (index.json)."""
    return {
        "schema_version": CURRENT_SCHEMA_VERSION,
        "documentation": ["docs/events.md", "docs/producers.md"],
        "topics": {
            "{namespace}.events": {
                "value": "event.json (one of events/<type>.json, by its 'type' field)",
                "key": "job_id, UTF-8",
                "partition": f"job partition rule: {PARTITION_RULE}",
                "headers": "none needed; foreign headers are kept",
                "producer": "acks=all, idempotent; not transactional (the processor reads the log "
                "read_uncommitted, so an aborted write would still count)",
                "followers": "isolation.level=read_committed (the processor's derived events are "
                "written in transactions); deduplicate by event_id",
                "cleanup_policy": "delete",
            },
            "{namespace}.job-state": {
                "value": "job-state.json; a tombstone (null value) when a job is forgotten after its retention",
                "key": "job_id, UTF-8",
                "partition": "the job's partition (co-partitioned with the event log)",
                "writer": "processor only (transactional); read it read_committed",
                "cleanup_policy": "compact",
            },
            "{namespace}.ready.{route}.{priority}": {
                "value": "ready-record.json; a tombstone revokes the attempt named by its headers "
                "eventjobs.attempt and eventjobs.enqueued_at (ASCII digits; epoch ms)",
                "key": "job_id, UTF-8",
                "writer": "processor only; read by workers",
                "cleanup_policy": "delete",
            },
            "{namespace}.timers": {
                "value": "timer-record.json; a tombstone when the timer fired or was cancelled",
                "key": "job_id:kind, job_id:retry:attempt or job_id:run_at:attempt",
                "partition": "the job's partition (co-partitioned with the event log)",
                "writer": "processor (arms), timer service (tombstones)",
                "cleanup_policy": "compact",
            },
            "{namespace}.dead-letters": {
                "value": "dead-letter-record.json; a tombstone when the job is retried or discarded",
                "key": "job_id, UTF-8",
                "writer": "processor only",
                "cleanup_policy": "compact",
            },
            "{namespace}.schedules": {
                "value": "schedule-record.json (one of its events, by its 'type' field)",
                "key": "schedule_id for created / updated / paused / resumed / deleted (each carries the whole "
                "definition); schedule_id@fired for fired; schedule_id@triggered for triggered",
                "partition": "(murmur2(utf8(schedule_id)) & 0x7fffffff) % partition_count, for all three keys",
                "writer": "App / CLI (definitions, triggered), schedule service (fired, declared definitions)",
                "cleanup_policy": "compact",
            },
        },
        "job_partition": {
            "rule": PARTITION_RULE,
            "murmur2": "Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2, seed 0x9747b28c): "
            "the Java client's default partitioner for a keyed record",
            "murmur2_examples": [
                {"input": text, "murmur2": _signed(murmur2(text.encode()))} for text, _ in _MURMUR2_JAVA
            ],
            "examples": PARTITION_EXAMPLES,
        },
        "job_id": {
            "without_idempotency_key": "any unique string of at most 128 characters; eventjobs writes a UUIDv7",
            "with_idempotency_key": {
                "rule": "uuid5(namespace, utf8(name + '\\u001f' + idempotency_key)), lowercase 8-4-4-4-12 text",
                "namespace": str(EVENTJOBS_NAMESPACE),
                "name": "the job's name (the enqueued event's 'name' field)",
                "examples": JOB_ID_EXAMPLES,
            },
        },
    }


def _with_contract(schema: dict[str, Any], title: str, extra: dict[str, Any]) -> dict[str, Any]:
    """``$schema`` and a title first, the pydantic schema, then an ``x-eventjobs`` note."""
    out: dict[str, Any] = {"$schema": DIALECT, "title": title}
    out.update({key: value for key, value in schema.items() if key != "title"})
    out["x-eventjobs"] = {"schema_version": CURRENT_SCHEMA_VERSION, **extra}
    return out


def _require_type(schema: dict[str, Any]) -> dict[str, Any]:
    """``type`` has a default in the models (one per class) but is the discriminator: required on the wire."""
    required = list(schema.get("required", []))
    if "type" not in required:
        required.insert(required.index("job_id") + 1 if "job_id" in required else 0, "type")
    schema["required"] = required
    return schema


def _event_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for type_, model in EVENT_TYPES.items():
        schema = _require_type(model.model_json_schema(mode="validation"))
        out[f"events/{type_}.json"] = _with_contract(
            schema, f"eventjobs event '{type_}'",
            {"topic": "{namespace}.events", "key": "job_id", "partition": PARTITION_RULE,
             "written_by": model.written_by, "derived": type_ in DERIVED_TYPES},
        )
    return out


def _union_schema() -> dict[str, Any]:
    schema = EVENT_ADAPTER.json_schema(mode="validation")
    for definition in schema.get("$defs", {}).values():
        if definition.get("properties", {}).get("type", {}).get("const") in EVENT_TYPES:
            _require_type(definition)
    schema = {"description": "Any job event: one record value of the event log, chosen by its 'type' field.", **schema}
    return _with_contract(schema, "eventjobs job event",
                          {"topic": "{namespace}.events", "key": "job_id", "partition": PARTITION_RULE,
                           "types": list(EVENT_TYPES)})


def _record_schema(model: type[BaseModel], title: str, topic: str, key: str) -> dict[str, Any]:
    return _with_contract(model.model_json_schema(mode="validation"), title, {"topic": topic, "key": key})


def render_schemas() -> dict[str, str]:
    """Every file of the current version's folder: path inside it -> JSON text."""
    documents: dict[str, Any] = {
        "index.json": {"$comment": "Generated by `python -m eventjobs.contract.schemagen`; do not edit by hand.",
                       **contract()},
        "event.json": _union_schema(),
        **_event_schemas(),
        "ready-record.json": _record_schema(ReadyRecord, "eventjobs ready record",
                                           "{namespace}.ready.{route}.{priority}", "job_id"),
        "timer-record.json": _record_schema(TimerRecord, "eventjobs timer record", "{namespace}.timers",
                                            "job_id:kind | job_id:retry:attempt | job_id:run_at:attempt"),
        "dead-letter-record.json": _record_schema(DeadLetterRecord, "eventjobs dead-letter record",
                                                  "{namespace}.dead-letters", "job_id"),
        "job-state.json": _record_schema(JobState, "eventjobs job state", "{namespace}.job-state", "job_id"),
        "schedule-record.json": _with_contract(
            {"description": "A schedule event: one record value of the schedules topic, chosen by its 'type' field.",
             **SCHEDULE_EVENT_ADAPTER.json_schema(mode="validation")},
            "eventjobs schedule record", {"topic": "{namespace}.schedules",
                                          "key": "schedule_id | schedule_id@fired | schedule_id@triggered",
                                          "types": list(SCHEDULE_EVENT_TYPES)}),
    }
    return {path: json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for path, doc in sorted(documents.items())}


def write_schemas(root: Path) -> list[Path]:
    """Write the current version's folder under ``root`` (stale ``.json`` files there are removed)."""
    folder = root / version_folder()
    rendered = render_schemas()
    for stale in folder.rglob("*.json") if folder.exists() else []:
        if stale.relative_to(folder).as_posix() not in rendered:
            stale.unlink()
    written = []
    for relative, text in rendered.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path("docs/schema")
    written = write_schemas(root)
    sys.stdout.write(f"wrote {len(written)} schema files to {root / version_folder()}\n")


if __name__ == "__main__":
    main()
