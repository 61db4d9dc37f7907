"""Test fixture: a ClickHouse HTTP server whose engine is chdb (no real server installs here).

No ClickHouse server recent enough for clickhouse-connect can be installed on the development
machine, so the server code path (clickhouse-connect over HTTP) is tested against
`eventjobs.clickhouse.http_api.ReadApi`, the projector's read API, started on a free loopback
port over a chdb directory. It is a real ClickHouse engine behind a minimal ClickHouse HTTP
interface, not a mock; when `EVENTJOBS_CLICKHOUSE_URL` is set the same tests run against that
real server instead (see docs/readside.md).

Run `python -m tests.support.chdb_http DIR [ROLE] [--port N] [--no-advertise]` to serve DIR from a separate process (tests use that
to hold a chdb directory the way a running projector does); it prints the URL and serves until
killed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eventjobs.clickhouse.chdb_backend import ChdbBackend
from eventjobs.clickhouse.http_api import ReadApi


@contextmanager
def chdb_http_server(path: Path, *, user: str | None = None, password: str | None = None) -> Iterator[str]:
    """Serve the chdb directory `path` over HTTP on 127.0.0.1:<free port>; yields the URL."""
    backend = ChdbBackend(path, "default", role="test chdb HTTP server")
    api = ReadApi(backend, "127.0.0.1", 0, user=user, password=password)
    try:
        yield api.start()
    finally:
        api.stop()
        backend.close()


def main(argv: list[str]) -> None:
    """Hold `argv[0]` as a projector would: open it, serve and advertise the read API, wait.

    Options: `--no-advertise` (serve without recording the address), `--port N` (a fixed port,
    e.g. to restart the "server" where its clients expect it).
    """
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
    positional = [arg for i, arg in enumerate(argv) if not arg.startswith("--") and (i == 0 or argv[i - 1] != "--port")]
    role = positional[1] if len(positional) > 1 else "test holder"
    backend = ChdbBackend(Path(positional[0]), "default", role=role)
    api = ReadApi(backend, "127.0.0.1", port)
    url = api.start()
    if "--no-advertise" not in argv:
        api.advertise(role)
    print(url, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
