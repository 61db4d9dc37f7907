"""`eventjobs dev up | down | status | logs` (a local Kafka broker) and `eventjobs demo` (the whole system on it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated, Optional

import typer

from eventjobs.cli.options import NamespaceOption, QueueOption
from eventjobs.cli.output import err, out
from eventjobs.cli.topics import print_apply
from eventjobs.dev.broker import LocalKafka
from eventjobs.settings import load_settings

dev_app = typer.Typer(help="A local single-node Kafka broker for development and tests.", no_args_is_help=True)

HomeOption = Annotated[Path, typer.Option(help="Broker data and logs directory.")]
PortOption = Annotated[int, typer.Option(help="Client port of the broker.")]


def _broker(home: Path, port: int, controller_port: int | None = None, heap: str = "512m") -> LocalKafka:
    return LocalKafka(home=home, port=port, controller_port=controller_port, heap=heap)


def _recorded_port(home: Path, default: int) -> int:
    try:
        return int(json.loads((home / "broker.json").read_text())["port"])
    except (OSError, ValueError, KeyError):
        return default


@dev_app.command("up")
def dev_up(
    home: HomeOption = Path(".eventjobs/kafka"),
    port: PortOption = 9092,
    controller_port: Annotated[Optional[int], typer.Option(help="Controller port (default port+1).")] = None,
    heap: Annotated[str, typer.Option(help="JVM heap, e.g. 512m or 1g.")] = "512m",
    apply: Annotated[bool, typer.Option("--apply-topics/--no-apply-topics", help="Also create the topics from topics/.")] = False,
    namespace: NamespaceOption = None,
    queue: QueueOption = None,
) -> None:
    """Start the local Kafka broker (resolving its jars with Maven on first use) and wait until it answers."""
    broker = _broker(home, port, controller_port, heap)
    with err.status("starting Kafka (first run downloads the broker jars with Maven)..."):
        status = broker.up()
    out.print(f"[green]Kafka is up[/] (pid {status.pid}); data and logs in {status.home}")
    out.print(f"bootstrap: [bold]{status.bootstrap}[/]")
    if apply:
        print_apply(load_settings(kafka_bootstrap=status.bootstrap, namespace=namespace), queue)


@dev_app.command("down")
def dev_down(home: HomeOption = Path(".eventjobs/kafka"), timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL.")] = 30.0) -> None:
    """Stop the broker that `dev up` started (gracefully, then forcefully). Data is kept."""
    stopped = LocalKafka(home=home).down(timeout_s=timeout)
    out.print("Kafka stopped; data kept" if stopped else "Kafka was not running")


@dev_app.command("status")
def dev_status(home: HomeOption = Path(".eventjobs/kafka"), port: PortOption = 9092) -> None:
    """Say whether the local broker runs, and where."""
    status = _broker(home, _recorded_port(home, port)).status()
    out.print(status.describe())
    if not status.running:
        raise typer.Exit(3)


@dev_app.command("logs")
def dev_logs(
    home: HomeOption = Path(".eventjobs/kafka"),
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
) -> None:
    """Show the end of the broker log (or follow it)."""
    broker = LocalKafka(home=home)
    if follow:
        subprocess.run(["tail", "-n", str(lines), "-F", str(broker.log_file)])
        return
    out.print(broker.tail_logs(lines), markup=False, highlight=False)


def demo(
    home: HomeOption = Path(".eventjobs/kafka"),
    port: PortOption = 9092,
    serve: Annotated[bool, typer.Option("--serve", help="Afterwards keep Kafka, the processor, the worker and the "
                                        "dashboard running until Ctrl-C, then stop everything this run started.")]
    = False,
    dashboard_port: Annotated[int, typer.Option(help="Port of the dashboard with --serve.")] = 8080,
    bootstrap: Annotated[Optional[str], typer.Option(
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
