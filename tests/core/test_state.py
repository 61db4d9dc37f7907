"""JobStatus, JobState, the transition table and the changelog codec."""

from __future__ import annotations

import orjson
import pytest

from eventjobs.core.events import DERIVED_TYPES, EVENT_TYPES, LINKED_TYPES, SLOT_OWNER_TYPES
from eventjobs.core.state import (
    ACCEPTING_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    JobStatus,
    StateDecodeError,
    decode_state,
    encode_state,
)
from tests.core.builders import reach

S = JobStatus


def test_statuses_are_a_closed_documented_set() -> None:
    assert [s.value for s in JobStatus] == [
        "waiting", "pending", "scheduled", "claimed", "running", "retrying", "completed", "cancelled", "dead_lettered", "discarded",
    ]  # fmt: skip
    for status in JobStatus:
        assert len(status.description) > 20
        assert str(status) == status.value
    assert TERMINAL_STATUSES == {S.COMPLETED, S.CANCELLED, S.DEAD_LETTERED, S.DISCARDED}
    assert [s for s in JobStatus if s.terminal] == [S.COMPLETED, S.CANCELLED, S.DEAD_LETTERED, S.DISCARDED]


def test_the_transition_table_is_consistent() -> None:
    event_types = set(EVENT_TYPES)
    for row in TRANSITIONS:
        assert row.event in event_types and row.event not in DERIVED_TYPES
        assert set(row.derives) <= DERIVED_TYPES | LINKED_TYPES
        assert row.when
    # every event a writer can send appears in the table
    # (but slot requests and releases: they are addressed to a concurrency limit's owner, eventjobs.core.slots)
    assert {row.event for row in TRANSITIONS} == event_types - DERIVED_TYPES - SLOT_OWNER_TYPES
    # nothing leaves a terminal status except the operator's way out of the dead-letter queue, the
    # retentions (a dead letter is discarded, a finished job is forgotten), and a job cancelled by a
    # dependency that runs again (retried from the dead-letter queue) waiting for it again
    leaving = {
        (row.source, row.event, row.target) for row in TRANSITIONS
        if row.source in TERMINAL_STATUSES and row.target is not row.source  # a dependency request is answered in place
    }
    assert leaving == {
        (S.DEAD_LETTERED, "dead_letter_retried", S.PENDING),
        (S.DEAD_LETTERED, "dead_letter_retried", S.SCHEDULED),
        (S.DEAD_LETTERED, "dead_letter_retried", S.WAITING),
        (S.DEAD_LETTERED, "dead_letter_retried", S.CANCELLED),
        (S.CANCELLED, "dependency_reopened", S.WAITING),
        (S.DEAD_LETTERED, "discarded", S.DISCARDED),
        (S.DEAD_LETTERED, "retention_passed", S.DISCARDED),
        (S.COMPLETED, "retention_passed", None),
        (S.CANCELLED, "retention_passed", None),
        (S.DISCARDED, "retention_passed", None),
    }
    # every status can be reached
    assert {row.target for row in TRANSITIONS} - {None} == set(JobStatus)
    assert ACCEPTING_STATUSES["claimed"] == {S.PENDING}
    assert ACCEPTING_STATUSES["attempt_started"] == {S.PENDING, S.CLAIMED}  # pending: a start that is also the claim
    assert ACCEPTING_STATUSES["attempt_failed"] == {S.CLAIMED, S.RUNNING}


@pytest.mark.parametrize("status", list(JobStatus), ids=lambda s: s.value)
def test_states_survive_the_changelog_codec(status: JobStatus) -> None:
    state, _, _ = reach(status)
    data = encode_state(state)
    assert decode_state(data) == state
    assert encode_state(decode_state(data)) == data


def test_state_json_uses_utc_timestamps() -> None:
    state, _, _ = reach(S.RUNNING)
    assert b'"enqueued_at":"2025-01-01T12:00:00Z"' in encode_state(state)
    assert b'"lease_deadline":"2025-01-01T12:01:01Z"' in encode_state(state)


def test_a_broken_changelog_record_is_a_state_decode_error() -> None:
    state, _, _ = reach(S.PENDING)
    with pytest.raises(StateDecodeError, match="invalid job state: status: Input should be"):
        decode_state(encode_state(state).replace(b'"status":"pending"', b'"status":"lost"'))
    with pytest.raises(StateDecodeError, match="invalid job state"):
        decode_state(b"{}")
    with pytest.raises(StateDecodeError, match="invalid job state"):
        decode_state(b"not json")


def test_budget_start_follows_dead_letter_retries() -> None:
    state, log, run = reach(S.DEAD_LETTERED)
    assert state.budget_start == 0
    state = run.all(log.dlq_retry(state.dead_letter_event_id))
    assert (state.attempt, state.budget_start, state.max_attempts) == (1, 1, 4)


def test_a_changelog_record_written_before_claims_and_republishes_decodes_with_defaults() -> None:
    # Given a state record as processors wrote it before claim_id and ready_republishes existed
    state, _, _ = reach(JobStatus.RUNNING)
    old = orjson.loads(encode_state(state))
    del old["claim_id"], old["ready_republishes"]
    # Then it decodes, with no claim to check against and no re-publish counted
    restored = decode_state(orjson.dumps(old))
    assert (restored.claim_id, restored.ready_republishes) == (None, 0)
    assert restored.model_copy(update={"claim_id": state.claim_id}) == state
