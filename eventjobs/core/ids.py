"""Identifiers for events and jobs.

Why this module exists: ids carry three promises the rest of the system leans on, and each is
easier to keep in one place.

* ``new_event_id()`` / ``new_job_id()``: UUIDv7 (RFC 9562) in canonical form. The first 48 bits
  are the Unix time in milliseconds and a per-process counter follows, so ids sort by creation
  time as plain strings, which keeps ClickHouse ordering and log reading natural. These are the
  only functions in the core that read the clock and randomness; they are used by the shell.
* ``job_id_for_key()``: a UUIDv5 of (namespace, idempotency key). Two enqueues with the same key
  get the same job id, hence the same Kafka key and partition, so the processor that owns the
  key sees the first and rejects the second.
* ``derived_event_id()``: the id of an event the processor derives is a pure function of the
  event that caused it, its type and its index, so deriving again (replay, retry after a crash)
  gives the same ids, and the echo of a derived event is recognisable by its id. The id keeps
  the causing event's time prefix (when it is a UUIDv7/v8) and uses version 8, so derived ids
  still sort by time, right after their cause.
* ``batch_member_ids()``: the job id and ``enqueued`` event id of each member of a batch
  (``App.enqueue_batch``) are pure functions of the batch id, so sending the same batch again
  writes the same jobs under the same event ids, which the processor takes as duplicates.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid

# Fixed namespace for eventjobs' name-based ids (never change it: job ids of idempotent
# enqueues are derived from it).
EVENTJOBS_NAMESPACE = uuid.UUID("6f1c6c5e-8a31-4d0b-9a57-0c4be7d1f2a9")
# The namespace of the job ids of batch members: apart from those of idempotency keys.
BATCH_NAMESPACE = uuid.uuid5(EVENTJOBS_NAMESPACE, "batch")

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_HEX = "0123456789abcdef"


def _canonical(hex32: str) -> str:
    """8-4-4-4-12 form of 32 hex digits."""
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


def _uuid7_hex() -> str:
    """32 hex digits of a UUIDv7: 48-bit ms timestamp, version, 12-bit counter, variant, 62 random bits.

    Monotonic within the process: in the same millisecond (or if the wall clock steps back) the
    counter increases; if it overflows, the timestamp is advanced by one millisecond.
    """
    global _last_ms, _counter
    now_ms = time.time_ns() // 1_000_000
    with _lock:
        if now_ms > _last_ms:
            _last_ms = now_ms
            # start low with random bits so two processes rarely collide on the counter
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return f"{value:032x}"


def new_event_id() -> str:
    """A new time-ordered unique event id (UUIDv7, canonical lowercase string, 36 characters)."""
    return _canonical(_uuid7_hex())


def new_job_id() -> str:
    """A new time-ordered unique job id (UUIDv7, canonical lowercase string)."""
    return _canonical(_uuid7_hex())


def new_batch_id() -> str:
    """A new batch id (UUIDv7, like a job id): its members' event ids keep its time prefix."""
    return _canonical(_uuid7_hex())


def created_ms(job_id: str) -> int | None:
    """When a `new_job_id()` id was made (Unix ms, the creator's clock); None for other ids
    (e.g. those of `job_id_for_key`, which carry no time)."""
    if len(job_id) != 36 or job_id[14] != "7":
        return None
    try:
        return int(job_id[:8] + job_id[9:13], 16)
    except ValueError:
        return None


def job_id_for_key(namespace: str, idempotency_key: str) -> str:
    """The job id for an idempotency key: the same (namespace, key) always gives the same id.

    ``namespace`` separates key spaces (eventjobs uses the job name), so the key "42" of two
    different job types gives two different jobs.
    """
    return str(uuid.uuid5(EVENTJOBS_NAMESPACE, f"{namespace}\x1f{idempotency_key}"))


_TIME_ORDERED = re.compile(r"([0-9a-f]{8})-([0-9a-f]{4})-[78]")


_VARIANT = {c: _HEX[8 | (int(c, 16) & 3)] for c in _HEX}
_sha256 = hashlib.sha256


def derived_event_id(causation_event_id: str, type: str, index: int) -> str:
    """The deterministic id of the ``index``-th event of ``type`` derived from ``causation_event_id``.

    A UUIDv8 whose first 48 bits are the causing event's timestamp (when it has one), the rest a
    SHA-256 of (cause, type, index).
    """
    digest = _sha256(f"{causation_event_id}\x1f{type}\x1f{index}".encode()).hexdigest()
    match = _TIME_ORDERED.match(causation_event_id)
    if match is not None:
        high, mid = match[1], match[2]
    else:
        high, mid = digest[20:28], digest[28:32]
    return f"{high}-{mid}-8{digest[0:3]}-{_VARIANT[digest[3]]}{digest[4:7]}-{digest[7:19]}"


def batch_member_ids(batch_id: str, member: int | None) -> tuple[str, str]:
    """The job id and the ``enqueued`` event id of a member of batch ``batch_id``: item number
    ``member`` (0-based, in the order given), or its callback (``None``).

    The job id is a UUIDv5 of ``(batch id, member)`` in ``BATCH_NAMESPACE`` (so no idempotency
    key's job id equals it); the event id is derived from the batch id as a processor derives
    its events' ids from their cause (``derived_event_id``), so a generated batch id's time
    prefix sorts the members' events by when the batch was made.
    """
    index = -1 if member is None else member
    job_id = str(uuid.uuid5(BATCH_NAMESPACE, f"{batch_id}\x1f{index}"))
    return job_id, derived_event_id(batch_id, "batch_member", index)
