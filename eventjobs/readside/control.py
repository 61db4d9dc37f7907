"""Small facts shared through ClickHouse: the live projector's heartbeat and the replay handshake.

`eventjobs replay --projections` must swap rebuilt tables in while no batch is half written. It
asks the live projector to pause (`pause_request` = a token), the projector finishes its batch,
answers `paused` = token and writes nothing until it reads `resume` = token; then it reloads its
positions from the (new) tables and goes on. A projector whose heartbeat is older than
`STALE_AFTER_S` is taken as not running.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, UTC
from typing import Any

from eventjobs.clickhouse.backend import Backend

STALE_AFTER_S = 15.0


class Control:
    """Key/value facts in `projector_control` (newest value per key wins)."""

    def __init__(self, backend: Backend, database: str | None = None) -> None:
        self.backend = backend
        self.database = database or backend.database

    def set(self, key: str, value: str) -> None:
        self.backend.insert("projector_control", ["key", "value", "updated_at"],
                            [[key], [value], [datetime.now(UTC)]], database=self.database)

    def read(self) -> dict[str, tuple[str, datetime]]:
        rows = self.backend.query(
            "SELECT key, argMax(value, updated_at), max(updated_at) FROM projector_control GROUP BY key",
            database=self.database,
        ).rows
        return {key: (value, at) for key, value, at in rows}

    def heartbeat(self, role: str, extra: dict[str, Any] | None = None) -> None:
        self.set("heartbeat", json.dumps({"pid": os.getpid(), "role": role, **(extra or {})}))

    def live_projector(self) -> dict[str, Any] | None:
        """The heartbeat of a projector that beat within `STALE_AFTER_S`, else None."""
        entry = self.read().get("heartbeat")
        if entry is None:
            return None
        value, at = entry
        if (datetime.now(UTC) - at).total_seconds() > STALE_AFTER_S:
            return None
        return {**json.loads(value), "at": at}
