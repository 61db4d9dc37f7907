"""Errors of the ClickHouse layer, each phrased so that an operator knows what to do next.

Both backends raise these and only these, so the projector and the query code handle one set of
errors whichever engine answers: an unreachable engine (retry later), a data directory owned by
another process (go through its read API), a statement ClickHouse rejected (fix the SQL), or a
server URL that cannot be used (fix the URL).
"""

from __future__ import annotations

import re

_CODE = re.compile(r"Code:\s*(\d+)")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")


class ClickHouseError(Exception):
    """Base class of every read-side storage error."""


class ClickHouseUnavailable(ClickHouseError):
    """The engine cannot be reached (server down, network, read API gone). Retrying may succeed."""


class InvalidClickHouseUrl(ClickHouseError):
    """The configured server URL cannot be used as given (retrying cannot help: fix the URL)."""


class ClickHouseLocked(ClickHouseError):
    """The chdb data directory is held by another process: use that process's read API instead."""


class ClickHouseQueryError(ClickHouseError):
    """ClickHouse rejected a statement; carries its error code and name (e.g. 62, SYNTAX_ERROR)."""

    def __init__(self, message: str, *, code: int | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.name = name

    @classmethod
    def from_engine_message(cls, message: str, *, context: str = "") -> ClickHouseQueryError:
        """Build from ClickHouse's own text (`Code: 62. DB::Exception: ... (SYNTAX_ERROR)`)."""
        text = clean_engine_message(message)
        code_match = _CODE.search(text)
        name_match = _NAME.search(text)
        prefix = f"{context}: " if context else ""
        return cls(
            prefix + text,
            code=int(code_match.group(1)) if code_match else None,
            name=name_match.group(1) if name_match else None,
        )


def clean_engine_message(message: str) -> str:
    """Drop transport prefixes and the version trailer, keep ClickHouse's explanation."""
    text = message.strip()
    for prefix in ("Failed to create connection: ", "Streaming insert finish failed: ",
                   "Streaming insert append failed: "):
        text = text.removeprefix(prefix)
    return re.sub(r"\s*\(version [0-9.]+[^)]*\)\s*$", "", text)
