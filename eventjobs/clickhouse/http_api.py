"""The read API: a small ClickHouse-compatible HTTP interface over this process's chdb engine.

Why it exists: a chdb data directory can be open in one process only. The process that owns it
(the projector) serves this API, and every other process (CLI read commands, the dashboard)
reaches the same tables through it with the ordinary ClickHouse HTTP client (clickhouse-connect),
exactly as it would reach a ClickHouse server. Speaking ClickHouse's own protocol keeps that one
client and one SQL for both engines; a private JSON API would need a second client, and every
query would differ between a server and chdb.

Two surfaces, one app (`clickhouse_http_app`), served by uvicorn:

* `ReadApi`, the public one, on TCP (127.0.0.1 by default): **read-only**, whatever the method.
  Every query runs on a chdb connection with ClickHouse's `readonly = 1`, so the engine itself
  refuses INSERT, DDL, ALTER, `SET`, table functions (no SQL is parsed here to decide that);
  request bodies must not be compressed (only inserts are). It wants a token (`Authorization:
  Bearer`, or the password of Basic / `X-ClickHouse-Key`; 401 without one, 403 for a wrong one)
  and a `Host` from its allow-list (Starlette's `TrustedHostMiddleware`; 400 otherwise), so a
  browser page, rebound to 127.0.0.1 or not, can neither read nor write through it.
* `OwnerApi`, the private one, on a Unix socket in a directory only this user can enter: reads
  and writes, for the eventjobs commands that rebuild the owner's tables while it runs (`replay
  --projections`, `projections apply`). No browser can reach a Unix socket, and no other user
  can enter the directory.

The token and both addresses go into the owner record beside the chdb directory (mode 0600,
`ownership.py`), where `open_backend()` in other processes finds them. The test suite also serves
the app with writes on TCP loopback, as its stand-in for a ClickHouse server
(`tests/support/chdb_http.py`).

The protocol part clickhouse-connect uses: `GET /ping`; queries by GET or POST with the SQL in
the `query` parameter, the body, or both (the body continues the query, as in ClickHouse);
(owner surface) INSERT data in the body after `INSERT ... FORMAT <fmt>` in either place (any
input format chdb knows, incl. Native), request bodies compressed with gzip, deflate, lz4 (frame)
or zstd; the `database`, `default_format`, `param_<name>` and setting parameters (also as form
fields, urlencoded or multipart). Responses carry `X-ClickHouse-Format`,
`X-ClickHouse-Timezone`, `X-ClickHouse-Query-Id` and `X-ClickHouse-Summary`; errors carry
`X-ClickHouse-Exception-Code` and ClickHouse's message text. Responses are never compressed
(clickhouse-connect reads `Content-Encoding` and accepts identity). Not implemented: sessions
(all requests share the engine; temporary tables are not isolated), multipart external data,
progress headers, query cancellation.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from eventjobs.clickhouse.chdb_backend import ChdbBackend
from eventjobs.clickhouse.errors import ClickHouseError, ClickHouseQueryError
from eventjobs.clickhouse.http_protocol import (
    CONTENT_TYPES,
    INSERT_SELECT,
    STATUS_BY_CODE,
    ApiRequest,
    decompress_body,
    multipart_fields,
    parse_request,
)
from eventjobs.http_hosts import allowed_hosts

log = logging.getLogger(__name__)

#: the largest request body the public surface reads: a query and its bind parameters, never data
MAX_READ_REQUEST_BYTES = 4 * 1024 * 1024
#: how long a stopping server lets requests in flight finish
SHUTDOWN_GRACE_S = 5
#: how long `start()` waits for uvicorn to listen
START_TIMEOUT_S = 10
_IDENTITY = ("", "identity")


def new_token() -> str:
    """A fresh read API token (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


class _Engine:
    """Runs decoded requests on the chdb engine: on its read-only connections, or (owner surface) on all."""

    def __init__(self, backend: ChdbBackend, *, writable: bool) -> None:
        self.backend = backend
        self.writable = writable

    def execute(self, request: ApiRequest) -> tuple[bytes, int]:
        """Run one request; returns the body and the number of rows written. Read-only, every call
        goes to a `readonly = 1` connection: the engine refuses whatever would write."""
        readonly = not self.writable
        if request.insert_format is not None and not request.insert_data and INSERT_SELECT.match(request.sql):
            # INSERT ... SELECT (clickhouse-connect appends a FORMAT clause): a query, no data to stream
            self.backend.raw_query(request.sql, "TabSeparated", database=request.database,
                                   parameters=request.parameters, settings=request.settings, readonly=readonly)
            return b"", 0
        if request.insert_format is not None:
            written = self.backend.raw_insert(request.sql, request.insert_format, request.insert_data or b"",
                                              database=request.database, settings=request.settings,
                                              readonly=readonly)
            return b"", written
        body = self.backend.raw_query(request.sql, request.output_format, database=request.database,
                                      parameters=request.parameters, settings=request.settings, readonly=readonly)
        return body, 0


def given_token(headers: Mapping[str, str]) -> str | None:
    """The token a request carries: a bearer token, or the password of Basic or `X-ClickHouse-Key`
    (how ClickHouse clients send a password); None when it carries none."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2] or None
        except (binascii.Error, UnicodeDecodeError):
            return ""  # present but unreadable: a wrong token
    return headers.get("x-clickhouse-key") or None


def _credential_refusal(headers: Mapping[str, str], token: str) -> Response | None:
    given = given_token(headers)
    if given is None:
        return _error(ClickHouseQueryError(
            "Code: 516. DB::Exception: the read API needs its token (Authorization: Bearer, or as the password); "
            "eventjobs commands read it from the owner record beside the chdb directory. (AUTHENTICATION_FAILED)",
            code=516, name="AUTHENTICATION_FAILED"), status=401)
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _error(ClickHouseQueryError(
            "Code: 516. DB::Exception: Authentication failed: that is not the read API's token. (AUTHENTICATION_FAILED)",
            code=516, name="AUTHENTICATION_FAILED"), status=403)
    return None


def clickhouse_http_app(backend: ChdbBackend, *, writable: bool, token: str | None,
                        hosts: Sequence[str] | None, max_body_bytes: int | None) -> ASGIApp:
    """The ClickHouse HTTP interface over `backend` as an ASGI app.

    `writable`: False runs every query read-only and refuses compressed bodies; True also takes
    INSERT data (only for the owner socket and the test stand-in for a server). `token`: when set,
    every query must carry it. `hosts`: the `Host` allow-list (None: any). `max_body_bytes`: the
    largest request body (413 beyond it).
    """
    engine = _Engine(backend, writable=writable)

    async def ping(_: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def query(request: Request) -> Response:
        if token is not None and (refusal := _credential_refusal(request.headers, token)) is not None:
            return refusal
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if not writable and encoding not in _IDENTITY:
            return _error(ClickHouseQueryError(
                f"Code: 164. DB::Exception: the read API is read-only: a compressed request body "
                f"(Content-Encoding {encoding!r}, what inserts send) is not accepted. (READONLY)",
                code=164, name="READONLY"))
        body = await request.body()
        params = dict(request.query_params)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            params.update(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
            body = b""
        elif content_type.startswith("multipart/form-data"):
            # clickhouse-connect sends the query and bind parameters as form fields once they are
            # too long for a URL (over 4 KiB of parameters): read them as URL parameters
            params.update(multipart_fields(content_type, body))
            body = b""
        query_id = params.get("query_id") or str(uuid.uuid4())
        started = time.perf_counter()

        def run() -> tuple[ApiRequest, bytes, int]:
            decoded = parse_request(params, decompress_body(body, encoding or None) if writable else body)
            return decoded, *engine.execute(decoded)

        try:
            api_request, result, written = await run_in_threadpool(run)
        except ClickHouseError as error:
            return _error(error, query_id)
        except Exception as error:  # a bug here must still answer the client, not hang it
            log.exception("read API request failed")
            return _error(ClickHouseQueryError(f"Code: 1001. DB::Exception: {error!r}. (STD_EXCEPTION)", code=1001),
                          query_id)
        summary = {"read_rows": "0", "read_bytes": "0", "written_rows": str(written), "written_bytes": "0",
                   "total_rows_to_read": "0", "result_rows": "0", "result_bytes": str(len(result)),
                   "elapsed_ns": str(int((time.perf_counter() - started) * 1e9))}
        fmt = api_request.output_format if api_request.insert_format is None else "TabSeparated"
        return Response(result, 200, headers={
            "Content-Type": CONTENT_TYPES.get(fmt, "application/octet-stream"),
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Summary": json.dumps(summary),
        })

    app: ASGIApp = Starlette(routes=[Route("/ping", ping, methods=["GET"]), Route("/", query, methods=["GET", "POST"])],
                             max_body_size=max_body_bytes)
    if hosts is not None:
        app = TrustedHostMiddleware(app, allowed_hosts=list(hosts), www_redirect=False)
    return app


def _error(error: ClickHouseError, query_id: str = "", *, status: int | None = None) -> Response:
    code = getattr(error, "code", None) or 1001
    text = str(error)
    if not text.startswith("Code:"):
        text = f"Code: {code}. DB::Exception: {text}"
    headers = {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": str(code)}
    if query_id:
        headers["X-ClickHouse-Query-Id"] = query_id
    return Response((text + "\n").encode(), status or STATUS_BY_CODE.get(code, 500), headers=headers)


class ServerThread:
    """uvicorn serving `app` on the bound socket `sock` in a thread with its own event loop, so the
    API answers whatever the owner's event loop is busy with."""

    def __init__(self, app: ASGIApp, sock: socket.socket, name: str) -> None:
        self.name = name
        self._sock = sock
        self._server = uvicorn.Server(uvicorn.Config(
            app, access_log=False, log_level="warning", lifespan="off", timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._failure: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as error:  # reported by `alive` and `start`
            self._failure = error
            log.exception("%s stopped", self.name)

    @property
    def alive(self) -> bool:
        """Whether the server still runs (False once it stopped, asked to or not)."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Serve in the thread; returns once uvicorn listens (`ClickHouseError` when it cannot)."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ClickHouseError(f"the {self.name} did not start: {self._failure or 'no answer in time'}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(SHUTDOWN_GRACE_S + 5)
        self._sock.close()


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ClickHouseError(f"the read API cannot listen on {host}:{port}: {error.strerror} "
                              f"(choose another port with --read-api-port)") from None
    sock.listen(128)
    return sock


class ReadApi:
    """The public surface: read-only, token, `Host` allow-list, on TCP (loopback by default).

    `token`: the one clients must send (default: a fresh random one, `new_token()`).
    `extra_hosts`: `Host` names answered besides the bound address and the loopback names.
    """

    def __init__(self, backend: ChdbBackend, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                 extra_hosts: Sequence[str] = ()) -> None:
        self.backend = backend
        self.token = token or new_token()
        self.allowed_hosts = allowed_hosts(host, extra_hosts)
        self._sock = _bind_tcp(host, port)
        app = clickhouse_http_app(backend, writable=False, token=self.token, hosts=self.allowed_hosts,
                                  max_body_bytes=MAX_READ_REQUEST_BYTES)
        self._server = ServerThread(app, self._sock, "read API")
        self.name = self._server.name

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    @property
    def alive(self) -> bool:
        return self._server.alive

    def start(self) -> str:
        """Serve in a background thread; returns the URL."""
        self._server.start()
        return self.url

    def advertise(self, role: str, owner: OwnerApi | None = None) -> None:
        """Write this API's address and token (and the owner socket) into the chdb owner record, so
        eventjobs commands in other processes find them."""
        self.backend.set_read_api(self.url, role, token=self.token,
                                  owner_socket=owner.path if owner is not None else None)

    def stop(self) -> None:
        self._server.stop()


class OwnerApi:
    """The private surface: reads and writes, on a Unix socket in a fresh directory only this user
    can enter (mode 0700; the socket 0600). For the eventjobs commands that rebuild the owner's
    tables while it runs; never on TCP."""

    def __init__(self, backend: ChdbBackend) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="eventjobs-owner-"))
        self.path = str(self._directory / "api.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            sock.listen(128)
        except OSError:
            sock.close()
            shutil.rmtree(self._directory, ignore_errors=True)
            raise
        self._server = ServerThread(clickhouse_http_app(backend, writable=True, token=None, hosts=None,
                                                        max_body_bytes=None), sock, "owner socket")
        self.name = self._server.name

    @property
    def alive(self) -> bool:
        return self._server.alive

    def start(self) -> str:
        self._server.start()
        return self.path

    def stop(self) -> None:
        self._server.stop()
        shutil.rmtree(self._directory, ignore_errors=True)
