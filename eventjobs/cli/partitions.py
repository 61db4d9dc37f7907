"""`eventjobs partitions grow`: a namespace's live jobs carried into a new namespace with more partitions."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from eventjobs.cli.options import BootstrapOption, NamespaceOption
from eventjobs.cli.output import err, kafka_failure_in_one_line, out
from eventjobs.runtime.grow import grow
from eventjobs.settings import load_settings

partitions_app = typer.Typer(help="More partitions for the job topics (events, job-state, timers, limit-state).",
                             no_args_is_help=True)


@partitions_app.command("grow")
def partitions_grow(
    into: Annotated[str, typer.Option("--into", help="The new namespace, which must not exist yet.")],
    to: Annotated[int, typer.Option("--to", help="Partitions of its event log, changelog and timers (more than now).")],
    namespace: NamespaceOption = None,
    bootstrap: BootstrapOption = None,
    topics_dir: Annotated[str | None, typer.Option(help="Topic specs of both namespaces (default: EVENTJOBS_TOPICS_DIR).")]
    = None,
) -> None:
    """Carry every job the processor holds (history, state, timers, ready records, dead letters), the events not
    folded yet, the schedules and the queue pauses into a new namespace with --to partitions; then pause the old
    namespace's queues. Every processor and worker of the namespace must be stopped first (docs/operations.md)."""
    overrides = {key: value for key, value in (("kafka_bootstrap", bootstrap), ("topics_dir", topics_dir)) if value}
    source = load_settings(namespace=namespace, **overrides)
    target = load_settings(**{**source.model_dump(), "namespace": into})

    def progress(message: str) -> None:
        err.print(f"[dim]{message}[/]", highlight=False)

    with kafka_failure_in_one_line():
        report = asyncio.run(grow(source, target, to, progress=progress))
    jobs = ", ".join(f"{status} {count:,}" for status, count in sorted(report.jobs.items())) or "none"
    out.print(f"[green]{report.source} grown into {report.target}[/]: {report.partitions_before} -> {report.partitions} "
              f"partitions")
    out.print(f"jobs carried over: {sum(report.jobs.values()):,} ({jobs}); {report.moved:,} on another partition number")
    out.print(f"written: {report.history_events:,} history events, {report.tail_events:,} events not folded yet, "
              f"{report.timers:,} timers, {report.ready:,} ready records, {report.dead_letters:,} dead letters, "
              f"{report.schedule_records:,} schedule records, {report.queue_controls:,} queue pause or resume records, "
              f"{report.slot_tables:,} slot tables")
    out.print(f"paused in {report.source}: {', '.join(report.paused_queues) or 'no queues'}")
    out.print(f"next: set EVENTJOBS_NAMESPACE={report.target} (or App(\"{report.target}\")) for every producer, "
              f"processor, worker and projector, and set partitions: {report.partitions} in topics/events.yaml, "
              f"job-state.yaml, timers.yaml and limit-state.yaml")
