"""`eventjobs config show`: the settings in effect (environment + defaults), secrets masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr
from rich.table import Table

from eventjobs.cli.options import JsonOption, NamespaceOption
from eventjobs.cli.output import out
from eventjobs.clickhouse.server_url import redact_url
from eventjobs.settings import Settings, load_settings

config_app = typer.Typer(help="The settings in effect.", no_args_is_help=True)

MASK = "**********"


def _shown(name: str, value: Any) -> Any:
    """A setting's value as it may be printed: passwords masked, a URL's credentials redacted."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if "url" in name:
            return redact_url(secret)
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
