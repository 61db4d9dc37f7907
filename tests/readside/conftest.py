"""Read-side fixtures: one conformance `backend` fixture over both ClickHouse engines.

`backend` is parametrized: "chdb" is the embedded engine in this process; "server" is
clickhouse-connect over HTTP, to the server at EVENTJOBS_CLICKHOUSE_URL when it is set, else to
the chdb HTTP test fixture (tests/support/chdb_http.py). Each test gets its own database (its
namespace), dropped afterwards.

chdb allows one data directory per process, so everything in this process shares the session's
chdb directory (the `clickhouse` fixture's when it is chdb); tests that need their own directory
use a subprocess.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventjobs.clickhouse import Backend, ChdbBackend, ServerBackend, quote_identifier
from tests.support.chdb_http import chdb_http_server
from tests.support.clickhouse import ClickHouseTarget

BACKENDS = ("chdb", "server")


def configured_server_url() -> str | None:
    return os.environ.get("EVENTJOBS_CLICKHOUSE_URL") or None


@pytest.fixture(scope="session")
def chdb_path(clickhouse: ClickHouseTarget, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chdb directory this test process uses (shared with the session `clickhouse` fixture)."""
    if clickhouse.kind == "chdb" and clickhouse.path is not None:
        return clickhouse.path
    return tmp_path_factory.mktemp("readside-chdb")


@pytest.fixture(scope="session")
def server_url(chdb_path: Path) -> Iterator[str]:
    """A ClickHouse HTTP URL: the configured real server, else the chdb HTTP test fixture."""
    configured = configured_server_url()
    if configured:
        yield configured
        return
    with chdb_http_server(chdb_path) as url:
        yield url


def open_test_backend(kind: str, chdb_path: Path, server_url: str, database: str) -> Backend:
    if kind == "chdb":
        return ChdbBackend(chdb_path, database, role="pytest")
    return ServerBackend(server_url, database)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, chdb_path: Path, namespace: str) -> Iterator[Backend]:
    """A backend of each kind, bound to a fresh database named after the test's namespace."""
    url = request.getfixturevalue("server_url") if request.param == "server" else ""
    opened = open_test_backend(request.param, chdb_path, url, namespace)
    opened.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(namespace)}", database="")
    try:
        yield opened
    finally:
        opened.command(f"DROP DATABASE IF EXISTS {quote_identifier(namespace)} SYNC", database="")
        opened.close()
