"""Event and job ids: time-ordered, deterministic where they must be."""

from __future__ import annotations

import time
import uuid

from eventjobs.core.ids import batch_member_ids, derived_event_id, job_id_for_key, new_batch_id, new_event_id, new_job_id


def test_new_event_ids_are_uuid7_and_sort_by_creation() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, ids[0])


def test_event_id_carries_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    event_id = new_event_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(event_id.replace("-", "")[:12], 16) <= after + 1


def test_new_job_ids_are_unique_uuid7() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert {uuid.UUID(i).version for i in ids} == {7}


def test_job_id_for_key_is_deterministic_and_namespaced() -> None:
    first = job_id_for_key("send_email", "order-42")
    assert first == job_id_for_key("send_email", "order-42")
    assert first != job_id_for_key("send_email", "order-43")
    assert first != job_id_for_key("charge_card", "order-42")
    assert uuid.UUID(first).version == 5
    # a separator keeps ("a", "b:c") and ("a:b", "c") apart
    assert job_id_for_key("a", "b:c") != job_id_for_key("a:b", "c")


def test_derived_event_ids_are_deterministic_and_distinct() -> None:
    cause = new_event_id()
    first = derived_event_id(cause, "completed", 0)
    assert first == derived_event_id(cause, "completed", 0)
    others = {derived_event_id(cause, "completed", 1), derived_event_id(cause, "failed", 0), derived_event_id(new_event_id(), "completed", 0)}
    assert first not in others and len(others) == 3


def test_derived_event_ids_keep_the_time_of_their_cause_and_sort_after_it() -> None:
    cause = new_event_id()
    derived = derived_event_id(cause, "retry_scheduled", 0)
    parsed = uuid.UUID(derived)
    assert (parsed.version, parsed.variant) == (8, uuid.RFC_4122)
    assert derived[:13] == cause[:13]  # same 48-bit millisecond timestamp
    assert cause < derived < new_event_id()[:13] + "z"


def test_derived_event_ids_of_non_uuid_causes_are_still_valid_uuids() -> None:
    derived = derived_event_id("job-1-e001", "completed", 0)
    assert uuid.UUID(derived).version == 8
    assert derived == derived_event_id("job-1-e001", "completed", 0)


def test_batch_member_ids_are_a_function_of_the_batch_id_and_the_member() -> None:
    batch = new_batch_id()
    members = [batch_member_ids(batch, index) for index in range(3)] + [batch_member_ids(batch, None)]
    # the same batch id gives the same job ids and event ids, in this process or any other
    assert members == [batch_member_ids(batch, index) for index in range(3)] + [batch_member_ids(batch, None)]
    assert len({job_id for job_id, _ in members}) == 4 and len({event_id for _, event_id in members}) == 4
    # another batch id (a caller's own included) names other jobs and events
    others = [batch_member_ids("order-42-invoices", index) for index in range(3)] + [batch_member_ids(new_batch_id(), 0)]
    assert not {i for pair in members for i in pair} & {i for pair in others for i in pair}
    # valid UUIDs: the job ids in a namespace of their own, the event ids with the batch id's time
    job_id, event_id = members[0]
    assert uuid.UUID(job_id).version == 5 and job_id not in {job_id_for_key("batch", f"{batch}\x1f0")}
    assert uuid.UUID(event_id).version == 8 and event_id[:13] == batch[:13]
    assert uuid.UUID(batch).version == 7
