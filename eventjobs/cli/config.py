"""`eventjobs config show`: the settings in effect (environment + defaults), secrets masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import typer
from pydantic import SecretStr
from rich.table import Table

from eventjobs.cli.options import JsonOption, NamespaceOption
from eventjobs.cli.output import out
from eventjobs.clickhouse.server_backend import redact_url
from eventjobs.settings import Settings, load_settings

config_app = typer.Typer(help="The settings in effect.", no_args_is_help=True)

MASK = "**********"


def _redacted_url(url: str) -> str:
    """The URL without credentials: a password (or a user name alone, a token) and query values
    that look secret are masked."""
    parts = urlsplit(redact_url(url))
    netloc = parts.netloc
    if "@" in netloc and ":***@" not in netloc:
        netloc = f"***@{netloc.rpartition('@')[2]}"
    query = urlencode([(key, "***" if any(w in key.lower() for w in ("pass", "token", "secret", "key")) else value)
                       for key, value in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _shown(name: str, value: Any) -> Any:
    """A setting's value as it may be printed: passwords masked, a URL's credentials redacted."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if "url" in name:
            return _redacted_url(secret)
        return MASK
    if isinstance(value, Path):
        return str(value)
    return value


def resolved(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each setting: its value (masked), its environment variable, and whether it is the default."""
    rows: dict[str, dict[str, Any]] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        aliases = getattr(field.validation_alias, "choices", None)
        env = next((a for a in aliases or [] if a.isupper()), None) if aliases else None
        default = field.get_default(call_default_factory=True)
        rows[name] = {"value": _shown(name, value), "env": env or f"EVENTJOBS_{name.upper()}",
                      "default": value == default}
    return rows


@config_app.command("show")
def config_show(namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Show every setting as resolved from the environment and the defaults; secrets masked."""
    rows = resolved(load_settings(namespace=namespace))
    if as_json:
        out.print_json(json.dumps({name: row["value"] for name, row in rows.items()}))
        return
    table = Table("setting", "value", "from", "environment variable")
    table.columns[0].no_wrap = table.columns[3].no_wrap = True
    for name, row in rows.items():
        value = row["value"]
        table.add_row(name, "-" if value is None else str(value), "default" if row["default"] else "set",
                      row["env"])
    out.print(table)
