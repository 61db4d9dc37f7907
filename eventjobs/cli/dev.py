"""`eventjobs dev up | down | status | logs` (a local Kafka broker or cluster) and `eventjobs demo` (the whole system on it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from eventjobs.cli.options import NamespaceOption, QueueOption
from eventjobs.cli.output import err, out
from eventjobs.cli.topics import print_apply
from eventjobs.dev.broker import DevStackError, LocalKafka
from eventjobs.dev.cluster import CLUSTER_MIN_INSYNC, CLUSTER_REPLICATION, CLUSTER_SIZES, LocalCluster, ports_from
from eventjobs.settings import load_settings

dev_app = typer.Typer(help="A local Kafka broker, or a local three-broker cluster, for development and tests.",
                      no_args_is_help=True)

SINGLE_HOME = Path(".eventjobs/kafka")
CLUSTER_HOME = Path(".eventjobs/kafka-cluster")
SINGLE_PORT = 9092
CLUSTER_PORT = 9192  # its own ports: a cluster and the single broker can run side by side
HomeOption = Annotated[Path | None, typer.Option(
    help=f"Data and logs directory (default {SINGLE_HOME} for one broker, {CLUSTER_HOME} for a cluster).")]
PortOption = Annotated[int, typer.Option(help="Client port of the broker.")]


def _broker(home: Path, port: int, controller_port: int | None = None, heap: str = "512m") -> LocalKafka:
    return LocalKafka(home=home, port=port, controller_port=controller_port, heap=heap)


def _recorded_port(home: Path, default: int) -> int:
    try:
        return int(json.loads((home / "broker.json").read_text())["port"])
    except (OSError, ValueError, KeyError):
        return default


def _started_here(home: Path | None) -> list[tuple[Path, LocalCluster | None]]:
    """What `dev up` started: in `home` (a cluster if it holds a cluster record, else one broker),
    or, without `home`, in both default homes."""
    homes = [home] if home is not None else [SINGLE_HOME, CLUSTER_HOME]
    return [(h, LocalCluster.recorded(h)) for h in homes]


@dev_app.command("up")
def dev_up(
    home: HomeOption = None,
    port: Annotated[int | None, typer.Option(
        help=f"Client port of the broker (default {SINGLE_PORT}); of a cluster, its first node's "
             f"(default {CLUSTER_PORT}): node i listens on port + 2(i-1), its controller on the next port.")] = None,
    controller_port: Annotated[int | None, typer.Option(help="Controller port of one broker (default port+1).")]
    = None,
    brokers: Annotated[int, typer.Option(
        help="1, or a cluster of 3 (or 5) brokers that are also the controller quorum: replication factor 3, "
             "min ISR 2, and it keeps serving when any one of them is lost.")] = 1,
    heap: Annotated[str, typer.Option(help="JVM heap of each broker, e.g. 512m or 1g.")] = "512m",
    apply: Annotated[bool, typer.Option("--apply-topics/--no-apply-topics", help="Also create the topics from topics/.")] = False,
    namespace: NamespaceOption = None,
    queue: QueueOption = None,
) -> None:
    """Start the local Kafka broker or cluster (resolving its jars with Maven on first use) and wait until it answers."""
    if brokers not in CLUSTER_SIZES:
        raise DevStackError(f"--brokers must be one of {', '.join(map(str, CLUSTER_SIZES))} (one broker, or an odd "
                            f"number of controller voters so that the quorum survives losing a node), not {brokers}")
    if brokers == 1:
        bootstrap = _up_one(home or SINGLE_HOME, port or SINGLE_PORT, controller_port, heap)
    else:
        bootstrap = _up_cluster(home or CLUSTER_HOME, brokers, port, heap)
    out.print(f"bootstrap: [bold]{bootstrap}[/]")
    if apply:
        print_apply(load_settings(kafka_bootstrap=bootstrap, namespace=namespace), queue)


def _up_one(home: Path, port: int, controller_port: int | None, heap: str) -> str:
    cluster = LocalCluster.recorded(home)
    if cluster is not None:
        raise DevStackError(f"{home} holds a local cluster; start it with `eventjobs dev up --brokers {len(cluster.nodes)} "
                            f"--home {home}`, or choose another --home for a single broker")
    broker = _broker(home, port, controller_port, heap)
    with err.status("starting Kafka (first run downloads the broker jars with Maven)..."):
        status = broker.up()
    out.print(f"[green]Kafka is up[/] (pid {status.pid}); data and logs in {status.home}")
    return status.bootstrap


def _up_cluster(home: Path, brokers: int, port: int | None, heap: str) -> str:
    if (home / "data").exists() or (home / "broker.json").exists():
        raise DevStackError(f"{home} holds a single broker's data; choose another --home for a cluster")
    cluster = LocalCluster.recorded(home, heap=heap)
    if cluster is None:
        cluster = LocalCluster(home, ports_from(port or CLUSTER_PORT, brokers), heap=heap)
    elif len(cluster.nodes) != brokers or (port is not None and cluster.ports[0].port != port):
        raise DevStackError(f"{home} holds a cluster of {len(cluster.nodes)} brokers from port "
                            f"{cluster.ports[0].port}; start it as it is, or choose another --home")
    with err.status(f"starting a Kafka cluster of {brokers} brokers (first run downloads the jars with Maven)..."):
        statuses = cluster.up()
    pids = ", ".join(str(status.pid) for status in statuses)
    out.print(f"[green]Kafka cluster is up[/]: {brokers} brokers, each also a controller voter (pids {pids}); "
              f"replication factor {CLUSTER_REPLICATION}, min ISR {CLUSTER_MIN_INSYNC}; data and logs in {cluster.home}")
    return cluster.bootstrap


@dev_app.command("down")
def dev_down(home: HomeOption = None,
             timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL.")] = 30.0) -> None:
    """Stop the broker or the cluster (every broker of it) that `dev up` started (gracefully, then forcefully). Data is kept."""
    stopped = False
    for where, cluster in _started_here(home):
        if cluster is not None:
            if cluster.down(timeout_s=timeout):
                out.print(f"Kafka cluster stopped ({len(cluster.nodes)} brokers); data kept in {where}")
                stopped = True
        elif LocalKafka(home=where).down(timeout_s=timeout):
            out.print(f"Kafka stopped; data kept in {where}")
            stopped = True
    if not stopped:
        out.print("Kafka was not running")


@dev_app.command("status")
def dev_status(home: HomeOption = None, port: PortOption = SINGLE_PORT) -> None:
    """Say whether the local broker or cluster runs, and where (exit code 3 unless all of it runs)."""
    found = []
    for where, cluster in _started_here(home):
        if cluster is not None:
            statuses = cluster.status()
            running = sum(status.running for status in statuses)
            out.print(f"Kafka cluster in {cluster.home}: {running} of {len(statuses)} brokers running; "
                      f"bootstrap {cluster.bootstrap}")
            for node_id, status in zip(cluster.nodes, statuses, strict=True):
                out.print(f"  node {node_id}: " + status.describe())
            found.append(running == len(statuses))
        elif home is not None or (where / "broker.json").exists():
            status = _broker(where, _recorded_port(where, port)).status()
            out.print(status.describe())
            found.append(status.running)
    if not found:
        out.print("Kafka is not running")
    if not found or not all(found):
        raise typer.Exit(3)


@dev_app.command("logs")
def dev_logs(
    home: HomeOption = None,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    node: Annotated[int | None, typer.Option(help="Of a cluster: only this node's log.")] = None,
) -> None:
    """Show the end of the broker log (of every node of a cluster), or follow it."""
    where, cluster = next(((h, c) for h, c in _started_here(home) if c is not None), (home or SINGLE_HOME, None))
    if cluster is not None and node is not None and node not in cluster.nodes:
        raise DevStackError(f"--node {node}: the cluster in {cluster.home} has nodes {', '.join(map(str, cluster.nodes))}")
    brokers = [LocalKafka(home=where)] if cluster is None else [
        broker for node_id, broker in cluster.nodes.items() if node is None or node_id == node]
    if follow:
        subprocess.run(["tail", "-n", str(lines), "-F", *(str(broker.log_file) for broker in brokers)], check=False)
        return
    if cluster is None:
        out.print(brokers[0].tail_logs(lines), markup=False, highlight=False)
        return
    for broker in brokers:
        out.print(f"=== node {broker.node_id} ===\n{broker.tail_logs(lines)}", markup=False, highlight=False)


def demo(
    home: Annotated[Path, typer.Option(help="Broker data and logs directory.")] = SINGLE_HOME,
    port: PortOption = SINGLE_PORT,
    serve: Annotated[bool, typer.Option("--serve", help="Afterwards keep Kafka, the processor, the worker and the "
                                        "dashboard running until Ctrl-C, then stop everything this run started.")]
    = False,
    dashboard_port: Annotated[int, typer.Option(help="Port of the dashboard with --serve.")] = 8080,
    bootstrap: Annotated[str | None, typer.Option(
        help="Use the Kafka broker at host:port instead of starting the local one.")] = None,
    namespace: Annotated[str, typer.Option(help="Topic namespace of the demo's jobs.")] = "demo",
) -> None:
    """Run the whole system: local Kafka, processor, worker, real jobs (some failing), ClickHouse results."""
    from eventjobs.dev.demo_runner import DemoServeError, run_demo

    try:
        run_demo(home, port, out, serve_port=dashboard_port if serve else None, bootstrap=bootstrap,
                 namespace=namespace)
    except DemoServeError as error:
        err.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
