"""The ClickHouse HTTP protocol, decoded: what a request to the read API asks for.

Pure functions over a request's parameters and body (no engine, no server), shared by both
surfaces of the read API (`http_api.py`): split a request into SQL, INSERT data, database, output
format, bind parameters and settings, and undo a compressed body.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from eventjobs.clickhouse.errors import ClickHouseQueryError

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
INSERT_SELECT = re.compile(r"^\s*INSERT\s+INTO\s+[^(]*?(\([^)]*\)\s*)?(SETTINGS\s.*?)?\b(SELECT|WITH)\b",
                            re.IGNORECASE | re.DOTALL)
_INSERT_WITH_FORMAT = re.compile(
    rb"^\s*(?P<statement>INSERT\s.*?)\bFORMAT\s+(?P<format>[A-Za-z0-9_]+)[ \t]*(?:\r?\n)?", re.IGNORECASE | re.DOTALL
)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
CONTENT_TYPES = {
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
}
STATUS_BY_CODE = {62: 400, 27: 400, 60: 404, 81: 404, 516: 401, 497: 403, 164: 403}


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
            fields[str(name)] = payload.decode(part.get_content_charset() or "utf-8")  # type: ignore[union-attr]  # a part that is not multipart decodes to bytes
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
