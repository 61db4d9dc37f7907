"""What commands print through: stdout and stderr, JSON, times, how fresh a read-side answer is, and
the one line a Kafka failure becomes in the commands that read the log for the read side."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from typing import Any, TypeVar

import typer
from aiokafka.errors import KafkaError
from rich.console import Console

from eventjobs.clickhouse import Backend, open_backend
from eventjobs.kafka.offsets import end_offsets
from eventjobs.readside import queries as query
from eventjobs.readside.as_of import AsOf
from eventjobs.readside.projector import events_topic
from eventjobs.settings import Settings, load_settings

out = Console()
err = Console(stderr=True)


T = TypeVar("T")

def print_json(payload: Any) -> None:
    """Read-side results (dataclasses, lists of them) as JSON on stdout, timestamps ISO-8601 UTC."""
    out.print_json(query.to_json(payload).decode())


def format_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


def format_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}s"


def freshness(settings: Settings, backend: Backend) -> query.Freshness:
    """How far the read side is behind the log (without the log's end when Kafka does not answer)."""
    return query.freshness(backend, _end_offsets(settings))


def show_read_side(
    namespace: str | None, ask: Callable[[Backend], T], as_json: bool, key: str, render: Callable[[T], None],
    as_of: AsOf | None = None,
) -> None:
    """One read-side command: ask ClickHouse, then print the answer as JSON (`{key: answer,
    "freshness": ...}`, and `"as_of"` when the answer is as of a past moment) or through `render`
    (after a line naming that moment), followed by how fresh the read side is."""
    settings = load_settings(namespace=namespace)
    with closing(open_backend(settings)) as backend:
        answer = ask(backend)
        fresh = freshness(settings, backend)
    if as_json:
        print_json({key: answer, "freshness": fresh.as_json(), **({"as_of": as_of.as_json()} if as_of else {})})
        return
    if as_of is not None:
        out.print(as_of.describe(), style="bold", highlight=False)
    render(answer)
    err.print(fresh.describe(), style="dim")


def _end_offsets(settings: Settings) -> dict[int, int] | None:
    """The event log's end offsets, or None when Kafka does not answer within a few seconds."""

    try:
        return asyncio.run(asyncio.wait_for(end_offsets(settings, events_topic(settings), request_timeout_ms=5000), 8))
    except Exception:  # noqa: BLE001 - freshness is informative: never fail a query because Kafka is away
        return None


@contextmanager
def kafka_failure_in_one_line() -> Iterator[None]:
    """A Kafka error becomes one line naming the broker that did not answer, and exit code 1."""
    try:
        yield
    except KafkaError as error:
        err.print(f"[red]error:[/] Kafka at {_bootstrap_hint()} failed: {error!r}; check KAFKA_BOOTSTRAP_SERVERS "
                  f"and that the broker runs", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _bootstrap_hint() -> str:
    try:
        return load_settings().kafka_bootstrap
    except Exception:  # noqa: BLE001 - only a hint inside another error's message
        return "the configured bootstrap servers"


PREVIEW_IDS = 5  # job ids a bulk action's preview shows


def preview_bulk(action: str, ids: list[str], confirm: str) -> None:
    """What a bulk action run without --yes prints: how many jobs it would touch and a few of their
    ids; nothing is changed (exit code 0), and `confirm` says how to run it for real."""
    shown = ", ".join(ids[:PREVIEW_IDS]) + (f", ... ({len(ids) - PREVIEW_IDS} more)" if len(ids) > PREVIEW_IDS else "")
    out.print(f"would {action} {len(ids)} job(s){': ' + shown if ids else ''}", highlight=False)
    if ids:
        out.print(f"nothing changed; to {action} them, run again with --yes: {confirm}", highlight=False)


def rerun_with_yes() -> str:
    """This command line with --yes added, to show how to confirm a bulk action."""
    import shlex
    import sys

    return shlex.join(["eventjobs", *sys.argv[1:], "--yes"])


def usage_error(message: str) -> typer.Exit:
    """A wrong combination of options: one line on stderr, exit code 2 (as click's usage errors)."""
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)
