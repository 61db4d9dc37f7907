"""Enqueue eventjobs jobs with confluent-kafka (librdkafka) and follow them to their end.

A stand-in for a producer in another language: it does not import eventjobs. Everything it
writes is built from the public contract (docs/events.md, docs/schema/v1/, docs/producers.md):

* topic ``<namespace>.events``, key = job id (UTF-8), value = the ``enqueued`` event as JSON;
* partition: with ``--partitioner job`` the job partition rule, computed here
  (``(murmur2(utf8(job_id)) & 0x7fffffff) % partitions``); with ``--partitioner murmur2_random``
  librdkafka's Java-compatible partitioner, which is the same rule; with ``--partitioner default``
  librdkafka's own default (``consistent_random``, CRC32 of the key), which usually picks another
  partition: the processor then moves the event to the job's partition (one extra write);
* job id: a random UUID, or with ``--key-prefix`` the idempotency-key rule
  ``uuid5(6f1c6c5e-8a31-4d0b-9a57-0c4be7d1f2a9, utf8(name + "\\x1f" + key))``;
* producer: acks=all, idempotence on, not transactional.

It then follows the event log (``read_committed``, deduplicated by ``event_id``) until every job
it enqueued has a terminal event, and prints one line per step:

    enqueued <job_id> <partition> <job partition>
    done <job_id> <type> <result as JSON>

Run (a processor and a worker of the namespace running, with a handler named ``add``)::

    python docs/examples/producers/enqueue_confluent.py --bootstrap 127.0.0.1:9092 --namespace shop \\
        --name add --count 3 --args '{"a": 1, "b": 2}'
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

#: The idempotency-key namespace of eventjobs (docs/events.md, "Job ids").
EVENTJOBS_NAMESPACE = uuid.UUID("6f1c6c5e-8a31-4d0b-9a57-0c4be7d1f2a9")
TERMINAL = {"completed", "cancelled", "dead_lettered", "discarded"}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (seed 0x9747b28c), unsigned 32-bit."""
    m, h, whole = 0x5BD1E995, 0x9747B28C ^ len(data), len(data) & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = data[whole:]
    if rest:
        for shift, byte in reversed(list(enumerate(rest))):
            h ^= byte << (8 * shift)
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def job_partition(job_id: str, partitions: int) -> int:
    """The job partition rule (docs/events.md, "Kafka records")."""
    return (murmur2(job_id.encode()) & 0x7FFFFFFF) % partitions


def job_id_for_key(name: str, key: str) -> str:
    """The job id of an idempotency key (docs/events.md, "Job ids")."""
    return str(uuid.uuid5(EVENTJOBS_NAMESPACE, f"{name}\x1f{key}"))


def utc_ms(moment: datetime) -> str:
    """The wire form of a timestamp: UTC, milliseconds, 'Z'."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def end_offset(consumer: Consumer, partition: TopicPartition, timeout_s: float = 30.0) -> int:
    """The partition's end offset, retried while the broker is not ready (a topic just created)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=10)[1]
        except KafkaException as error:
            if not error.args[0].retriable() or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def enqueued_event(name: str, args: dict, *, queue: str, job_id: str, key: str | None,
                   timeout_s: float, max_attempts: int) -> dict:
    """An `enqueued` event as docs/schema/v1/events/enqueued.json describes it."""
    return {
        "event_id": str(uuid.uuid4()),
        "job_id": job_id,
        "type": "enqueued",
        "occurred_at": utc_ms(datetime.now(timezone.utc)),
        "schema_version": 1,
        "causation_id": None,
        "actor": f"producer:librdkafka:{socket.gethostname()}",
        "name": name,
        "queue": queue,
        "args": args,
        # the event carries the job's options: the worker does not fill in its registration's
        "options": {"max_attempts": max_attempts, "timeout_s": timeout_s},
        "priority": "normal",
        "idempotency_key": key,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True, help="the job's name (a handler registered in the app)")
    parser.add_argument("--queue", default="default")
    parser.add_argument("--args", default="{}", help="the job's args, a JSON object")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--key-prefix", help="idempotency keys <prefix>0, <prefix>1, ... (job ids from the key rule)")
    parser.add_argument("--partitioner", choices=["default", "job", "murmur2_random"], default="default",
                        help="default: librdkafka's own (consistent_random); job: the job partition rule, computed "
                        "here; murmur2_random: librdkafka's Java-compatible partitioner, which is the rule")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="the job's timeout (options.timeout_s)")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--wait-s", type=float, default=120.0, help="how long to follow the jobs")
    options = parser.parse_args(argv)
    topic = f"{options.namespace}.events"
    args = json.loads(options.args)

    config = {"bootstrap.servers": options.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    if options.partitioner == "murmur2_random":
        config["partitioner"] = "murmur2_random"
    producer = Producer(config)
    partitions = len(producer.list_topics(topic, timeout=30).topics[topic].partitions)
    if partitions == 0:
        raise SystemExit(f"topic {topic} does not exist: create it with `eventjobs topics apply`")

    # Follow from the current end (taken before enqueueing, so nothing of ours is missed).
    follower = Consumer({"bootstrap.servers": options.bootstrap, "group.id": f"follow-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    ends = [TopicPartition(topic, p, end_offset(follower, TopicPartition(topic, p))) for p in range(partitions)]
    follower.assign(ends)

    delivered: dict[str, int] = {}
    failures: list[str] = []

    def on_delivery(error, message) -> None:
        if error is not None:
            failures.append(str(error))
        else:
            delivered[message.key().decode()] = message.partition()

    jobs = []
    for n in range(options.count):
        key = f"{options.key_prefix}{n}" if options.key_prefix is not None else None
        job_id = job_id_for_key(options.name, key) if key is not None else str(uuid.uuid4())
        event = enqueued_event(options.name, args, queue=options.queue, job_id=job_id, key=key,
                               timeout_s=options.timeout_s, max_attempts=options.max_attempts)
        record = {"topic": topic, "key": job_id.encode(), "value": json.dumps(event).encode(), "on_delivery": on_delivery}
        if options.partitioner == "job":
            record["partition"] = job_partition(job_id, partitions)
        producer.produce(**record)
        jobs.append(job_id)
    if producer.flush(30) or failures:
        raise SystemExit(f"not every enqueue was acknowledged: {failures}")
    for job_id in jobs:
        print(f"enqueued {job_id} {delivered[job_id]} {job_partition(job_id, partitions)}", flush=True)

    seen: set[str] = set()
    pending = set(jobs)
    deadline = time.monotonic() + options.wait_s
    try:
        while pending and time.monotonic() < deadline:
            message = follower.poll(0.5)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            event = json.loads(message.value())
            if event["event_id"] in seen:  # a moved event comes twice: the original and its copy
                continue
            seen.add(event["event_id"])
            if event["job_id"] in pending and event["type"] in TERMINAL:
                pending.discard(event["job_id"])
                print(f"done {event['job_id']} {event['type']} {json.dumps(event.get('result'))}", flush=True)
    finally:
        follower.close()
    if pending:
        print(f"not finished within {options.wait_s:g} s: {sorted(pending)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
