"""The one place where aiokafka clients are configured (security, acks, idempotence, timeouts)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, RequestTimedOutError
from aiokafka.helpers import create_ssl_context

# the job partition rule (pure, in the core), for the services that write and read the log
# re-exported: the shell takes the partitioner from here, next to the clients that use it
from eventjobs.core.partitioning import job_partition as job_partition
from eventjobs.core.partitioning import key_partition as key_partition
from eventjobs.core.partitioning import murmur2 as murmur2
from eventjobs.settings import Settings


def connection_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap and security options shared by every client; secrets are unwrapped only here."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": int(settings.kafka_request_timeout_s * 1000),
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            password=(
                settings.kafka_ssl_key_password.get_secret_value()
                if settings.kafka_ssl_key_password
                else None
            ),
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return options


class AdminClient(AIOKafkaAdminClient):  # type: ignore[misc]  # aiokafka has no type information
    """aiokafka's admin client, but a request any broker may answer goes to another broker when
    the one it picked does not answer.

    aiokafka sends such a request (metadata: list and describe topics, describe the cluster,
    topic configs) to one broker picked at random from the cluster metadata and raises if that
    broker is unreachable. On a cluster that lost a broker, the metadata names the lost one until
    the controller fences it (`broker.session.timeout.ms`, 9 s by default), so about one such
    request in three failed, and a processor or worker starting then, or a processor creating
    the ready topics of a new queue, stopped with `NodeNotReadyError`. Here the request is tried
    on every other known broker before the error is raised. A request for one broker in
    particular (a group coordinator, the controller) is sent as aiokafka sends it.
    """

    async def _send_request(self, request: Any, node_id: int | None = None) -> Any:
        if node_id is not None:
            return await super()._send_request(request, node_id)
        brokers = [broker.nodeId for broker in self._client.cluster.brokers()]
        random.shuffle(brokers)  # spread the load as aiokafka does
        for tried, broker in enumerate(brokers, start=1):
            try:
                return await super()._send_request(request, broker)
            except (NodeNotReadyError, KafkaConnectionError, RequestTimedOutError):
                if tried == len(brokers):
                    raise
        return await super()._send_request(request)  # no metadata yet: as aiokafka does


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    options = connection_options(settings)
    options.pop("request_timeout_ms")
    return AdminClient(**options, request_timeout_ms=int(settings.kafka_request_timeout_s * 1000))


@asynccontextmanager
async def started_admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client, started, and closed when the block ends."""
    admin = admin_client(settings)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


def _retry_coordinator_lookups_across_lost_connections() -> None:
    """Keep producers alive across a broker restart: a fix of aiokafka 0.14's sender.

    `Sender._find_coordinator` (the transaction or group coordinator lookup a transactional
    producer makes before adding partitions, committing offsets or ending a transaction) retries
    only CoordinatorNotAvailable, NodeNotReady and RequestTimedOut. A connection that closes
    while the lookup is in flight, as it does when the broker shuts down or restarts
    (`KafkaConnectionError`, retriable), is re-raised as a plain `KafkaError`; that ends the
    producer's sender task ("Unexpected error during batch delivery"), every later send and
    commit of the producer fails, and the processor owning it stops. Here such a retriable cause
    is retried like NodeNotReady (refresh metadata, back off, look up again), so the producer
    waits for the broker, as aiokafka already does for every other request of an idempotent
    producer. Non-retriable errors (authorization, ...) still raise. Applied once, at import.
    """
    from aiokafka.errors import KafkaError
    from aiokafka.producer.sender import Sender

    original = Sender._find_coordinator
    if getattr(original, "retries_lost_connections", False):
        return

    async def find_coordinator(self: Any, coordinator_type: Any, coordinator_key: Any) -> Any:
        retries = 0
        while True:
            try:
                return await original(self, coordinator_type, coordinator_key)
            except KafkaError as error:
                if not getattr(error.__cause__, "retriable", False):
                    raise
                if retries == 0:  # once per lookup, not once per try while the broker is away
                    logging.getLogger("eventjobs.kafka").warning(
                        "looking up the coordinator of %s failed (%r); retrying until the broker answers",
                        coordinator_key, error.__cause__)
                retries += 1
                await self.client.force_metadata_update()
                await asyncio.sleep(self._retry_backoff)

    find_coordinator.retries_lost_connections = True  # type: ignore[attr-defined]  # the mark that it is installed
    Sender._find_coordinator = find_coordinator


_retry_coordinator_lookups_across_lost_connections()


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """Durable by default: acks=all and the idempotent producer, so no acknowledged write is lost."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 1,
        # Large batches: with the idempotent producer one batch per partition is in flight, so a
        # transaction carrying thousands of records would otherwise wait for many round trips.
        "max_batch_size": 1_048_576,
        "max_request_size": max(settings.max_event_bytes * 2, 4_194_304),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def topic_partition_count(sender: AIOKafkaProducer, topic: str) -> int:
    """How many partitions `topic` has, from the producer's metadata (fetched once, then cached)."""
    return len(await sender.partitions_for(topic))


def consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """read_committed by default: aborted transactions of a crashed processor are never seen."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def read_to_end(
    settings: Settings, partitions: list[TopicPartition], *, stall_timeout_s: float = 120.0
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every committed record of `partitions` from the beginning up to their current end.

    Used to restore state from compacted topics (the processor's changelog, the dead-letter
    list). The end is taken once at the start; transaction markers count as offsets, so the
    loop compares positions, not record counts. A large topic may take as long as it takes;
    only a read that makes no progress for `stall_timeout_s` raises `TimeoutError`. No partitions:
    nothing to read, and no client is started.
    """
    if not partitions:
        return
    reader = consumer(settings, group_id=None)
    await reader.start()
    try:
        reader.assign(partitions)
        ends = await reader.end_offsets(partitions)
        await reader.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        clock = asyncio.get_running_loop().time
        deadline = clock() + stall_timeout_s
        while remaining:
            if clock() > deadline:
                raise TimeoutError(
                    f"reading {sorted(map(str, remaining))} to the end made no progress for {stall_timeout_s:.0f} s"
                )
            batch = await reader.getmany(*remaining, timeout_ms=200, max_records=10_000)
            if batch:
                deadline = clock() + stall_timeout_s
            for records in batch.values():
                for record in records:
                    yield record
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await reader.stop()


async def partitions_of(settings: Settings, topic: str) -> list[TopicPartition]:
    """The partitions of `topic` (empty when it does not exist)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [
        TopicPartition(topic, p["partition"])
        for t in described
        if t["topic"] == topic and not t.get("error_code")
        for p in sorted(t["partitions"], key=lambda p: p["partition"])
    ]


class OwnershipListener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type information
    """Forwards partition hand-overs to a service's `take` and `release` coroutines.

    aiokafka logs and swallows an exception raised in a rebalance listener, so a partition whose
    take failed (a restore that timed out, a producer that could not start) would silently never
    be served. The listener hands such a failure to `failed` instead, which stops the service.
    """

    def __init__(
        self,
        take: Callable[[list[TopicPartition]], Awaitable[None]],
        release: Callable[[list[TopicPartition]], Awaitable[None]],
        failed: Callable[[BaseException], None],
    ) -> None:
        self.take = take
        self.release = release
        self.failed = failed

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        try:
            await self.release(revoked)
        except Exception as error:  # noqa: BLE001 - see the class docstring
            self.failed(error)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        try:
            await self.take(assigned)
        except Exception as error:  # noqa: BLE001 - see the class docstring
            self.failed(error)
