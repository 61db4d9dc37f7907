"""`eventjobs projections apply | status`: the ClickHouse tables from projections/*.sql."""

from __future__ import annotations

from contextlib import closing

import typer
from rich.table import Table

from eventjobs.cli.options import JsonOption, NamespaceOption, settings_of
from eventjobs.cli.output import format_time, out, print_json
from eventjobs.clickhouse import open_backend
from eventjobs.readside.migrations import apply_migrations, default_projections_dir, migration_status

projections_app = typer.Typer(help="ClickHouse projections from projections/*.sql.", no_args_is_help=True)


@projections_app.command("apply")
def projections_apply(namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Apply the projection files not applied yet, in order (applying twice changes nothing)."""
    with closing(open_backend(settings_of(namespace), writes=True)) as backend:
        reports = apply_migrations(backend, default_projections_dir())
    if as_json:
        print_json(reports)
        return
    for report in reports:
        colour = "green" if report.action == "applied" else "dim"
        out.print(f"[{colour}]{report.action:8}[/] {report.version:03d}_{report.name}.sql ({report.statements} statements)")
    applied = sum(r.action == "applied" for r in reports)
    out.print(f"{applied} applied, {len(reports) - applied} already applied")


@projections_app.command("status")
def projections_status(namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Which projection files are applied, pending, or changed since they were applied."""
    # writes=True: it creates the migration log if missing, which the read-only read API refuses
    with closing(open_backend(settings_of(namespace), writes=True)) as backend:
        statuses = migration_status(backend, default_projections_dir())
    if as_json:
        print_json(statuses)
        return
    table = Table("version", "name", "applied at (UTC)", "note")
    for s in statuses:
        note = "[red]changed since applied[/]" if s.changed else ("" if s.applied_at else "[yellow]pending[/]")
        table.add_row(f"{s.version:03d}", s.name, format_time(s.applied_at), note)
    out.print(table)
