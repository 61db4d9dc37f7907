"""`eventjobs topics apply | list`: make the cluster match topics/*.yaml, and show what it has."""

from __future__ import annotations

import asyncio
import json

import typer
from rich.table import Table

from eventjobs.app import App
from eventjobs.cli.options import (
    BootstrapOption,
    JsonOption,
    NamespaceOption,
    OptionalAppOption,
    QueueOption,
    load_app,
)
from eventjobs.cli.output import out
from eventjobs.core.records import capability_route
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


def app_routes(app: App) -> list[str]:
    """The ready-topic routes the app's jobs are published to: each job's queue, and for a job
    that needs capabilities its capability route (as the worker subscribes to it)."""
    routes = {d.options.queue for d in app.jobs.values()}
    routes |= {capability_route(d.options.queue, d.options.capabilities) for d in app.jobs.values()}
    return sorted(routes)


@topics_app.command("apply")
def topics_apply(
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
    bootstrap: BootstrapOption = None,
    queue: QueueOption = None,
) -> None:
    """Create the topics that are missing; report drift of existing ones. Deletes and shrinks nothing.

    With --app: the app's namespace, and the ready topics of all its jobs' queues and capability routes; --queue adds queues, --namespace overrides the namespace."""
    if not app:
        print_apply(load_settings(namespace=namespace, kafka_bootstrap=bootstrap), queue)
        return
    target = load_app(app)
    overrides = {key: value for key, value in (("namespace", namespace), ("kafka_bootstrap", bootstrap))
                 if value is not None}
    settings = load_settings(**{**target.settings.model_dump(), **overrides}) if overrides else target.settings
    routes = app_routes(target)
    queues = routes + [q for q in (queue or []) if q not in routes]
    print_apply(settings, queues or None)


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
