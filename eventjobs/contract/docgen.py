"""Generate ``docs/events.md`` (the event catalogue and the state diagram) from the code.

Why this module exists: documentation that is typed by hand drifts from the code. Here every
table and the Mermaid diagram are rendered from the models (field types, descriptions,
``written_by``), ``JobStatus`` and ``TRANSITIONS``, and ``tests/core/test_docgen.py`` fails if
the committed file differs from what this prints.

    python -m eventjobs.contract.docgen > docs/events.md
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

from pydantic import BaseModel

from eventjobs.core.codec import DEFAULT_MAX_EVENT_BYTES
from eventjobs.core.events import CURRENT_SCHEMA_VERSION, DERIVED_TYPES, EVENT_TYPES, TIMESTAMP_PATTERN, Event
from eventjobs.core.ids import EVENTJOBS_NAMESPACE
from eventjobs.core.options import (
    CallableBackoff,
    ConstantBackoff,
    ExponentialBackoff,
    JobOptionsSpec,
    LinearBackoff,
    NoBackoff,
)
from eventjobs.core.schedules import SCHEDULE_EVENT_TYPES, ScheduleDefinition
from eventjobs.contract.schemagen import JOB_ID_EXAMPLES, PARTITION_EXAMPLES, PARTITION_RULE, version_folder
from eventjobs.core.state import TERMINAL_STATUSES, TRANSITIONS, JobStatus

__all__ = ["render_events_md"]

_ENVELOPE = tuple(Event.model_fields)


def _type_of(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """A short human type for a JSON-schema property."""
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        text = " \\| ".join(_type_of(p, defs) for p in options)
        return f"{text} \\| null" if len(options) < len(prop["anyOf"]) else text
    if "oneOf" in prop:
        return " \\| ".join(_type_of(p, defs) for p in prop["oneOf"])
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        target = defs.get(name, {})
        if "enum" in target:
            return _type_of(target, defs)
        return f"`{name}`"
    if "const" in prop:
        return f"`{prop['const']!r}`".replace("'", '"')
    if "enum" in prop:
        return " \\| ".join(f'`"{v}"`' for v in prop["enum"])
    kind = prop.get("type")
    if kind in ("integer", "number"):
        bounds = []
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in prop:
                bounds.append(f"{op} {_number(prop[key])}")
        return ("int" if kind == "integer" else "float") + (" " + ", ".join(bounds) if bounds else "")
    if kind == "string":
        if prop.get("format") == "date-time" and prop.get("pattern") == TIMESTAMP_PATTERN:
            return "timestamp"
        text = "string"
        if "maxLength" in prop:
            text += f" (<= {prop['maxLength']:,} chars)"
        if "pattern" in prop:
            text += f" `{prop['pattern']}`"
        return text
    if kind == "boolean":
        return "bool"
    if kind == "object":
        return "JSON object"
    if kind == "array":
        items = prop.get("items", {})
        return f"list of {_type_of(items, defs)}" if items else "list"
    return "any"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _md(text: str) -> str:
    """Docstrings use reST ``literals``; Markdown wants `literals`."""
    return text.replace("``", "`")


def _field_rows(model: type[BaseModel], names: tuple[str, ...] | None = None) -> list[str]:
    schema = model.model_json_schema(mode="validation")
    props, defs = schema.get("properties", {}), schema.get("$defs", {})
    required = set(schema.get("required", []))
    rows = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if names is not None and name not in names:
            continue
        if names is None and name in _ENVELOPE and model is not Event:
            continue
        prop = props.get(name, {})
        value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]  # no factory here takes the validated data
        default = "" if name in required else f" (default `{_default(value)}`)"
        need = "yes" if name in required else "no"
        rows.append(f"| `{name}` | {_type_of(prop, defs)} | {need} | {_md(field.description or '')}{default} |")
    return rows


def _default(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if hasattr(value, "value"):
        return f'"{value.value}"'
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _mermaid() -> list[str]:
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in TRANSITIONS:
        if row.event == "dependency_requested":
            continue  # accepted in every status without moving the job: a loop on each would hide the rest
        source = row.source.value if row.source is not None else "[*]"
        label = row.event
        if row.event == "enqueued":
            label = "enqueued (run_at later)" if row.target is JobStatus.SCHEDULED else "enqueued"
            if row.target is JobStatus.WAITING:
                label = "enqueued (depends_on)"
        target = row.target.value if row.target is not None else "[*]"
        if label not in edges[(source, target)]:
            edges[(source, target)].append(label)
    lines = ["```mermaid", "stateDiagram-v2"]
    for (source, target), labels in edges.items():
        lines.append(f"    {source} --> {target}: {', '.join(labels)}")
    lines.append("```")
    return lines


def _contract() -> list[str]:
    """Kafka records, the machine-readable schema, job ids and schema versions: what a producer
    or follower in another language needs besides the field tables."""
    folder = f"schema/{version_folder()}"
    vectors = sorted({(e["job_id"], e["partition"]) for e in PARTITION_EXAMPLES if e["partition_count"] == 6})
    out = [
        "## Kafka records",
        "",
        "- **Topic** `<namespace>.events` (`App(\"shop\")` writes `shop.events`), created with its",
        "  partition count (6 by default) by `eventjobs topics apply`; never auto-created.",
        "- **Key**: the job id, UTF-8. **Value**: the event's JSON. **Headers**: none needed (others are kept).",
        f"- **Partition**: the job partition rule, `{PARTITION_RULE}`, with Kafka's",
        "  murmur2 (seed `0x9747b28c`): every event of a job on one partition, in order, because the",
        "  processor that owns the partition is the only one that knows the job. It is the Java client's",
        "  default partitioner for the key; eventjobs computes it itself and names the partition",
        "  explicitly in every write (`eventjobs.core.partitioning.job_partition`). librdkafka's",
        "  default (`consistent_random`, CRC32) and sarama's (FNV-1a) choose other partitions: set",
        "  the partition yourself, or librdkafka's `partitioner=murmur2_random`. With 6 partitions:",
        "",
        "  | job id | partition |",
        "  |---|---|",
        *[f"  | `{job_id}` | {partition} |" for job_id, partition in vectors],
        "",
        "- **An event on another partition** than its job's still works: the processor moves it to",
        "  its job's partition (a copy with the header `eventjobs.moved-from: topic/partition/offset`,",
        "  acknowledged before the processor commits past the original) and applies the copy there;",
        "  the cost is one extra write per such event, counted (`moved_events`) and logged once per",
        "  producer. Events of one job that a foreign partitioner spread over several partitions",
        "  are applied in the order they are moved, not the order they were written.",
        "- **Producers**: `acks=all` and idempotence on; **not transactional** (the processor reads",
        "  the log uncommitted, so an aborted write would still count).",
        "- **Followers**: read `read_committed` (the processor writes its derived events in",
        "  transactions), and deduplicate by `event_id` (a moved event appears twice: the original",
        "  on the wrong partition and the copy on the job's; a repeated write keeps its id).",
        "",
        "Step by step, with examples in Python (librdkafka) and Java: [producers.md](producers.md).",
        "",
        "## Machine-readable schema",
        "",
        f"[`{folder}/`]({folder}/) holds a JSON Schema (draft 2020-12) for every event type",
        "(`events/<type>.json`), for any event (`event.json`, discriminated by `type`), for the records",
        "the processor writes beside events (`ready-record.json`, `timer-record.json`,",
        "`dead-letter-record.json`, `job-state.json`), and `index.json`: topics, keys, the partition",
        "rule and the job id rule as data, with test vectors. They are generated from the same models",
        "the decoder uses (`python -m eventjobs.contract.schemagen`; `tests/contract/test_schema.py`",
        "fails when they are stale). The decoder is stricter than JSON Schema in one way: an integer",
        "field refuses `1.0`.",
        "",
        "## Job ids",
        "",
        "- Without an idempotency key any unique string of at most 128 characters works; eventjobs",
        "  writes a UUIDv7 (its time lets `App.wait` find old jobs quickly; any other id is found too).",
        "- With an idempotency key the job id is a function of (job name, key), so every producer, in",
        "  any language, that enqueues the same key gets the same job, and the processor refuses the",
        "  second `enqueued` (`duplicate_rejected`) while the job is retained:",
        "",
        f"  `job_id = uuid5({EVENTJOBS_NAMESPACE}, utf8(name + \"\\x1f\" + idempotency_key))`",
        "",
        "  written as lowercase 8-4-4-4-12 text; `name` is the job's name, `\\x1f` the ASCII unit",
        "  separator; put the key in the event's `idempotency_key` too.",
        "",
        "  | name | idempotency_key | job_id |",
        "  |---|---|---|",
        *[f"  | `{e['name']}` | `{e['idempotency_key']}` | `{e['job_id']}` |" for e in JOB_ID_EXAMPLES],
        "",
        "- With `unique_for` or `debounce` (options `unique_for_s` / `debounce_s`, window `W` in whole",
        "  milliseconds) the key is joined with the window of the event's `occurred_at`",
        "  (`n = floor(epoch ms / W)`), so each window of a key is one job ([flow-control.md](flow-control.md)):",
        "",
        f"  `job_id = uuid5({EVENTJOBS_NAMESPACE}, utf8(name + \"\\x1f\" + idempotency_key + \"\\x1fwindow:\" + W + \":\" + n))`",
        "",
        "## Schema versions",
        "",
        f"Every event carries `schema_version` (now {CURRENT_SCHEMA_VERSION}; optional on the wire, default",
        f"{CURRENT_SCHEMA_VERSION}). Decoding is strict (unknown fields are refused), so the rules are:",
        "",
        "- **Within a version** only changes that every existing event still satisfies, with the",
        "  same meaning: a new *optional* field whose absence means what it meant before, a new",
        "  event type, a wider limit, a clearer description.",
        "  Readers are upgraded before writers (processors, then workers and producers): an older",
        "  strict reader quarantines an event with a field it does not know.",
        "- **A new version** for anything else: a field removed, renamed or retyped, a meaning",
        "  changed, an optional field made required, a limit narrowed, the key, the partition rule",
        "  or the job id rule changed. Version N+1 is introduced side by side: readers learn to",
        "  decode both N and N+1 first (the decoder accepts `schema_version` 1..N+1 and upcasts",
        "  older events to the current models before the fold, so `apply` and replay see one",
        "  shape); only then do writers write N+1. Events already in the log are never rewritten:",
        "  a reader keeps decoding every version the retained log still holds.",
        f"- `docs/{folder}/` is the schema of version {CURRENT_SCHEMA_VERSION} (changes within the version",
        "  update it); a new version gets a folder of its own, and the older ones stay beside it, frozen.",
        "",
    ]
    return out


def render_events_md() -> str:
    """The full text of docs/events.md."""
    out: list[str] = [
        "# Job events",
        "",
        "<!-- Generated by `python -m eventjobs.contract.docgen > docs/events.md` from eventjobs/core.",
        "     Do not edit by hand: tests/core/test_docgen.py fails when this file is stale. -->",
        "",
        "Every fact about a job is one event in the job event log, keyed by `job_id`. The processor",
        "folds a job's events with `eventjobs.core.apply(state, event)` into its current `JobState`",
        "and appends the events that follow from them (*derived* events). Rebuilding state from the",
        "log gives the same result as the live processor.",
        "",
        "## Wire format",
        "",
        "- Flat JSON (UTF-8), one event per Kafka record: the envelope fields sit beside the",
        "  type's own fields, no nested `data` object. Unknown fields are rejected.",
        "- Timestamps are UTC with millisecond precision, written `2024-01-31T12:00:00.123Z`",
        f"  (decoding accepts only `{TIMESTAMP_PATTERN}`).",
        "- Ids are strings. `event_id` is a UUIDv7 (sorts by time); ids of derived events are",
        "  UUIDv8 computed from (cause, type, index), so deriving twice gives the same ids.",
        "- Attempts are 0-based integers and only grow over a job's life (a dead-letter retry",
        "  continues the count with a fresh budget).",
        "- `args` and `result` are JSON objects (finite numbers, 64-bit integers).",
        f"- Decoding is strict and size-limited ({DEFAULT_MAX_EVENT_BYTES:,} bytes by default); a bad",
        "  record raises `EventDecodeError` naming the field, what is allowed and what was found,",
        "  e.g. `field 'attempt' of 'claimed' event: expected an integer >= 0 and <= 1000000, got 'x'`.",
        "",
        *_contract(),
        "## Envelope (every event)",
        "",
        *_field_rows(Event, _ENVELOPE),
        "",
        "## Catalogue",
        "",
        "| type | written by | meaning |",
        "|---|---|---|",
    ]
    for type_, model in EVENT_TYPES.items():
        summary = (model.__doc__ or "").strip().split("\n")[0]
        out.append(f"| [`{type_}`](#{type_}) | {model.written_by} | {_md(summary)} |")
    out += [
        "",
        "Derived events (" + ", ".join(f"`{t}`" for t in EVENT_TYPES if t in DERIVED_TYPES) + ") are written",
        "only by the processor, as consequences of the event named in their `causation_id`. They are",
        "already reflected in the state when they are appended; applying them again changes nothing.",
        "",
    ]
    for type_, model in EVENT_TYPES.items():
        doc = " ".join(line.strip() for line in (model.__doc__ or "").strip().splitlines() if line.strip())
        out += [f"### `{type_}`", "", _md(doc), "", f"Written by: {model.written_by}.", ""]
        rows = _field_rows(model)
        out += rows if len(rows) > 2 else ["No fields besides the envelope."]
        out.append("")

    out += ["## Options carried by `enqueued`", "", "`JobOptionsSpec`:", "", *_field_rows(JobOptionsSpec), ""]
    out += ["Backoff policies (`backoff`, discriminated by `kind`); delays are seconds after the 0-based attempt that failed:", ""]
    for policy, formula in (
        (ExponentialBackoff, "`min(base_s * 2**attempt, cap_s)`"),
        (LinearBackoff, "`step_s * (attempt + 1)`, capped at `cap_s` if set"),
        (ConstantBackoff, "`delay_s`"),
        (NoBackoff, "`0`"),
        (CallableBackoff, "the worker evaluates the user's callable and sends `retry_delay_s`; otherwise `fallback`"),
    ):
        kind = policy.model_fields["kind"].default
        out += [f"- `{kind}`: {formula}.", ""]
        out += ["  " + row for row in _field_rows(policy) if "`kind`" not in row]
        out.append("")
    out += [
        "With `jitter` j > 0 the delay is multiplied by `1 - j*u`, where u in [0, 1) is a hash of",
        "(seed, job id, attempt): spread out, yet the same on every replay.",
        "",
        "## Statuses",
        "",
        "| status | terminal | meaning |",
        "|---|---|---|",
    ]
    for status in JobStatus:
        terminal = "yes" if status in TERMINAL_STATUSES else "no"
        if status is JobStatus.DEAD_LETTERED:
            terminal = "until retried or discarded"
        out.append(f"| `{status.value}` | {terminal} | {status.description} |")
    out += ["", "## State diagram", "", ("`dependency_requested` is accepted in every status without moving the job (see the table), "
            "so the diagram leaves it out."), "", *_mermaid(), "", "## Transitions", ""]
    out += ["| from | event | to | when | derives |", "|---|---|---|---|---|"]
    for row in TRANSITIONS:
        source = f"`{row.source.value}`" if row.source is not None else "(new job)"
        derives = ", ".join(f"`{d}`" for d in row.derives) or ""
        target = f"`{row.target.value}`" if row.target is not None else "(forgotten)"
        out.append(f"| {source} | `{row.event}` | {target} | {row.when} | {derives} |")
    out += [
        "",
        "## Rejections",
        "",
        "`apply` never raises. An event that does not fit is returned as rejected, with a reason, and",
        "the state is unchanged (the event stays in the log as the record of what was attempted):",
        "",
        "- any event but `enqueued` for an unknown job;",
        "- an event type not accepted in the job's status (see the table; terminal statuses accept",
        "  nothing except `dead_letter_retried`/`discarded` on `dead_lettered`);",
        "- a stale attempt: `attempt` differs from the job's current attempt (a late result of an",
        "  attempt that lost its lease, for example): recorded, but it cannot change the outcome;",
        "- `claimed` when the attempt is already claimed, or with a lease that has already ended;",
        "- `attempt_started` from another worker than the claim's, or without `lease_deadline` while",
        "  the job is pending; one with `lease_deadline` (the start is also the claim) when the attempt",
        "  is already claimed, with a lease that has already ended, or naming another claim;",
        "- `heartbeat` that does not extend the lease; `progress` older than the last one;",
        "- `lease_expired` whose `lease_deadline` is not the current one (the lease was extended);",
        "- `due` with the wrong timer kind; `expired` with no TTL armed or after the job started;",
        "- `cancel_requested` when a cancel is already pending;",
        "- `dead_letter_retried`/`discarded` whose `causation_id` is not the job's current",
        "  `dead_lettered` event (a stale operator action);",
        "- a second `enqueued` for an existing job id with another `event_id` (same idempotency",
        "  key): rejected, and a `duplicate_rejected` event is derived;",
        "- a derived-type event whose id is not the derivation of its `causation_id`;",
        "- `dependency_resolved` for a job that does not wait (any more) for that dependency (one that",
        "  ran or was cancelled otherwise than by a dependency's failure), that answers another request",
        "  than the job's own (`causation_id`, e.g. of an earlier job with the same id), or that is not",
        "  the answer of the current round (one the dependency reopened since); `dependency_requested`",
        "  for an unknown job is rejected too, and answered `missing` at once (a derived",
        "  `dependency_resolved`), as is one over `MAX_DEPENDENTS` (`refused`);",
        "- `dependency_reopened` for a job that does not hold that dependency's failure answer (its",
        "  `causation_id`), that runs anyway (`on_dependency_failure` run), or that is neither",
        "  dead-lettered nor cancelled by a dependency (it ran, was cancelled for another reason);",
        "- `dependency_probe` for a job that does not wait, whose path's last job does not wait for it by",
        "  the request named in `via`, that is on the path already, at the hop limit (`MAX_PROBE_HOPS`),",
        "  or that forwarded the same `origin` by a path as short; back at the path's first job, one",
        "  whose `origin` is not that job's current wait for the path's second.",
        "",
        "Applying an event that was already applied (same `event_id`, or the echo of a derived",
        "event) is a no-op reported as `duplicate`.",
        "",
    ]
    out += _schedule_records()
    return "\n".join(out)


def _schedule_records() -> list[str]:
    """The records of the schedules topic (`eventjobs.core.schedules`), with their fields."""
    out = [
        "## Schedule records",
        "",
        "Periodic schedules live on their own compacted topic, `<namespace>.schedules`, not in the job",
        "event log; a tick's job is an ordinary `enqueued` event (actor `schedule:<schedule id>`,",
        "idempotency key `<schedule id>@<tick>`). Keys: the schedule id for the definition events",
        "(each carries the whole `definition` after it), `<schedule id>@fired` and",
        "`<schedule id>@triggered`; all of a schedule's records go to the partition",
        "`(murmur2(utf8(schedule_id)) & 0x7fffffff) % partition_count`. `apply_schedule` merges them",
        "(a definition by its `occurred_at` and `event_id`, a tick by being later), so their order and",
        "repetition do not matter. JSON Schema: `schedule-record.json`.",
        "",
    ]
    created = SCHEDULE_EVENT_TYPES["created"]
    envelope = ("event_id", "schedule_id", "type", "occurred_at", "actor")
    out += ["Every schedule record has `type` (one of those below) and:", "",
            *_field_rows(created, tuple(name for name in envelope if name != "type")), ""]
    for type_, model in SCHEDULE_EVENT_TYPES.items():
        own = tuple(name for name in model.model_fields if name not in envelope)
        out += [f"### `{type_}`", "", _md(model.__doc__ or ""), "", *_field_rows(model, own), ""]
    out += ["Its `definition` (`ScheduleDefinition`):", "", *_field_rows(ScheduleDefinition), ""]
    return out


def main() -> None:
    sys.stdout.write(render_events_md())


if __name__ == "__main__":
    main()
