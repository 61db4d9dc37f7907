"""The `eventjobs` command: parses options, calls the library, prints, returns an exit code."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from eventjobs.cli_readside import register as register_readside
from eventjobs.cli_runtime import AppLoadError
from eventjobs.cli_runtime import register as register_runtime
from eventjobs.dev.broker import DevStackError, LocalKafka
from eventjobs.settings import Settings, load_settings
from eventjobs.app import InvalidJobArguments, NotInDeadLetters, PayloadTooLarge
from eventjobs.clickhouse.errors import ClickHouseError
from eventjobs.core.options import InvalidJobOptions
from eventjobs.processor import ProcessorFenced
from eventjobs.registry import UnknownJob
from eventjobs.topic_admin import KafkaUnavailable, TopicLayoutError, apply_topics, list_topics
from eventjobs.topics import TopicSpecError

app = typer.Typer(
    help="Event-sourced background jobs over Apache Kafka.", no_args_is_help=True, pretty_exceptions_enable=False
)
dev_app = typer.Typer(help="A local single-node Kafka broker for development and tests.", no_args_is_help=True)
topics_app = typer.Typer(help="Topics from topics/*.yaml: apply and inspect.", no_args_is_help=True)
app.add_typer(dev_app, name="dev")
app.add_typer(topics_app, name="topics")
register_runtime(app)
register_readside(app)

out = Console()
err = Console(stderr=True)

HomeOption = Annotated[Path, typer.Option(help="Broker data and logs directory.")]
PortOption = Annotated[int, typer.Option(help="Client port of the broker.")]
NamespaceOption = Annotated[Optional[str], typer.Option(help="Topic namespace (app name); env EVENTJOBS_NAMESPACE.")]
BootstrapOption = Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers; env KAFKA_BOOTSTRAP_SERVERS.")]
QueueOption = Annotated[Optional[list[str]], typer.Option("--queue", "-q", help="Queue to create ready topics for (repeatable).")]


def _broker(home: Path, port: int, controller_port: int | None = None, heap: str = "512m") -> LocalKafka:
    return LocalKafka(home=home, port=port, controller_port=controller_port, heap=heap)


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
        _print_apply(load_settings(kafka_bootstrap=status.bootstrap, namespace=namespace), queue)


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


def _recorded_port(home: Path, default: int) -> int:
    try:
        return int(json.loads((home / "broker.json").read_text())["port"])
    except (OSError, ValueError, KeyError):
        return default


def _print_apply(settings: Settings, queues: list[str] | None) -> None:
    reports = asyncio.run(apply_topics(settings, queues))
    table = Table("topic", "action", "partitions", "replicas", "notes")
    colours = {"created": "green", "unchanged": "dim", "drift": "yellow"}
    for report in reports:
        table.add_row(report.name, f"[{colours[report.action]}]{report.action}[/]", str(report.partitions),
                      str(report.replication_factor), "\n".join(report.notes))
    out.print(table)
    created = sum(r.action == "created" for r in reports)
    drifted = sum(r.action == "drift" for r in reports)
    if created == 0 and drifted == 0:
        out.print(f"nothing to change: all {len(reports)} topics match their specs")
    else:
        out.print(f"{created} created, {drifted} with drift (reported, not changed), "
                  f"{len(reports) - created - drifted} unchanged")


@topics_app.command("apply")
def topics_apply(namespace: NamespaceOption = None, bootstrap: BootstrapOption = None, queue: QueueOption = None) -> None:
    """Create the topics that are missing; report drift of existing ones. Deletes and shrinks nothing."""
    _print_apply(load_settings(namespace=namespace, kafka_bootstrap=bootstrap), queue)


@topics_app.command("list")
def topics_list(
    namespace: NamespaceOption = None,
    bootstrap: BootstrapOption = None,
    queue: QueueOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the namespace's topics with their live partitions and configs."""
    rows = asyncio.run(list_topics(load_settings(namespace=namespace, kafka_bootstrap=bootstrap), queue))
    if as_json:
        payload = [
            {"name": name, "purpose": spec.purpose, "exists": live is not None,
             "partitions": live.partitions if live else None,
             "replication_factor": live.replication_factor if live else None,
             "configs": {k: live.configs.get(k) for k in spec.topic_configs()} if live else None}
            for name, spec, live in rows
        ]
        out.print_json(json.dumps(payload))
        return
    table = Table("topic", "partitions", "replicas", "cleanup.policy", "retention.ms", "purpose")
    for name, spec, live in rows:
        if live is None:
            table.add_row(name, "[red]missing[/]", "", "", "", spec.purpose)
        else:
            table.add_row(name, str(live.partitions), str(live.replication_factor),
                          live.configs.get("cleanup.policy", "?"), live.configs.get("retention.ms", "?"), spec.purpose)
    out.print(table)


@app.command("demo")
def demo(
    home: HomeOption = Path(".eventjobs/kafka"),
    port: PortOption = 9092,
) -> None:
    """Run the whole system: local Kafka, processor, worker, real jobs (some failing), ClickHouse results."""
    from eventjobs.demo_runner import run_demo

    run_demo(home, port, out)


# Errors the user can act on: printed as one clear message, no traceback, exit code 1.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DevStackError, KafkaUnavailable, TopicSpecError, TopicLayoutError, ValidationError, AppLoadError, UnknownJob,
    InvalidJobOptions, InvalidJobArguments, PayloadTooLarge, NotInDeadLetters, ProcessorFenced, ClickHouseError,
)


def _configure_logging() -> None:
    """Our own messages say what went wrong; aiokafka's reconnect chatter only at EVENTJOBS_LOG_LEVEL=DEBUG."""
    level = os.environ.get("EVENTJOBS_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def main() -> None:
    _configure_logging()
    try:
        result = app(standalone_mode=False)
        # click returns the code of a `typer.Exit` instead of raising it in this mode
        sys.exit(result if isinstance(result, int) else 0)
    except USER_ERRORS as error:
        err.print(f"[red]error:[/] {error}", highlight=False)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as error:
        # usage errors (bad option values, missing arguments) from typer's bundled click
        if hasattr(error, "show") and isinstance(getattr(error, "exit_code", None), int):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
