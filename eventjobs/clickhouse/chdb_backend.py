"""The embedded backend: the ClickHouse engine in this process (chdb), tables on disk.

chdb allows one data directory per process and ClickHouse locks that directory against every
other process. So this module keeps a per-process registry of the open engine, pre-checks the
directory lock (to name the holder instead of printing ClickHouse's lock noise), records this
process as the owner, and gives each database its own chdb connection (so that the projector, the
read API threads and a replay never race on one connection's `USE`).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.binding import format_bind_value

from eventjobs.clickhouse.backend import (
    OUTPUT_SETTINGS,
    BackendKind,
    Parameters,
    Result,
    decode_json_compact,
    encode_columns,
    insert_statement,
    parameter_values,
    quote_identifier,
)
from eventjobs.clickhouse.errors import ClickHouseError, ClickHouseLocked, ClickHouseQueryError
from eventjobs.clickhouse.ownership import (
    clear_owner,
    default_role,
    directory_locked,
    live_owner,
    locking_pid,
    write_owner,
)

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _escaped(parameters: Parameters | None) -> dict[str, str]:
    """Parameter texts formatted exactly as clickhouse-connect formats them for a server (so both bind alike)."""
    return {key: format_bind_value(value, top_level=True) for key, value in parameter_values(parameters).items()}


class _Engine:
    """The one chdb engine of this process: its path and how many backends use it."""

    lock = threading.Lock()
    path: Path | None = None
    users = 0


def _lock_message(path: Path) -> str:
    owner = live_owner(path)
    if owner is not None:
        holder = owner.describe()
        hint = (f"it serves the read API at {owner.read_api}; eventjobs commands use it automatically"
                if owner.read_api else "stop it, or wait until it exits, then retry")
    else:
        pid = locking_pid(path)
        holder = f"another process (pid {pid})" if pid else "another process"
        hint = "stop it (e.g. the projector: it serves the read API while it runs), then retry"
    return (f"the chdb data directory {path} is locked by {holder}; a chdb directory can be open in "
            f"one process only: {hint}")


class ChdbBackend:
    """ClickHouse in-process. `database` is the default for unqualified table names."""

    kind: BackendKind = "chdb"

    def __init__(self, path: Path, database: str = "default", *, role: str | None = None) -> None:
        self.path = Path(path).resolve()
        self.database = database
        self._connections: dict[tuple[str | None, bool], Any] = {}
        self._locks: dict[tuple[str | None, bool], threading.RLock] = {}
        self._registry_lock = threading.Lock()
        self._closed = False
        self._attach_engine(role or default_role())

    # ---- engine lifetime ------------------------------------------------------------------

    def _attach_engine(self, role: str) -> None:
        with _Engine.lock:
            first = _Engine.path is None
            if _Engine.path != self.path:
                self.path.mkdir(parents=True, exist_ok=True)
                if locking_pid(self.path) != os.getpid() and directory_locked(self.path):
                    raise ClickHouseLocked(_lock_message(self.path))
            if not first and _Engine.path != self.path:
                raise ClickHouseError(
                    f"this process already has the chdb directory {_Engine.path} open; chdb allows one "
                    f"directory per process, so {self.path} cannot be opened too"
                )
            self._connections[(None, False)] = self._connect(None)
            if first:
                write_owner(self.path, role)
            _Engine.path = self.path
            _Engine.users += 1

    def _connect(self, database: str | None, readonly: bool = False) -> Any:
        # imported here, not with the module: the engine is a 550 MB library that takes 0.3-1 s to
        # load, and workers, processors and most CLI commands import this module but never open it
        import chdb

        try:
            connection = chdb.connect(str(self.path))
        except Exception as error:  # noqa: BLE001 - chdb raises RuntimeError with ClickHouse's text (or others)
            text = str(error)
            if "already initialized with path" in text:
                raise ClickHouseError(
                    f"this process already runs a chdb engine on another directory; chdb allows one directory "
                    f"per process, so {self.path} cannot be opened ({text})"
                ) from None
            if "lock" in text.lower() or "EmbeddedServer" in text:
                raise ClickHouseLocked(_lock_message(self.path)) from None
            raise ClickHouseError(f"cannot open chdb at {self.path}: {text}") from None
        try:
            for key, value in OUTPUT_SETTINGS.items():
                connection.query(f"SET {key} = {value}")
            if database is not None:
                connection.query(f"USE {quote_identifier(database)}")
            if readonly:
                # last: from here on ClickHouse refuses writes, DDL and any change of a setting
                # (`readonly` included) on this connection
                connection.query("SET readonly = 1")
        except Exception as error:  # noqa: BLE001 - chdb's errors carry no type: ClickHouse's text decides
            connection.close()
            raise ClickHouseQueryError.from_engine_message(str(error), context=f"database {database}") from None
        return connection

    def _connection(self, database: str | None, readonly: bool = False) -> tuple[Any, threading.RLock]:
        if self._closed:
            raise ClickHouseError(f"the chdb backend for {self.path} is closed")
        key = (database, readonly)
        with self._registry_lock:
            if key not in self._connections:
                self._connections[key] = self._connect(database, readonly)
            if key not in self._locks:
                self._locks[key] = threading.RLock()
            return self._connections[key], self._locks[key]

    def forget_database(self, database: str) -> None:
        """Close the connections bound to `database` (call after dropping it)."""
        with self._registry_lock:
            connections = [self._connections.pop((database, readonly), None) for readonly in (False, True)]
            for readonly in (False, True):
                self._locks.pop((database, readonly), None)
        for connection in connections:
            if connection is not None:
                connection.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._registry_lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for connection in connections:
            connection.close()
        with _Engine.lock:
            _Engine.users -= 1
            if _Engine.users <= 0:
                _Engine.path = None
                _Engine.users = 0
                clear_owner(self.path)

    def describe(self) -> str:
        return f"chdb at {self.path} (database {self.database})"

    def set_read_api(self, url: str | None, role: str, *, token: str | None = None,
                     owner_socket: str | None = None) -> None:
        """Advertise the read API this process serves (and its token and owner socket) in the owner record."""
        write_owner(self.path, role, url, read_api_token=token, owner_socket=owner_socket)

    # ---- the Backend interface ------------------------------------------------------------

    def _target(self, database: str | None) -> str | None:
        return self.database if database is None else (database or None)

    def command(self, sql: str, parameters: Parameters | None = None, *, database: str | None = None) -> None:
        self.raw_query(sql, "TabSeparated", database=self._target(database), parameters=_escaped(parameters))

    def query(self, sql: str, parameters: Parameters | None = None, *, database: str | None = None) -> Result:
        body = self.raw_query(sql, "JSONCompact", database=self._target(database), parameters=_escaped(parameters))
        return decode_json_compact(body)

    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]], *,
               database: str | None = None) -> int:
        body = encode_columns(columns, data)
        target = self._target(database)
        self.raw_insert(insert_statement(table, columns, target), "JSONCompactColumns", body, database=target)
        return len(data[0]) if data else 0

    # ---- raw access (used by the HTTP read API) -------------------------------------------

    def raw_query(self, sql: str, fmt: str, *, database: str | None, parameters: Mapping[str, str] | None = None,
                  settings: Mapping[str, str] | None = None, readonly: bool = False) -> bytes:
        """Run `sql` and return the engine's bytes in `fmt` (a FORMAT clause in `sql` wins).

        `readonly`: on a connection with ClickHouse's `readonly = 1`, where the engine refuses
        anything but reading (INSERT, DDL, ALTER, `SET`, table functions); `settings` may then only
        repeat the values the connection has (ClickHouse accepts setting a value it already has).
        """
        connection, lock = self._connection(database, readonly)
        with lock:
            restore = self._apply_settings(connection, settings, readonly)
            try:
                result = connection.query(sql, fmt, params=dict(parameters or {}))
            except Exception as error:  # noqa: BLE001 - chdb's errors carry no type: ClickHouse's text decides
                raise ClickHouseQueryError.from_engine_message(str(error)) from None
            finally:
                if not readonly:  # nothing can have changed there, and DEFAULT may differ
                    self._restore_settings(connection, restore)
        return bytes(result.bytes()) if hasattr(result, "bytes") else bytes(result or b"")

    def raw_insert(self, statement: str, fmt: str, data: bytes, *, database: str | None,
                   settings: Mapping[str, str] | None = None, readonly: bool = False) -> int:
        """Stream `data` (in input format `fmt`) into `statement` (an INSERT without FORMAT);
        `readonly` as in `raw_query` (the engine then refuses it)."""
        connection, lock = self._connection(database, readonly)
        with lock:
            restore = self._apply_settings(connection, settings, readonly)
            try:
                inserter = connection.send_insert(statement, fmt)
                try:
                    if data:
                        inserter.append(data)
                    return int(inserter.finish().rows_written)
                except BaseException:
                    inserter.cancel()
                    raise
            except ClickHouseError:
                raise
            except Exception as error:  # noqa: BLE001 - chdb's errors carry no type: ClickHouse's text decides
                raise ClickHouseQueryError.from_engine_message(str(error)) from None
            finally:
                if not readonly:
                    self._restore_settings(connection, restore)

    @staticmethod
    def _apply_settings(connection: Any, settings: Mapping[str, str] | None, readonly: bool = False) -> list[str]:
        applied: list[str] = []
        for key, value in (settings or {}).items():
            if not _SETTING_NAME.match(key):
                raise ClickHouseQueryError(f"invalid setting name {key!r}", code=115, name="UNKNOWN_SETTING")
            escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
            try:
                connection.query(f"SET {key} = '{escaped}'")
            except Exception as error:  # noqa: BLE001 - chdb's errors carry no type: ClickHouse's text decides
                if not readonly:  # a read-only connection changed nothing, and refuses DEFAULT
                    ChdbBackend._restore_settings(connection, applied)
                raise ClickHouseQueryError.from_engine_message(str(error), context=f"setting {key}") from None
            applied.append(key)
        return applied

    @staticmethod
    def _restore_settings(connection: Any, applied: list[str]) -> None:
        for key in applied:
            value = OUTPUT_SETTINGS.get(key)
            connection.query(f"SET {key} = {value}" if value is not None else f"SET {key} = DEFAULT")
