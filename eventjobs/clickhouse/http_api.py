"""A ClickHouse-compatible HTTP interface over this process's chdb engine: the read API.

Why it exists: a chdb data directory can be open in one process only. The process that owns it
(the projector) serves this API, and every other process (CLI read commands, replay, the
dashboard) reaches the same tables through it with the ordinary ClickHouse HTTP client
(clickhouse-connect), exactly as it would reach a ClickHouse server. The test suite uses the same
server as its stand-in for a ClickHouse server (`tests/support/chdb_http.py`).

It implements the part of the ClickHouse HTTP protocol that clickhouse-connect uses:
`GET /ping`; queries by GET or POST with the SQL in the `query` parameter, the body, or both
(the body continues the query, as in ClickHouse); INSERT data in the body after
`INSERT ... FORMAT <fmt>` in either place (any input format chdb knows, incl. Native); the
`database`, `default_format`, `param_<name>` and setting parameters; request bodies compressed
with gzip, deflate, lz4 (frame) or zstd; chunked request bodies; Basic or `X-ClickHouse-User` /
`X-ClickHouse-Key` authentication when credentials are configured. Responses carry
`X-ClickHouse-Format`, `X-ClickHouse-Timezone`, `X-ClickHouse-Query-Id` and
`X-ClickHouse-Summary`; errors carry `X-ClickHouse-Exception-Code` and ClickHouse's message text.
Responses are never compressed (clickhouse-connect reads `Content-Encoding` and accepts identity).
Not implemented: sessions (all requests share the engine; temporary tables are not isolated),
multipart external data, progress headers, query cancellation.

Binds to 127.0.0.1 by default: the API has no TLS, and without credentials it is open to anyone
who can reach the port.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import json
import logging
import re
import threading
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from eventjobs.clickhouse.chdb_backend import ChdbBackend
from eventjobs.clickhouse.errors import ClickHouseError, ClickHouseQueryError

log = logging.getLogger(__name__)

# Parameters that are part of the HTTP protocol, not ClickHouse settings.
_PROTOCOL_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id",
    "session_id", "session_timeout", "session_check", "compress", "decompress",
    "client_protocol_version", "buffer_size", "wait_end_of_query", "add_http_cors_header",
})
# Settings that only steer the HTTP transport of a real server; accepted and ignored here.
_HTTP_ONLY_SETTINGS = frozenset({
    "enable_http_compression", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "cancel_http_readonly_queries_on_client_close", "http_response_buffer_size",
    "http_wait_end_of_query", "http_zlib_compression_level", "http_native_compression_disable_checksumming_on_decompress",
    "max_execution_time", "max_result_rows", "result_overflow_mode",
})
_INSERT_SELECT = re.compile(r"^\s*INSERT\s+INTO\s+[^(]*?(\([^)]*\)\s*)?(SETTINGS\s.*?)?\b(SELECT|WITH)\b",
                            re.IGNORECASE | re.DOTALL)
_INSERT_WITH_FORMAT = re.compile(
    rb"^\s*(?P<statement>INSERT\s.*?)\bFORMAT\s+(?P<format>[A-Za-z0-9_]+)[ \t]*(?:\r?\n)?", re.IGNORECASE | re.DOTALL
)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_CONTENT_TYPES = {
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
}
_STATUS_BY_CODE = {62: 400, 27: 400, 60: 404, 81: 404, 516: 401, 497: 403}


@dataclass(frozen=True)
class ApiRequest:
    """One request, decoded: the SQL to run, INSERT data if any, and what to run it with."""

    sql: str
    insert_data: bytes | None
    insert_format: str | None
    database: str | None
    output_format: str
    parameters: dict[str, str]
    settings: dict[str, str]


def decompress_body(body: bytes, encoding: str | None) -> bytes:
    """Undo the request's `Content-Encoding` (what clickhouse-connect may send)."""
    if not encoding or encoding == "identity" or not body:
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    if encoding == "zstd":
        from clickhouse_connect.driver.compression import _zstd_decompress

        return bytes(_zstd_decompress(body))
    raise ClickHouseQueryError(f"unsupported Content-Encoding {encoding!r} (supported: gzip, deflate, lz4, zstd)",
                               code=1, name="UNSUPPORTED_METHOD")


def multipart_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The plain fields of a `multipart/form-data` body (the query and `param_*` values)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name and part.get_filename() is None:
            payload = part.get_payload(decode=True) or b""
            fields[str(name)] = payload.decode(part.get_content_charset() or "utf-8")
    return fields


