"""`eventjobs limits list | set | reset`: concurrency and rate limits, seen and changed at run time.

A limit is a job option (`Limit(...)`, docs/flow-control.md); `set` writes a `limit_changed` event
to the key's owner, which from then on uses the operator's max, rate and burst instead of its
jobs' options, until `reset`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from eventjobs.cli.options import JsonOption, NamespaceOption, OptionalAppOption, app_or_namespace, run_with_app
from eventjobs.cli.output import format_time, out, show_read_side
from eventjobs.readside import queries as query

limits_app = typer.Typer(help="Concurrency and rate limits: each key's slots and rate, changed at run time.",
                         no_args_is_help=True)
LimitArgument = Annotated[str, typer.Argument(help="The limit's name (the job name unless the Limit names it).",
                                              metavar="LIMIT", show_default=False)]
KeyOption = Annotated[str | None, typer.Option(help="The key (default: the limit without key, '*').")]


@limits_app.command("list")
def limits_list(
    queue: Annotated[str | None, typer.Option(help="Only keys that jobs of this queue asked a slot of.")] = None,
    limit: Annotated[int, typer.Option(help="Most keys to show.")] = 50,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each key of a limit, the busiest first: slots in use, jobs waiting, max and rate (read side)."""

    def render(keys: list[query.LimitKey]) -> None:
        table = Table("limit", "key", "in use / max", "waiting", "rate", "set", "last activity (UTC)")
        for k in keys:
            rate = (f"{k.rate} (burst {k.burst})" if k.burst > 1 else k.rate) if k.rate else "—"
            table.add_row(k.limit, k.key, f"{k.in_use} / {k.max if k.max is not None else 'no cap'}", str(k.waiting),
                          rate, "at run time" if k.set_at_run_time else "by the jobs", format_time(k.last_activity_at))
        out.print(table)

    show_read_side(namespace, lambda backend: query.limit_keys(backend, queue=queue, limit=limit), as_json, "limits",
                   render)


@limits_app.command("set")
def limits_set(
    name: LimitArgument,
    key: KeyOption = None,
    max_: Annotated[int | None, typer.Option("--max", help="Jobs of the key claimed or running at once.")] = None,
    rate: Annotated[str | None, typer.Option(help="Starts per second, minute or hour: 20/s, 100/m, 5000/h.")] = None,
    burst: Annotated[int | None, typer.Option(help="Starts let through at once beyond the rate.")] = None,
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set a limit's max and rate for a key from now on, whatever its jobs' options say (a max
    alone: no rate; a rate alone: no cap). Raising max starts waiting jobs at once."""
    owner = run_with_app(lambda a: a.set_limit(name, key=key, max=max_, rate=rate, burst=burst),
                         app_or_namespace(app, namespace))
    if as_json:
        out.print_json(json.dumps({"limit": name, "key": key or "*", "owner_id": owner, "max": max_, "rate": rate,
                                   "burst": burst or 1}))
        return
    what = ", ".join(part for part in (f"max {max_}" if max_ is not None else "no cap",
                                       f"rate {rate}" + (f" (burst {burst})" if burst else "") if rate else "no rate"))
    out.print(f"limit {name!r} key {key or '*'!r}: {what}, from now on (owner {owner})", markup=False)


@limits_app.command("reset")
def limits_reset(
    name: LimitArgument,
    key: KeyOption = None,
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Hand a limit's max and rate for a key back to its jobs' own options (from their next request)."""
    owner = run_with_app(lambda a: a.reset_limit(name, key=key), app_or_namespace(app, namespace))
    out.print(f"limit {name!r} key {key or '*'!r}: back to the jobs' options (owner {owner})", markup=False)
