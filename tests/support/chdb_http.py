"""Test fixture: a ClickHouse HTTP server whose engine is chdb (no real server installs here).

No ClickHouse server recent enough for clickhouse-connect can be installed on the development
machine, so the server code path (clickhouse-connect over HTTP) is tested against the read API's
app (`eventjobs.clickhouse.http_api.clickhouse_http_app`) served with writes, without a token, on
a free loopback port over a chdb directory: a real ClickHouse engine behind a minimal ClickHouse
HTTP interface, not a mock. Only tests serve it that way; the projector serves it read-only with
a token (`ReadApi`) and with writes only on its owner socket (`OwnerApi`). When
`EVENTJOBS_CLICKHOUSE_URL` is set the same tests run against that real server instead (see
docs/readside.md).

Run `python -m tests.support.chdb_http DIR [ROLE] [--port N] [--no-advertise]` to serve DIR from a
separate process; it prints the URL and serves until killed. Without `--no-advertise` it holds DIR
the way a running projector does (read API and owner socket, advertised in the owner record);
with it, it is a writable stand-in for a ClickHouse server at that URL, recorded nowhere (tests
point `EVENTJOBS_CLICKHOUSE_URL` at it; `--port N` restarts the "server" where its clients expect it).
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eventjobs.clickhouse.chdb_backend import ChdbBackend
from eventjobs.clickhouse.http_api import OwnerApi, ReadApi, ServerThread, clickhouse_http_app


class StandInServer:
    """The writable stand-in for a ClickHouse server on 127.0.0.1:`port` (0: any free one)."""

    def __init__(self, backend: ChdbBackend, port: int = 0, *, password: str | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = ServerThread(clickhouse_http_app(backend, writable=True, token=password, hosts=None,
                                                        max_body_bytes=None), sock, "test ClickHouse server")

    def start(self) -> str:
        self._server.start()
        return self.url

    def stop(self) -> None:
        self._server.stop()


@contextmanager
def chdb_http_server(path: Path, *, password: str | None = None) -> Iterator[str]:
    """Serve the chdb directory `path` as a writable ClickHouse HTTP server on 127.0.0.1:<free port>; yields the URL.

    With `password`, every query must carry it as its password (Basic or `X-ClickHouse-Key`), as a
    server with a password user wants; the user name is not checked."""
    backend = ChdbBackend(path, "default", role="test chdb HTTP server")
    server = StandInServer(backend, password=password)
    try:
        yield server.start()
    finally:
        server.stop()
        backend.close()


def main(argv: list[str]) -> None:
    """Hold `argv[0]` as a projector would, or (`--no-advertise`) serve it as a writable stand-in server."""
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
    positional = [arg for i, arg in enumerate(argv) if not arg.startswith("--") and (i == 0 or argv[i - 1] != "--port")]
    role = positional[1] if len(positional) > 1 else "test holder"
    backend = ChdbBackend(Path(positional[0]), "default", role=role)
    if "--no-advertise" in argv:
        url = StandInServer(backend, port).start()
    else:
        api, owner = ReadApi(backend, "127.0.0.1", port), OwnerApi(backend)
        url = api.start()
        owner.start()
        api.advertise(role, owner)
    print(url, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