def parse_request(params: Mapping[str, str], body: bytes) -> ApiRequest:
    """Split a ClickHouse HTTP request into SQL, INSERT data, database, format, parameters and settings."""
    query_param = params.get("query", "")
    sql_bytes = query_param.encode()
    data: bytes | None = None
    if query_param and body:
        head = _INSERT_WITH_FORMAT.match(sql_bytes)
        if head is not None and not sql_bytes[head.end():].strip():
            data = body  # INSERT ... FORMAT X in the URL, the data in the body
        else:
            sql_bytes = sql_bytes + b"\n" + body
    elif body:
        sql_bytes = body
    insert_format: str | None = None
    statement = sql_bytes
    head = _INSERT_WITH_FORMAT.match(sql_bytes)
    if head is not None and head.group("format").upper() != b"VALUES":
        statement = head.group("statement")
        insert_format = head.group("format").decode()
        if data is None:
            data = sql_bytes[head.end():]
    elif data is not None:
        statement = sql_bytes
    sql = statement.decode("utf-8").strip()
    parameters = {key[len("param_"):]: value for key, value in params.items() if key.startswith("param_")}
    settings = {
        key: value for key, value in params.items()
        if key not in _PROTOCOL_PARAMS and key not in _HTTP_ONLY_SETTINGS and not key.startswith("param_")
    }
    trailing = _TRAILING_FORMAT.search(sql) if insert_format is None else None
    output_format = trailing.group(1) if trailing else params.get("default_format", "TabSeparated")
    return ApiRequest(sql, data if insert_format else None, insert_format, params.get("database") or None,
                      output_format, parameters, settings)


class ReadApi:
    """The HTTP server; `start()` runs it in a daemon thread, `url` says where it listens."""

    def __init__(self, backend: ChdbBackend, host: str = "127.0.0.1", port: int = 0, *,
                 user: str | None = None, password: str | None = None) -> None:
        self.backend = backend
        self._credentials = (user, password or "") if user else None
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Serve in a background thread; returns the URL."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="eventjobs-read-api", daemon=True)
        self._thread.start()
        return self.url

    def advertise(self, role: str) -> None:
        """Write this API's address into the chdb owner record so other processes find it."""
        self.backend.set_read_api(self.url, role)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def authorized(self, headers: Mapping[str, str], params: Mapping[str, str]) -> bool:
        if self._credentials is None:
            return True
        user, password = params.get("user"), params.get("password", "")
        if headers.get("X-ClickHouse-User"):
            user, password = headers["X-ClickHouse-User"], headers.get("X-ClickHouse-Key", "")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return False
        expected_user, expected_password = self._credentials
        return user == expected_user and hmac.compare_digest(password.encode(), expected_password.encode())

    def execute(self, request: ApiRequest) -> tuple[bytes, int]:
        """Run one request on the engine; returns the body and the number of rows written."""
        if request.insert_format is not None and not request.insert_data and _INSERT_SELECT.match(request.sql):
            # INSERT ... SELECT (clickhouse-connect appends a FORMAT clause): a query, no data to stream
            self.backend.raw_query(request.sql, "TabSeparated", database=request.database,
                                   parameters=request.parameters, settings=request.settings)
            return b"", 0
        if request.insert_format is not None:
            written = self.backend.raw_insert(request.sql, request.insert_format, request.insert_data or b"",
                                              database=request.database, settings=request.settings)
            return b"", written
        body = self.backend.raw_query(request.sql, request.output_format, database=request.database,
                                      parameters=request.parameters, settings=request.settings)
        return body, 0


def _handler_for(api: ReadApi) -> type[BaseHTTPRequestHandler]:
    class Handler(_ClickHouseHandler):
        read_api = api

    return Handler


class _ClickHouseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "eventjobs-read-api"
    read_api: ReadApi

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("read API: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle(b"")

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._read_body())

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, raw_body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/ping/"):
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if url.path not in ("", "/"):
            self._send(404, f"There is no handle {url.path}\n".encode(), {"Content-Type": "text/plain"})
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            params.update(parse_qsl(raw_body.decode(), keep_blank_values=True))
            raw_body = b""
        elif self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            # clickhouse-connect sends the query and bind parameters as form fields once they are
            # too long for a URL (over 4 KiB of parameters): read them as URL parameters
            params.update(multipart_fields(self.headers.get("Content-Type", ""), raw_body))
            raw_body = b""
        if not self.read_api.authorized(self.headers, params):
            self._error(ClickHouseQueryError(
                "Code: 516. DB::Exception: Authentication failed: password is incorrect, or there is no user "
                "with such name. (AUTHENTICATION_FAILED)", code=516, name="AUTHENTICATION_FAILED"))
            return
        started = time.perf_counter()
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            request = parse_request(params, decompress_body(raw_body, self.headers.get("Content-Encoding")))
            body, written = self.read_api.execute(request)
        except ClickHouseError as error:
            self._error(error, query_id)
            return
        except Exception as error:  # a bug here must still answer the client, not hang it
            log.exception("read API request failed")
            self._error(ClickHouseQueryError(f"Code: 1001. DB::Exception: {error!r}. (STD_EXCEPTION)", code=1001),
                        query_id)
            return
        summary = {"read_rows": "0", "read_bytes": "0", "written_rows": str(written), "written_bytes": "0",
                   "total_rows_to_read": "0", "result_rows": "0", "result_bytes": str(len(body)),
                   "elapsed_ns": str(int((time.perf_counter() - started) * 1e9))}
        fmt = request.output_format if request.insert_format is None else "TabSeparated"
        self._send(200, body, {
            "Content-Type": _CONTENT_TYPES.get(fmt, "application/octet-stream"),
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Summary": json.dumps(summary),
        })

    def _error(self, error: ClickHouseError, query_id: str = "") -> None:
        code = getattr(error, "code", None) or 1001
        text = str(error)
        if not text.startswith("Code:"):
            text = f"Code: {code}. DB::Exception: {text}"
        headers = {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": str(code)}
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        self._send(_STATUS_BY_CODE.get(code, 500), (text + "\n").encode(), headers)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
