"""The one interface the read side talks to, whichever ClickHouse engine answers.

Both backends send the same SQL and read results in the same wire format (`JSONCompact`, decoded
here by the column types ClickHouse reports) and write rows in the same format
(`JSONCompactColumns`, encoded here with orjson). Only the transport differs: an in-process chdb
engine or HTTP to a server (or to the projector's read API). So a query returns the same Python
values from either, which is what the conformance tests check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone, UTC
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import orjson

BackendKind = Literal["chdb", "server"]
Parameters = Mapping[str, Any]

# Output settings both backends apply, so that JSON numbers are numbers, not strings.
OUTPUT_SETTINGS: dict[str, str] = {
    "output_format_json_quote_64bit_integers": "0",
    "output_format_json_quote_64bit_floats": "0",
    "output_format_json_quote_denormals": "0",
}
# Input settings for `JSONCompactColumns` inserts: ISO-8601 timestamps with a zone are accepted.
INSERT_SETTINGS: dict[str, str] = {"date_time_input_format": "best_effort"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Result:
    """Rows of a query with their column names and ClickHouse types."""

    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def scalar(self) -> Any:
        """The first column of the first row (None when there are no rows)."""
        return self.rows[0][0] if self.rows else None


class Backend(Protocol):
    """What the read side needs from ClickHouse. `database` is the default for unqualified names."""

    kind: BackendKind
    database: str

    def describe(self) -> str:
        """Where this backend points, safe to print (no password)."""
        ...

    def command(self, sql: str, parameters: Parameters | None = None, *, database: str | None = None) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... SELECT, EXCHANGE)."""
        ...

    def query(self, sql: str, parameters: Parameters | None = None, *, database: str | None = None) -> Result:
        """Run a SELECT; `{name:Type}` placeholders are bound from `parameters` by the engine."""
        ...

    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]], *,
               database: str | None = None) -> int:
        """Insert column-oriented `data` (one sequence per column) as one block; returns the row count."""
        ...

    def close(self) -> None:
        """Release the engine or connection."""
        ...


def quote_identifier(name: str) -> str:
    """`name` as a ClickHouse identifier (back-quoted unless it is a plain word)."""
    if _IDENTIFIER.match(name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def qualified(database: str | None, table: str) -> str:
    """`db.table` with both parts quoted as needed, or just the table."""
    return f"{quote_identifier(database)}.{quote_identifier(table)}" if database else quote_identifier(table)


def insert_statement(table: str, columns: Sequence[str], database: str | None) -> str:
    """The INSERT head both backends send before `JSONCompactColumns` data."""
    cols = ", ".join(quote_identifier(c) for c in columns)
    settings = ", ".join(f"{key} = '{value}'" for key, value in INSERT_SETTINGS.items())
    return f"INSERT INTO {qualified(database, table)} ({cols}) SETTINGS {settings}"


def encode_columns(columns: Sequence[str], data: Sequence[Sequence[Any]]) -> bytes:
    """`JSONCompactColumns` bytes for column-oriented data; checks the shape first."""
    if len(data) != len(columns):
        raise ValueError(f"insert got {len(data)} data columns for {len(columns)} column names {list(columns)}")
    lengths = {len(column) for column in data}
    if len(lengths) > 1:
        raise ValueError(f"insert columns have different lengths {sorted(lengths)}")
    return orjson.dumps([list(column) if not isinstance(column, list) else column for column in data],
                        default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} for ClickHouse: {value!r}")


def parameter_values(parameters: Parameters | None) -> dict[str, Any]:
    """Parameters as both backends hand them to the binder: datetimes as ClickHouse DateTime64 text
    (UTC, milliseconds), everything else as given (clickhouse-connect's `format_bind_value` formats
    it, for a server on the client side and for chdb in `ChdbBackend`)."""
    return {key: _datetime_text(value) if isinstance(value, datetime) else value
            for key, value in (parameters or {}).items()}


def _datetime_text(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(sep=" ", timespec="milliseconds")


# ---- decoding JSONCompact results ---------------------------------------------------------------


def decode_json_compact(body: bytes) -> Result:
    """Decode a `JSONCompact` response into Python values by the reported column types."""
    if not body.strip():
        return Result((), (), [])
    payload = orjson.loads(body)
    meta = payload.get("meta", [])
    names = tuple(column["name"] for column in meta)
    types = tuple(column["type"] for column in meta)
    converters = [converter_for(type_name) for type_name in types]
    rows = [
        tuple(convert(value) if convert is not None else value for convert, value in zip(converters, row, strict=True))
        for row in payload.get("data", [])
    ]
    return Result(names, types, rows)


def _unwrap(type_name: str) -> str:
    for wrapper in ("Nullable(", "LowCardinality("):
        while type_name.startswith(wrapper) and type_name.endswith(")"):
            type_name = type_name[len(wrapper):-1]
    return type_name


def converter_for(type_name: str) -> Any:
    """A function turning the JSON value of a column of `type_name` into Python, or None (as is)."""
    inner = _unwrap(type_name)
    if inner.startswith("DateTime"):
        zone = _zone_of(inner)
        return lambda value: None if value is None else _parse_datetime(value, zone)
    if inner == "Date" or inner == "Date32":
        return lambda value: None if value is None else date.fromisoformat(value)
    if inner.startswith("Array("):
        item = converter_for(inner[len("Array("):-1])
        if item is None:
            return None
        return lambda value: None if value is None else [item(v) for v in value]
    return None


def _zone_of(type_name: str) -> timezone | ZoneInfo:
    match = re.search(r"'([^']+)'", type_name)
    if not match or match.group(1) in ("UTC", "Etc/UTC"):
        return UTC
    return ZoneInfo(match.group(1))


def _parse_datetime(value: str | float, zone: timezone | ZoneInfo) -> datetime:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=zone).astimezone(UTC)
