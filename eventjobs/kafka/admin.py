"""Make a cluster match `topics/`: create what is missing, report drift, never delete or shrink."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

from eventjobs.kafka.clients import admin_client
from eventjobs.settings import Settings
from eventjobs.core.options import DEFAULT_QUEUE
from eventjobs.kafka.topics import PRIORITIES, TopicNames, TopicSpec, load_specs

log = logging.getLogger("eventjobs.kafka.admin")

# Configs whose broker value may legitimately differ from the spec on a small cluster.
_CAPPED_TO_REPLICATION = "min.insync.replicas"


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached; the message names the bootstrap address."""


@dataclass
class TopicReport:
    name: str
    action: str  # "created" | "unchanged" | "drift"
    partitions: int
    replication_factor: int
    notes: list[str] = field(default_factory=list)


@dataclass
class LiveTopic:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


def effective_configs(spec: TopicSpec, replication_factor: int) -> dict[str, str]:
    configs = spec.topic_configs()
    if _CAPPED_TO_REPLICATION in configs:
        configs[_CAPPED_TO_REPLICATION] = str(min(int(configs[_CAPPED_TO_REPLICATION]), replication_factor))
    return configs


async def _connect(settings: Settings) -> AIOKafkaAdminClient:
    admin = admin_client(settings)
    try:
        await admin.start()
    except (KafkaError, OSError) as error:
        await admin.close()
        raise KafkaUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({error}); "
            f"start it with `eventjobs dev up` or set KAFKA_BOOTSTRAP_SERVERS"
        ) from error
    return admin


async def _broker_count(admin: AIOKafkaAdminClient) -> int:
    cluster = await admin.describe_cluster()
    return max(1, len(cluster.get("brokers", [])))


async def describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, LiveTopic]:
    """Partitions, replication factor and configs of those `names` that exist."""
    existing = set(await admin.list_topics())
    wanted = [name for name in names if name in existing]
    if not wanted:
        return {}
    metadata = {topic["topic"]: topic for topic in await admin.describe_topics(wanted)}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, error_message, _type, resource_name, entries in response.resources:
            if error_code:
                raise for_code(error_code)(f"describe configs of {resource_name}: {error_message}")
            configs[resource_name] = {entry[0]: entry[1] for entry in entries}
    live: dict[str, LiveTopic] = {}
    for name in wanted:
        partitions = metadata[name]["partitions"]
        replication = len(partitions[0]["replicas"]) if partitions else 0
        live[name] = LiveTopic(name, len(partitions), replication, configs.get(name, {}))
    return live


