"""A broker of a three-broker cluster SIGKILLed under load, away 20 s, started again: no
acknowledged enqueue is lost, none completes twice, the services keep serving, the broker catches up.

The module runs its own cluster, started as a user would (`eventjobs dev up --brokers 3` on free
ports in a temporary directory: three KRaft nodes, each a broker and a controller voter, 512 MiB
of heap each) and stopped by `eventjobs dev down` (every node is killed in any case, also when a
test fails). Its topics have three replicas and `min.insync.replicas` 2, as topics/*.yaml ask;
producers write with `acks=all`. The processor and the worker are separate OS processes; a
harness beside them restarts one that exits, as a supervisor would, and the test counts that.

Two faults, one per test: the broker that leads most partitions of the event log (not the
active controller), then the active controller itself (also a broker: combined mode), each
SIGKILLed while jobs are enqueued (four loops, each one job every 80 ms; every tenth fails once and is retried), kept
down 20 s, started again on its ports and data. With two of three brokers the cluster keeps
accepting writes (min ISR 2) and electing leaders (a quorum of 2 of 3 controllers): the test
requires enqueues to be acknowledged and a job to complete *while the broker is down*, every
acknowledged job to complete exactly once (the log checked as in the other fault tests: no job
lost or in a wrong state, no state transition committed twice, the changelog equal to the fold
of the log), and the restarted broker to be back in the ISR of every partition it replicates
(the namespace's topics, consumer offsets, transaction state). It prints the figures
docs/reliability.md reports.

Never the shared broker: the cluster is the module's own, whatever KAFKA_BOOTSTRAP_SERVERS says.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import pytest

from eventjobs.core.state import JobStatus
from eventjobs.dev.cluster import LocalCluster
from eventjobs.kafka.admin import apply_topics, check_layout
from eventjobs.kafka.clients import admin_client
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.settings import Settings
from tests.e2e.conftest import ROOT
from tests.faults.test_process_faults import Expected, Services, check_against_the_log, stop_cleanly, wait_all_terminal
from tests.support.cli import run_cli
from tests.support.cluster import INTERNAL_TOPICS, busiest_leader, leaders, wait_in_sync
from tests.support.fault_app import build_app

pytestmark = pytest.mark.cluster

DOWN_S = 20.0  # how long the killed broker stays away
ENQUEUERS = 4  # enqueue loops at once


def _free_run(count: int) -> int:
    """A first port of `count` consecutive ports nobody listens on (the CLI numbers a cluster's
    ports from its first), below the kernel's range of ephemeral ports: a port there may be taken
    by any outgoing connection between this probe and the broker's bind."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, low - count)
        free = True
        for port in range(base, base + count):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise RuntimeError(f"no {count} consecutive free ports found below {low}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three brokers started by `eventjobs dev up --brokers 3`, stopped by `eventjobs dev down`."""
    home = tmp_path_factory.mktemp("cluster")
    up = run_cli("dev", "up", "--brokers", "3", "--home", str(home), "--port", str(_free_run(6)), "--heap", "512m")
    started = LocalCluster.recorded(home)
    try:
        assert up.returncode == 0, (up.stdout + up.stderr)[:4000]
        assert started is not None and "Kafka cluster is up: 3 brokers" in up.stdout, up.stdout
        assert f"bootstrap: {started.bootstrap}" in up.stdout
        yield started
        down = run_cli("dev", "down", "--home", str(home))
        assert down.returncode == 0 and "Kafka cluster stopped (3 brokers" in down.stdout, down.stdout + down.stderr
        assert not any(status.running for status in started.status())
    finally:
        if started is not None:
            started.down(timeout_s=10)  # whatever happened above: no JVM of this module outlives it
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class Supervisor:
    """Starts the services and starts again any that exits, as systemd or Kubernetes would."""

    services: Services
    specs: dict[str, tuple[str, ...]]
    running: dict[str, Popen[bytes]] = field(default_factory=dict)
    exits: list[str] = field(default_factory=list)

    def start_all(self) -> None:
        for name in self.specs:
            self.start(name)

    def start(self, name: str, *spec: str) -> Popen[bytes]:
        if spec:
            self.specs[name] = spec
        kind, *args = self.specs[name]
        self.running[name] = self.services.start(kind, name, *args)
        return self.running[name]

    def check(self) -> None:
        for name, process in list(self.running.items()):
            if process.poll() is not None:
                self.exits.append(f"{name} exited with {process.returncode}: {self.services.tail(name, 600)}")
                self.start(name)

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.check()
            await asyncio.sleep(0.5)


async def _replication(settings: Settings, topics: list[str]) -> dict[str, tuple[int, str | None]]:
    """Topic -> (replicas, min.insync.replicas) as the cluster has them."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = admin_client(settings)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics(topics)}
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    min_isr = {name: dict((e[0], e[1]) for e in entries).get("min.insync.replicas")
               for response in responses for _, _, _, name, entries in response.resources}
    return {t: (len(described[t]["partitions"][0]["replicas"]), min_isr.get(t)) for t in topics}


async def _layout_checks_while_named(settings: Settings, node: int, most: int = 10) -> int:
    """Run the processor's start-up check of the topics (`check_layout`: admin requests any broker
    may answer) as long as the cluster's metadata still lists the lost `node` (at most `most`
    times); every one must pass. Returns how many ran while it was listed."""
    ran = 0
    while ran < most:
        admin = admin_client(settings)
        await admin.start()
        try:
            listed = {broker["node_id"] for broker in (await admin.describe_cluster())["brokers"]}
        finally:
            await admin.close()
        if node not in listed:
            break
        assert await check_layout(settings) == 6
        ran += 1
    assert ran > 0, "the lost broker was fenced before a check ran"
    return ran


async def test_a_request_any_broker_may_answer_goes_to_another_broker_when_the_picked_one_is_lost() -> None:
    """The admin client fix in `eventjobs.kafka.clients`, without a broker: aiokafka picks node 3,
    which is gone (as the metadata names a lost broker until the controller fences it); the
    request is answered by another node. A request for node 3 itself still fails."""
    from types import SimpleNamespace

    from aiokafka.errors import NodeNotReadyError

    class Client:
        cluster = SimpleNamespace(brokers=lambda: [SimpleNamespace(nodeId=n) for n in (1, 2, 3)])

        def __init__(self) -> None:
            self.sent: list[int] = []

        def get_random_node(self) -> int:
            return 3

        async def send(self, node_id: int, request: object) -> str:
            self.sent.append(node_id)
            if node_id == 3:
                raise NodeNotReadyError(f"Attempt to send a request to node which is not ready (node id {node_id}).")
            return f"answer of {node_id}"

    admin = admin_client(Settings(kafka_bootstrap="127.0.0.1:1", namespace="unit"))
    admin._client = client = Client()  # type: ignore[assignment]
    for _ in range(10):
        assert await admin._send_request("metadata") in ("answer of 1", "answer of 2")
    assert set(client.sent) <= {1, 2, 3}
    with pytest.raises(NodeNotReadyError):
        await admin._send_request("for node 3", 3)


@pytest.mark.parametrize("victim", ["event-log leader", "active controller"])
async def test_a_broker_killed_under_load_loses_no_job_and_catches_up(
        cluster: LocalCluster, namespace: str, tmp_path: Path, processes: list[Popen[bytes]], victim: str) -> None:
    settings = Settings(kafka_bootstrap=cluster.bootstrap, namespace=namespace, topics_dir=ROOT / "topics")
    await apply_topics(settings, ["default"])
    names = TopicNames(namespace, load_specs(settings.topics_dir))
    topics = [name for name, _ in names.planned(["default"])]
    assert set((await _replication(settings, topics)).values()) == {(3, "2")}  # as topics/*.yaml ask
    app = build_app(namespace, kafka_bootstrap=cluster.bootstrap)
    supervisor = Supervisor(Services(settings, tmp_path, processes), {
        "processor": ("processor",),
        "worker": ("worker", "--concurrency", "20", "--lease", "60s"),  # a lease that outlives the outage
    })
    supervisor.start_all()
    watching = asyncio.Event()
    watcher = asyncio.create_task(supervisor.watch(watching))
    try:
        acknowledged: dict[str, Expected] = {}
        acked_at: list[float] = []  # when each acknowledgement came
        refused = 0
        enqueuing = asyncio.Event()
        enqueuing.set()

        async def enqueue_forever(lane: int) -> None:
            """One job every ~80 ms (four of these run at once, so an enqueue waiting for a new
            leader holds up a quarter of the load); not acknowledged within 5 s counts as refused."""
            nonlocal refused
            i = lane
            while enqueuing.is_set():
                fails = 1 if i % 10 == 0 else 0
                event = app._build_enqueue("work", {"i": i, "fail_times": fails})
                i += ENQUEUERS
                try:
                    await asyncio.wait_for(app.writer.append([event]), 5)
                    acknowledged[event.job_id] = Expected(JobStatus.COMPLETED, fails)
                    acked_at.append(time.monotonic())
                except Exception:  # noqa: BLE001 - a timeout or a send error: not acknowledged
                    refused += 1
                await asyncio.sleep(0.08)

        warm = await app.enqueue("work", {"i": -1})
        assert (await app.wait(warm, timeout=60)).status is JobStatus.COMPLETED  # both services serve
        producers = [asyncio.create_task(enqueue_forever(lane)) for lane in range(ENQUEUERS)]

        async def load_reaches(count: int, what: str, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while len(acknowledged) < count:
                assert time.monotonic() < deadline and not any(p.done() for p in producers), what
                await asyncio.sleep(0.05)

        await load_reaches(200, "the load did not start")
        controller = await asyncio.to_thread(cluster.active_controller)  # a JVM tool: off the event loop
        if victim == "active controller":
            node = controller
            led = sorted(p for p, leader in (await leaders(settings, names.events)).items() if leader == node)
        else:
            node, led = await busiest_leader(settings, names.events, besides=controller)
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, node)
        before_kill = sum(1 for t in acked_at if t < killed_at)
        # until the controller fences it, the metadata still names the lost broker: what a service
        # checks when it starts (the topics' layout, with admin requests) must work meanwhile
        checks_while_named = await _layout_checks_while_named(settings, node)
        # while it is away: enqueues go on being acknowledged, and a job enqueued now completes
        probe = await asyncio.wait_for(app.enqueue("work", {"i": -2}), DOWN_S)
        probed = await app.wait(probe, timeout=max(1.0, DOWN_S - (time.monotonic() - killed_at) - 1))
        completed_after_s = time.monotonic() - killed_at
        assert probed.status is JobStatus.COMPLETED
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - killed_at)))
        restarted_at = time.monotonic()
        during = sorted(t for t in acked_at if killed_at <= t < restarted_at)
        longest_gap = max(b - a for a, b in zip([killed_at, *during], [*during, restarted_at]))
        await asyncio.to_thread(cluster.restart, node)
        answered_s = time.monotonic() - restarted_at
        new_controller = await asyncio.to_thread(cluster.active_controller)  # asked afterwards: a JVM tool is slow
        catch_up_s = answered_s + await wait_in_sync(settings, node, topics + list(INTERNAL_TOPICS), timeout_s=120)
        await load_reaches(len(acknowledged) + 200, "enqueues were not acknowledged after the restart")
        enqueuing.clear()
        await asyncio.gather(*producers)

        expected = {warm: Expected(JobStatus.COMPLETED, 0), probe: Expected(JobStatus.COMPLETED, 0), **acknowledged}
        await wait_all_terminal(app, list(expected), timeout=120)  # every acknowledged job ran to the end
        watching.set()
        await watcher
        await stop_cleanly(supervisor.services, list(supervisor.running.values()))
        verdict = await check_against_the_log(settings, expected, supervisor.services.executions)
        assert during, "no enqueue was acknowledged while the broker was down"
        print(f"\n{victim}: node {node} SIGKILLed (leader of events partitions {led or '-'}; active controller "
              f"{controller} -> {new_controller}), down {restarted_at - killed_at:.1f} s; {len(expected)} jobs "
              f"acknowledged ({before_kill} before the kill, {len(during)} while the broker was down, longest pause "
              f"between two acknowledgements {longest_gap:.1f} s), {refused} enqueues not acknowledged within 5 s; "
              f"{checks_while_named} start-up layout checks passed while the metadata still named the lost broker; "
              f"a job enqueued after the kill completed {completed_after_s:.1f} s after it; the broker answered "
              f"{answered_s:.1f} s after its restart and was in the ISR of every partition it replicates after "
              f"{catch_up_s:.1f} s; {verdict.events} events; service restarts: {len(supervisor.exits)}; 0 lost, "
              f"0 duplicated transitions, changelog = fold of the log")
        for line in supervisor.exits:
            print("  exit:", line)
    finally:
        watching.set()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await app.close()
