"""Hypothesis strategies for every event type (valid by construction)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from eventjobs.core.events import DEPENDENCY_OUTCOMES, EVENT_TYPES, Event
from eventjobs.core.options import (
    CallableBackoff,
    ConstantBackoff,
    ExponentialBackoff,
    JobOptionsSpec,
    LinearBackoff,
    NoBackoff,
    Priority,
)

ids = st.one_of(
    st.uuids().map(str),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40),
)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
timestamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=offsets)
texts = st.text(max_size=60)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
attempts = st.integers(0, 1_000_000)
seconds = st.floats(0, 3600, allow_nan=False)
jitter = st.floats(0, 1)
seeds = st.none() | st.integers(-(2**63), 2**63 - 1)
backoffs = st.one_of(
    st.builds(ExponentialBackoff, base_s=st.floats(0.001, 60), cap_s=seconds, jitter=jitter, seed=seeds),
    st.builds(LinearBackoff, step_s=seconds, cap_s=st.none() | seconds, jitter=jitter, seed=seeds),
    st.builds(ConstantBackoff, delay_s=seconds, jitter=jitter, seed=seeds),
    st.builds(NoBackoff),
    st.builds(CallableBackoff, name=st.text(min_size=1, max_size=30)),
)
option_specs = st.builds(
    JobOptionsSpec,
    max_attempts=st.integers(1, 1000),
    backoff=backoffs,
    timeout_s=st.floats(0.001, 86400),
    ttl_s=st.none() | st.floats(0.001, 86400),
    dead_letter_retention_s=st.none() | st.floats(0.001, 86400 * 30),
    retry_on=st.lists(st.text(min_size=1, max_size=20), max_size=3).map(tuple),
    capabilities=st.lists(st.from_regex(r"[a-z0-9._:-]{1,10}", fullmatch=True), max_size=3).map(tuple),
    max_snoozes=st.integers(0, 1000),
)

FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "attempt": attempts,
    "name": st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:-]{0,30}", fullmatch=True),
    "queue": st.from_regex(r"[A-Za-z0-9._-]{1,30}", fullmatch=True),
    "args": json_objects,
    "options": option_specs,
    "run_at": timestamps,  # None added for the fields where it is allowed
    "priority": st.sampled_from(list(Priority)),
    "idempotency_key": st.none() | st.text(min_size=1, max_size=40),
    "parent_job_id": st.none() | ids,
    "timer": st.sampled_from(["run_at", "retry", "republish"]),
    "sequence": attempts,
    "claim_id": ids,
    "worker_id": st.text(min_size=1, max_size=30),
    "lease_deadline": timestamps,
    "percent": st.floats(0, 100),
    "message": texts,
    "result": st.none() | json_objects,
    "error_type": st.text(min_size=1, max_size=40),
    "traceback": texts,
    "retryable": st.booleans(),
    "retry_delay_s": st.none() | seconds,
    "timeout_s": st.floats(0.001, 86400),
    "due_at": timestamps,
    "delay_s": seconds,
    "reason": texts,
    "duplicate_event_id": ids,
    "scope": st.sampled_from(["dead_letter", "finished"]),
    "depends_on": st.lists(ids, min_size=1, max_size=5),
    "on_dependency_failure": st.sampled_from(["cancel", "run"]),
    "dependent_id": ids,
    "dependency_id": ids,
    "outcome": st.sampled_from(DEPENDENCY_OUTCOMES),
    "path": st.lists(ids, min_size=1, max_size=5),
    "origin": ids,
    "via": ids,
    "requester_id": ids,
    "owner_id": ids,
    "limit": st.text(min_size=1, max_size=40),
    "key": st.text(min_size=1, max_size=40),
    "max": st.integers(1, 1000),
    "strategy": st.sampled_from(["queue", "cancel_newest", "cancel_in_progress"]),
    "rate": st.builds(lambda n, unit: f"{n}/{unit}", st.integers(1, 1000), st.sampled_from("smh")),
    "burst": st.integers(1, 10_000),
    "not_before": timestamps,
    "reset": st.booleans(),
    "late_for_rate": st.booleans(),
}


def events_of(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Valid events of one type; every field drawn, optional ones sometimes left to their default."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "event_id": ids,
        "job_id": ids,
        "occurred_at": timestamps,
        "causation_id": st.none() | ids,
        "actor": st.text(min_size=1, max_size=40),
    }
    for name, info in cls.model_fields.items():
        if name in fields or name in ("type", "schema_version"):
            continue
        strategy = FIELD_STRATEGIES[name]
        if not info.is_required() and info.default is None:
            strategy = st.none() | strategy
        fields[name] = strategy
    return st.builds(cls, **fields)


any_event = st.sampled_from(list(EVENT_TYPES.values())).flatmap(events_of)