async def wait_for_topics(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Creation is acknowledged by the controller before every partition has a leader in the
    brokers' metadata; wait until it does, so that the first writes do not bounce."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    missing = set(names)
    while missing:
        listed = set(await admin.list_topics())
        ready = list(missing & listed)
        if ready:
            for topic in await admin.describe_topics(ready):
                partitions = topic.get("partitions") or []
                if not topic.get("error_code") and partitions and all(p["leader"] >= 0 for p in partitions):
                    missing.discard(topic["topic"])
        if not missing:
            return
        if loop.time() > deadline:
            raise KafkaUnavailable(f"topics {sorted(missing)} were created but have no leader after {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


def replication_drift(spec: TopicSpec, live: LiveTopic, brokers: int) -> list[str]:
    """Fewer replicas than the spec asks for and the cluster could hold (`min(spec, brokers)`): a
    topic created on a smaller cluster keeps its replication factor when brokers are added."""
    wanted = min(spec.replication_factor, brokers)
    if live.replication_factor >= wanted:
        return []
    return [(f"has {live.replication_factor} replica(s), spec wants {spec.replication_factor} and the cluster has "
             f"{brokers} broker(s): losing a broker can lose acknowledged writes (not changed automatically: "
             f"reassign its partitions with kafka-reassign-partitions, docs/operations.md#a-replicated-cluster)")]


def drift(spec: TopicSpec, live: LiveTopic, replication_factor: int, brokers: int | None = None) -> list[str]:
    """What differs between the spec and the live topic, in words an operator can act on."""
    notes: list[str] = replication_drift(spec, live, brokers) if brokers is not None else []
    if live.partitions < spec.partitions:
        notes.append(
            f"has {live.partitions} partitions, spec wants {spec.partitions} "
            f"(not changed automatically: adding partitions remaps keys; use kafka-topics --alter)"
        )
    elif live.partitions > spec.partitions:
        notes.append(f"has {live.partitions} partitions, more than the spec's {spec.partitions} (never shrunk)")
    for key, wanted in sorted(effective_configs(spec, replication_factor).items()):
        actual = live.configs.get(key)
        if actual != wanted:
            notes.append(f"{key} is {actual!r} on the broker, spec says {wanted!r}")
    return notes


async def apply_topics(settings: Settings, queues: list[str] | None = None) -> list[TopicReport]:
    """Create missing topics, report drift of existing ones. Idempotent; deletes nothing."""
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    planned = names.planned(queues or [DEFAULT_QUEUE])
    admin = await _connect(settings)
    try:
        brokers = await _broker_count(admin)
        live = await describe(admin, [name for name, _ in planned])
        reports: list[TopicReport] = []
        to_create: list[NewTopic] = []
        for name, spec in planned:
            # a topic to create logs its cap (the report below carries it too)
            replication = min(spec.replication_factor, brokers) if name in live else capped_replication(name, spec, brokers)
            capped = (
                [f"replication factor capped to {replication} (spec {spec.replication_factor}, cluster has {brokers} broker(s))"]
                if replication < spec.replication_factor
                else []
            )
            if name in live:
                notes = drift(spec, live[name], replication, brokers)
                reports.append(
                    TopicReport(name, "drift" if notes else "unchanged", live[name].partitions,
                                live[name].replication_factor, notes)
                )
                continue
            to_create.append(
                NewTopic(name, spec.partitions, replication, topic_configs=effective_configs(spec, replication))
            )
            reports.append(TopicReport(name, "created", spec.partitions, replication, capped))
        await _create(admin, to_create)
        return reports
    finally:
        await admin.close()


async def list_topics(settings: Settings, queues: list[str] | None = None) -> list[tuple[str, TopicSpec, LiveTopic | None]]:
    """Every planned topic of the namespace with its live state (None when it does not exist)."""
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    admin = await _connect(settings)
    try:
        planned = names.planned(queues or [DEFAULT_QUEUE])
        existing = set(await admin.list_topics())
        prefix = f"{settings.namespace}.ready."
        extra_ready = sorted(t for t in existing if t.startswith(prefix))
        known = {name for name, _ in planned}
        ready_spec = names.specs["ready"].spec
        planned += [(name, ready_spec) for name in extra_ready if name not in known]
        live = await describe(admin, [name for name, _ in planned])
        return [(name, spec, live.get(name)) for name, spec in planned]
    finally:
        await admin.close()


class TopicLayoutError(RuntimeError):
    """Topics exist but do not fit together (missing, or not co-partitioned)."""


async def check_layout(settings: Settings) -> int:
    """The event log, the state changelog and the timers must exist with one partition count.

    The processor writes a job's state and timers to the partition number of the job's events;
    with different counts a job's records would land on different owners. Returns the count.
    Those three topics replicated less than their specs ask for on this cluster (or acknowledged
    by one replica) are logged as warnings: the processor runs, but a broker loss could lose jobs.
    """
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    wanted = [names.events, names.job_state, names.timers, names.limit_state, names.dead_letters, names.quarantine]
    admin = await _connect(settings)
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            raise TopicLayoutError(
                f"topics {missing} do not exist; create them with `eventjobs topics apply --namespace {settings.namespace}`"
            )
        durable = await describe(admin, wanted[:4])
        brokers = await _broker_count(admin)
    finally:
        await admin.close()
    counts = {name: topic.partitions for name, topic in durable.items()}
    specs = {names.events: names.specs["events"].spec, names.job_state: names.specs["job-state"].spec,
             names.timers: names.specs["timers"].spec, names.limit_state: names.specs["limit-state"].spec}
    for name, topic in durable.items():  # replicated as the spec asks? (a warning: the processor still runs)
        for note in replication_drift(specs[name], topic, brokers) + min_insync_drift(topic):
            log.warning("topic %s %s", name, note)
    if len(set(counts.values())) != 1:
        raise TopicLayoutError(
            f"{names.events}, {names.job_state}, {names.timers} and {names.limit_state} must have the same number of "
            f"partitions, "
            f"found {counts}"
        )
    return counts[names.events]


def min_insync_drift(live: LiveTopic) -> list[str]:
    """A replicated topic whose writes are acknowledged by a single replica (`acks=all` then waits
    for the leader alone, and a lost leader can lose acknowledged writes)."""
    value = live.configs.get(_CAPPED_TO_REPLICATION)
    if live.replication_factor > 1 and value is not None and value.isdigit() and int(value) < 2:
        return [(f"has min.insync.replicas {value} with {live.replication_factor} replicas: an acknowledged write "
                 f"may live on one broker only (set it to 2, as topics/*.yaml do)")]
    return []


async def ensure_ready_topics(settings: Settings, routes: list[str]) -> list[str]:
    """Create the ready topics (every priority) of these queue routes if they are missing."""
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    spec = names.specs["ready"].spec
    admin = await _connect(settings)
    try:
        wanted = [name for name, _ in names.planned(routes) if name.startswith(f"{settings.namespace}.ready.")]
        await _create_missing(admin, dict.fromkeys(wanted, spec))
        return wanted
    finally:
        await admin.close()


async def ensure_single_topics(settings: Settings, keys: list[str]) -> list[str]:
    """Create these single topics (spec file stems, e.g. "workers") if missing: a namespace whose
    topics were applied before a topic was added gets it from the first service that needs it."""
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    specs = {names.specs[key].spec.render(settings.namespace): names.specs[key].spec for key in keys}
    admin = await _connect(settings)
    try:
        await _create_missing(admin, specs)
        return list(specs)
    finally:
        await admin.close()


async def create_missing_topics(settings: Settings, specs: dict[str, TopicSpec]) -> None:
    """Create the topics of `specs` (name -> spec, e.g. a spec with another partition count) that do not exist."""
    admin = await _connect(settings)
    try:
        await _create_missing(admin, specs)
    finally:
        await admin.close()


async def _create_missing(admin: AIOKafkaAdminClient, specs: dict[str, TopicSpec]) -> None:
    """Create the topics of `specs` (name -> spec) that do not exist, replication capped at the brokers."""
    existing = set(await admin.list_topics())
    missing = [name for name in specs if name not in existing]
    if missing:
        brokers = await _broker_count(admin)
        topics = []
        for name in missing:
            spec = specs[name]
            replication = capped_replication(name, spec, brokers)
            topics.append(NewTopic(name, spec.partitions, replication, topic_configs=effective_configs(spec, replication)))
        await _create(admin, topics)


def capped_replication(name: str, spec: TopicSpec, brokers: int) -> int:
    """The spec's replication factor, at most the cluster's brokers; a cap is logged (a warning
    unless the cluster is a single development broker, where one replica is all there can be)."""
    replication = min(spec.replication_factor, brokers)
    if replication < spec.replication_factor:
        log.log(logging.INFO if brokers == 1 else logging.WARNING,
                "creating %s with replication factor %d and min.insync.replicas %s: the spec asks for %d, the "
                "cluster has %d broker(s)", name, replication,
                effective_configs(spec, replication).get(_CAPPED_TO_REPLICATION, "(broker default)"),
                spec.replication_factor, brokers)
    return replication


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    """Create `topics` and wait until they are usable; one that exists already is fine (36,
    TOPIC_ALREADY_EXISTS: a concurrent apply or start won the race)."""
    if not topics:
        return
    response = await admin.create_topics(topics)
    for topic_name, error_code, *rest in response.topic_errors:
        if error_code and error_code != 36:
            raise for_code(error_code)(f"creating topic {topic_name}: {rest[0] if rest else ''}")
    await wait_for_topics(admin, [topic.name for topic in topics])


async def ready_routes(settings: Settings) -> list[str]:
    """The queue routes (`queue` or `queue.caps-<digest>`) that have ready topics on the cluster."""
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    admin = await _connect(settings)
    try:
        existing = await admin.list_topics()
    finally:
        await admin.close()
    routes: set[str] = set()
    for priority in PRIORITIES:
        head, _, tail = names.ready("\x00", priority).partition("\x00")
        for topic in existing:
            if len(topic) > len(head) + len(tail) and topic.startswith(head) and topic.endswith(tail):
                route = topic[len(head):len(topic) - len(tail)]
                if names.ready(route, priority) == topic:
                    routes.add(route)
    return sorted(routes)
