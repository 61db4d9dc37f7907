"""A real replicated Kafka cluster on this machine: several KRaft nodes from the same Maven jars.

`eventjobs dev up --brokers 3` runs three `LocalKafka` nodes, each a broker and a controller
voter (combined mode): a quorum of three survives the loss of any one node, the active
controller included, and three JVMs fit a development machine where six (three controllers and
three brokers) would not. Every node gets its own ports and storage under `home/node-<id>`; the
storage of all of them is formatted with one cluster id. Internal topics are replicated three
times with min ISR 2 (consumer offsets, transaction state), and so are the job topics
(`topics/*.yaml` ask for replication factor 3 and `min.insync.replicas` 2). What the cluster is
made of (ports, cluster id) is recorded in `home/cluster.json`, so a later `up` restarts the same
cluster and `down` / `status` / `logs` find it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from eventjobs.dev.broker import BrokerStatus, DevStackError, LocalKafka, free_port, new_cluster_id

#: Node counts `dev up --brokers` accepts: one node, or an odd number of controller voters, so that
#: a majority survives losing one node (3) or two (5).
CLUSTER_SIZES = (1, 3, 5)
#: Replicas of the internal topics and the default min ISR on a cluster (what the job topics use too).
CLUSTER_REPLICATION = 3
CLUSTER_MIN_INSYNC = 2
MANIFEST = "cluster.json"
QUORUM_TOOL = "org.apache.kafka.tools.MetadataQuorumCommand"


@dataclass(frozen=True)
class NodePorts:
    node_id: int
    port: int
    controller_port: int


def ports_from(base: int, brokers: int) -> list[NodePorts]:
    """Node i (1-based) listens on base + 2(i-1) for clients and the next port for the controller."""
    return [NodePorts(i, base + 2 * (i - 1), base + 2 * (i - 1) + 1) for i in range(1, brokers + 1)]


def free_ports(brokers: int) -> list[NodePorts]:
    """Ports nobody listens on right now, for tests and benchmarks that start their own cluster."""
    return [NodePorts(i, free_port(), free_port()) for i in range(1, brokers + 1)]


class LocalCluster:
    """Owns the nodes of one local cluster: starts, stops, kills and restarts them."""

    def __init__(self, home: Path | str, ports: list[NodePorts], *, heap: str = "512m", host: str = "127.0.0.1",
                 cluster_id: str | None = None) -> None:
        if len(ports) not in CLUSTER_SIZES[1:]:
            raise DevStackError(f"a local cluster has {' or '.join(map(str, CLUSTER_SIZES[1:]))} nodes "
                                f"(an odd number of controller voters), not {len(ports)}")
        self.home = Path(home).resolve()
        self.ports = ports
        self.heap = heap
        self.host = host
        self.cluster_id = cluster_id or new_cluster_id()
        voters = ",".join(f"{p.node_id}@{host}:{p.controller_port}" for p in ports)
        self.nodes = {
            p.node_id: LocalKafka(self.home / f"node-{p.node_id}", p.port, p.controller_port, heap, host,
                                  node_id=p.node_id, voters=voters, cluster_id=self.cluster_id,
                                  replication_factor=CLUSTER_REPLICATION, min_insync_replicas=CLUSTER_MIN_INSYNC)
            for p in ports
        }

    @classmethod
    def recorded(cls, home: Path | str, heap: str = "512m") -> LocalCluster | None:
        """The cluster `up` recorded in `home` (None: no cluster was ever started there)."""
        manifest = Path(home) / MANIFEST
        try:
            data = json.loads(manifest.read_text())
            ports = [NodePorts(int(n["node_id"]), int(n["port"]), int(n["controller_port"])) for n in data["nodes"]]
            return cls(home, ports, heap=heap, host=data.get("host", "127.0.0.1"), cluster_id=str(data["cluster_id"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DevStackError(f"{manifest} is not a cluster record ({error}); remove {Path(home)} to start afresh") from None

    @property
    def bootstrap(self) -> str:
        """Every node's client address: clients find the whole cluster from any one that answers."""
        return ",".join(node.bootstrap for node in self.nodes.values())

    @property
    def controllers(self) -> str:
        return ",".join(f"{self.host}:{node.controller_port}" for node in self.nodes.values())

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id]

    # -- lifecycle -------------------------------------------------------------------------
    def up(self, timeout_s: float = 120.0) -> list[BrokerStatus]:
        """Start every node that does not run (idempotent), wait until each answers and the
        cluster reports all of its brokers. A node alone cannot answer before a majority of the
        voters runs, so all are started first, then waited for."""
        self._record()
        started = {node_id: node.start() for node_id, node in self.nodes.items()}
        try:
            for node_id, proc in started.items():
                if proc is not None:
                    self.nodes[node_id].wait_ready(proc, timeout_s)
            self._wait_for_brokers(len(self.nodes), timeout_s)
        except BaseException:
            self.down(timeout_s=10)
            raise
        return self.status()

    def _record(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / MANIFEST).write_text(json.dumps({
            "cluster_id": self.cluster_id, "host": self.host,
            "nodes": [{"node_id": p.node_id, "port": p.port, "controller_port": p.controller_port} for p in self.ports],
        }, indent=2))

    def _wait_for_brokers(self, count: int, timeout_s: float) -> None:
        """Until the cluster's metadata lists `count` brokers (topics with 3 replicas need all three)."""
        from eventjobs.dev.probe import broker_count

        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            seen = broker_count(self.bootstrap)
            if seen >= count:
                return
            time.sleep(0.3)
        raise DevStackError(f"the cluster at {self.bootstrap} lists {seen} of its {count} brokers after "
                            f"{timeout_s:.0f} s. Last lines of the logs:\n{self.tail_logs(10)}")

    def down(self, timeout_s: float = 30.0) -> bool:
        """Stop every node (SIGTERM to all at once, SIGKILL after `timeout_s`); False if none ran."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            stopped = list(pool.map(lambda node: node.down(timeout_s=timeout_s), self.nodes.values()))
        return any(stopped)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (a crash: no controlled shutdown, no flush)."""
        self.nodes[node_id].kill()

    def restart(self, node_id: int, timeout_s: float = 120.0) -> BrokerStatus:
        """Start one stopped node again on its ports and storage, and wait until it answers."""
        return self.nodes[node_id].up(timeout_s)

    def status(self) -> list[BrokerStatus]:
        return [node.status() for node in self.nodes.values()]

    def tail_logs(self, lines: int = 50) -> str:
        return "\n".join(f"=== node {node_id} ===\n{node.tail_logs(lines)}" for node_id, node in self.nodes.items())

    def active_controller(self, timeout_s: float = 60.0) -> int:
        """The node id of the quorum's leader (the active controller), from Kafka's own
        `kafka-metadata-quorum describe --status` (a client's metadata names a random broker as
        "controller" in KRaft, not the active one), asked of the running nodes' controllers.
        Retried while the quorum elects a leader."""
        deadline = time.monotonic() + timeout_s
        output = ""
        while time.monotonic() < deadline:
            running = [node for node in self.nodes.values() if node.status().running]
            if running:
                controllers = ",".join(f"{self.host}:{node.controller_port}" for node in running)
                try:
                    proc = running[0].run_tool(QUORUM_TOOL, "--bootstrap-controller", controllers, "describe",
                                               "--status", timeout_s=30)
                except subprocess.TimeoutExpired:
                    output = f"kafka-metadata-quorum did not answer within 30 s (controllers {controllers})"
                else:
                    output = proc.stdout + proc.stderr
                    leader = re.search(r"^LeaderId:\s+(\d+)", output, re.MULTILINE)
                    if proc.returncode == 0 and leader and int(leader.group(1)) in self.nodes:
                        return int(leader.group(1))
            time.sleep(1)
        raise DevStackError(f"the controller quorum at {self.controllers} named no leader within "
                            f"{timeout_s:.0f} s:\n{output[-2000:]}")
