"""The server backend: a ClickHouse server (or the projector's read API or owner socket) over HTTP.

clickhouse-connect carries the requests; this module only chooses the database per call, sends
the same SQL and the same formats as the chdb backend, and turns clickhouse-connect's exceptions
into the read side's errors. The URL is parsed once (`server_url.parse_server_url`) and its parts
are handed to the client one by one, so the password reaches clickhouse-connect only as its
password argument, never inside a URL its messages might quote. Where this module shows the URL
(`describe`, every error) it shows `redact_url` of it. The read API's token (sent as
`Authorization: Bearer`) is never logged or put in an error message either.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from eventjobs.clickhouse.backend import (
    INSERT_SETTINGS,
    OUTPUT_SETTINGS,
    BackendKind,
    Parameters,
    Result,
    decode_json_compact,
    encode_columns,
    parameter_values,
    qualified,
)
from eventjobs.clickhouse.errors import ClickHouseError, ClickHouseQueryError, ClickHouseUnavailable, InvalidClickHouseUrl
from eventjobs.clickhouse.server_url import parse_server_url, redact_url
from eventjobs.clickhouse.unix_http import UnixSocketPoolManager

_FOR_URL = re.compile(r"\s*\(for url [^)]*\)")


class ServerBackend:
    """ClickHouse over HTTP. One clickhouse-connect client per database (the database is client state)."""

    kind: BackendKind = "server"

    def __init__(self, url: str, database: str = "default", *, connect_timeout_s: float = 5.0,
                 request_timeout_s: float = 300.0, access_token: str | None = None,
                 unix_socket: str | None = None) -> None:
        """`access_token`: sent as a bearer token (the projector's read API wants one).
        `unix_socket`: reach the server through this Unix socket (the projector's owner socket);
        `url` then only names the database, e.g. `http://localhost`."""
        self._url = url
        self._address = parse_server_url(url)  # InvalidClickHouseUrl: nothing to retry
        self.database = self._address.database or database
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._access_token = access_token
        self._unix_socket = unix_socket
        self._pool: UnixSocketPoolManager | None = None
        if unix_socket is not None:
            self._pool = UnixSocketPoolManager(unix_socket, maxsize=8)
        self._clients: dict[str | None, Client] = {}
        self._lock = threading.Lock()
        self._client(None)  # fail now, with a clear message, if the server does not answer

    def _where(self) -> str:
        if self._unix_socket is not None:
            return f"the socket {self._unix_socket}"
        return redact_url(self._url)

    def describe(self) -> str:
        if self._unix_socket is not None:
            return f"ClickHouse over the owner socket {self._unix_socket} (database {self.database})"
        return f"ClickHouse server at {redact_url(self._url)} (database {self.database})"

    def _client(self, database: str | None) -> Client:
        with self._lock:
            client = self._clients.get(database)
            if client is None:
                client = self._connect(database)
                self._clients[database] = client
            return client

    def _connect(self, database: str | None) -> Client:
        address = self._address
        options: dict[str, Any] = {
            "connect_timeout": int(max(1, self._connect_timeout_s)), "send_receive_timeout": int(self._request_timeout_s),
            "autogenerate_session_id": False, "query_retries": 0,
            **address.options,  # the URL's own client options win, as they do in a DSN
        }
        if self._access_token is not None:
            options["access_token"] = self._access_token
        if self._pool is not None:
            options["pool_mgr"] = self._pool
        try:
            return clickhouse_connect.get_client(
                interface=address.interface, host=address.host, port=address.port, username=address.username,
                password=address.password, database=database or "", **options,
            )
        except TypeError as error:  # only the URL's options can be what clickhouse-connect does not take
            raise InvalidClickHouseUrl(
                f"ClickHouse URL {redact_url(self._url)} (EVENTJOBS_CLICKHOUSE_URL): a query parameter is not an "
                f"option of clickhouse-connect's client ({self._clean(error)})"
            ) from None
        except OperationalError as error:
            hint = ("is the process that owns the chdb directory still running?" if self._unix_socket is not None
                    else "check EVENTJOBS_CLICKHOUSE_URL and that the server runs")
            raise ClickHouseUnavailable(f"cannot reach ClickHouse at {self._where()}: {self._clean(error)}; {hint}") \
                from None
        except DatabaseError as error:
            raise self._query_error(error) from None

    def _target(self, database: str | None) -> str | None:
        return self.database if database is None else (database or None)

    def _clean(self, error: Exception) -> str:
        text = _FOR_URL.sub("", str(error))
        if self._access_token:
            text = text.replace(self._access_token, "***")
        return text.replace(self._url, redact_url(self._url))

    def _query_error(self, error: DatabaseError) -> ClickHouseError:
        if isinstance(error, OperationalError) or (getattr(error, "code", None) is None and "HTTP" in str(error)):
            return ClickHouseUnavailable(f"ClickHouse at {self._where()} failed: {self._clean(error)}")
        text = self._clean(error)
        marker = "server response: "
        if marker in text:
            text = text.split(marker, 1)[1]
        wrapped = ClickHouseQueryError.from_engine_message(text)
        if wrapped.code is None:
            wrapped.code = getattr(error, "code", None)
        return wrapped

    def command(self, sql: str, parameters: Parameters | None = None, *, database: str | None = None) -> None:
        self.raw_query(sql, "TabSeparated", database=self._target(database), parameters=parameter_values(parameters))

    def query(self, sql: str, parameters: Parameters | None = None, *, database: str | None = None) -> Result:
        body = self.raw_query(sql, "JSONCompact", database=self._target(database),
                              parameters=parameter_values(parameters), settings=OUTPUT_SETTINGS)
        return decode_json_compact(body)

    def raw_query(self, sql: str, fmt: str, *, database: str | None, parameters: dict[str, Any] | None = None,
                  settings: dict[str, str] | None = None) -> bytes:
        """Run `sql` and return the server's bytes in `fmt`."""
        client = self._client(database)
        try:
            return client.raw_query(sql, parameters=parameters or None, settings=settings or None, fmt=fmt)
        except DatabaseError as error:
            raise self._query_error(error) from None
        except OSError as error:
            raise ClickHouseUnavailable(f"ClickHouse at {self._where()} failed: {self._clean(error)}") from None

    def insert(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]], *,
               database: str | None = None) -> int:
        target = self._target(database)
        body = encode_columns(columns, data)
        client = self._client(target)
        try:
            client.raw_insert(qualified(target, table), list(columns), body, settings=dict(INSERT_SETTINGS),
                              fmt="JSONCompactColumns")
        except DatabaseError as error:
            raise self._query_error(error) from None
        except OSError as error:
            raise ClickHouseUnavailable(f"ClickHouse at {self._where()} failed: {self._clean(error)}") from None
        return len(data[0]) if data else 0

    def forget_database(self, database: str) -> None:
        """Drop the client bound to `database` (after the database was dropped)."""
        with self._lock:
            client = self._clients.pop(database, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()
        if self._pool is not None:
            self._pool.clear()
