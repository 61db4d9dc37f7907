"""The options several commands share, and how their values become durations, times, Settings or an App."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, UTC
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from eventjobs.app import App
from eventjobs.cli.output import kafka_failure_in_one_line
from eventjobs.core.durations import parse_duration
from eventjobs.readside.as_of import AsOf, AsOfError, parse_as_of
from eventjobs.readside.queries import utc
from eventjobs.settings import Settings, load_settings

T = TypeVar("T")

AppOption = Annotated[str, typer.Option("--app", help="Your app as module:attribute, e.g. myproject.jobs:app.")]
OptionalAppOption = Annotated[str | None, typer.Option(
    "--app", help="Your app as module:attribute; its namespace is used (or give --namespace).")]
NamespaceOption = Annotated[str | None, typer.Option(help="Topic namespace (app name); env EVENTJOBS_NAMESPACE.")]
BootstrapOption = Annotated[str | None, typer.Option(help="Kafka bootstrap servers; env KAFKA_BOOTSTRAP_SERVERS.")]
QueueOption = Annotated[list[str] | None, typer.Option("--queue", "-q", help="Queue to create ready topics for (repeatable).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
SinceOption = Annotated[str | None, typer.Option(help="Only since TIME: ISO-8601 (UTC if no zone) or ago, e.g. 15m, 2h, 1d.")]
AsOfOption = Annotated[str | None, typer.Option(
    "--as-of", help="As the read side stood at a past moment: ISO-8601 time (UTC if no zone), an age (15m, 2h, 1d "
                    "ago) or a log position offset:PARTITION:OFFSET[,PARTITION:OFFSET...] (only those partitions).")]


class AppLoadError(ValueError):
    """`--app` does not name an eventjobs App."""


def parse_seconds(text: str, option: str) -> float:
    """A duration option ('10s', '250ms', '5m', '1.5h', '2d' or plain seconds) in seconds."""
    try:
        return parse_duration(text, default_unit="s").total_seconds()
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration; use e.g. 10s, 250ms, 5m, 1h or a number of seconds",
                                 param_hint=option) from None


def positive_seconds(text: str, option: str) -> float:
    """A duration option that must be longer than zero (a retention, a lease)."""
    seconds = parse_seconds(text, option)
    if seconds <= 0:
        raise typer.BadParameter(f"{text!r} must be longer than zero", param_hint=option)
    return seconds


def parse_since(text: str | None) -> datetime | None:
    """`--since`: an age ('15m', '2h', '1d' ago), or an ISO-8601 time (UTC when it has no zone)."""
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        return utc(datetime.fromisoformat(text))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither a time (2024-05-17T12:00:00Z) nor an age (15m, 2h, 1d)",
                                 param_hint="--since") from None


def parse_as_of_option(text: str | None) -> AsOf | None:
    """`--as-of`: a past time or a log position (`readside.as_of.parse_as_of`); a bad one is a usage error."""
    if text is None:
        return None
    try:
        return parse_as_of(text, datetime.now(UTC))
    except AsOfError as error:
        raise typer.BadParameter(str(error)) from None  # the message names --as-of and what it got


def load_app(spec: str) -> App:
    """Import `module:attribute` (the current directory is importable) and check it is an App."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"--app {spec!r} must look like module:attribute, e.g. myproject.jobs:app")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AppLoadError(f"--app {spec!r}: cannot import module {module_name!r}: {error}") from error
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        found = type(app).__name__ if app is not None else "nothing"
        raise AppLoadError(f"--app {spec!r}: {module_name}.{attribute} is {found}, not an eventjobs.App")
    return app


def app_or_namespace(app_spec: str | None, namespace: str | None) -> App:
    """The app `--app` names, or an App of `--namespace` (no jobs registered) to produce and read with."""
    if app_spec:
        return load_app(app_spec)
    settings = load_settings(namespace=namespace)
    return App(settings.namespace, settings=settings)


def settings_of(namespace: str | None, app_spec: str | None = None) -> Settings:
    """The settings of the app `--app` names, or of `--namespace` (and the environment)."""
    if app_spec:
        return load_app(app_spec).settings
    return load_settings(namespace=namespace)


#: A bulk action changes something only with --yes; without it, it shows what it would do.
YesOption = Annotated[bool, typer.Option("--yes", help="Do it; without --yes only show what would be done.")]


def run_with_app(call: Callable[[App], Awaitable[T]], app: App) -> T:
    """Run one call on the app, then close its clients; a Kafka error is one line and exit code 1."""

    async def runner() -> T:
        try:
            return await call(app)
        finally:
            await app.close()

    with kafka_failure_in_one_line():
        return asyncio.run(runner())
