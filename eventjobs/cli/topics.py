"""`eventjobs topics apply | list`: make the cluster match topics/*.yaml, and show what it has."""

from __future__ import annotations

import asyncio
import json

import typer
from rich.table import Table

from eventjobs.cli.options import BootstrapOption, JsonOption, NamespaceOption, QueueOption
from eventjobs.cli.output import out
from eventjobs.kafka.admin import apply_topics, list_topics
from eventjobs.settings import Settings, load_settings

topics_app = typer.Typer(help="Topics from topics/*.yaml: apply and inspect.", no_args_is_help=True)


def print_apply(settings: Settings, queues: list[str] | None) -> None:
    """Create the missing topics and print what was created, unchanged or drifted."""
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
    print_apply(load_settings(namespace=namespace, kafka_bootstrap=bootstrap), queue)


@topics_app.command("list")
def topics_list(
    namespace: NamespaceOption = None,
    bootstrap: BootstrapOption = None,
    queue: QueueOption = None,
    as_json: JsonOption = False,
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
