"""Conformance of the two ClickHouse backends: same SQL, same Python values, same errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from eventjobs.clickhouse import (
    Backend,
    ChdbBackend,
    ClickHouseLocked,
    ClickHouseQueryError,
    ClickHouseUnavailable,
    ServerBackend,
    open_backend,
    redact_url,
)
from eventjobs.dev.broker import free_port
from eventjobs.settings import Settings
from tests.support.chdb_http import chdb_http_server

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2024, 5, 17, 12, 30, 45, 123000, tzinfo=timezone.utc)


def test_inserted_values_come_back_as_the_same_python_values(backend: Backend) -> None:
    # Given a table with the column types the projections use
    backend.command(
        "CREATE TABLE t (id String, at DateTime64(3, 'UTC'), maybe Nullable(DateTime64(3, 'UTC')), n UInt64, "
        "f Float64, tags Array(String), kind LowCardinality(String), note Nullable(String)) "
        "ENGINE = MergeTree ORDER BY id"
    )
    # When rows are inserted column-wise and read back
    written = backend.insert("t", ["id", "at", "maybe", "n", "f", "tags", "kind", "note"], [
        ["a", "b"], [AT, AT], [None, AT], [1, 2**64 - 1], [0.5, -1.25], [[], ["x", "y'z"]], ["k", "k"],
        [None, "tab\there"],
    ])
    rows = backend.query("SELECT * FROM t ORDER BY id").dicts()
    # Then both engines give identical Python values
    assert written == 2
    assert rows == [
        {"id": "a", "at": AT, "maybe": None, "n": 1, "f": 0.5, "tags": [], "kind": "k", "note": None},
        {"id": "b", "at": AT, "maybe": AT, "n": 2**64 - 1, "f": -1.25, "tags": ["x", "y'z"], "kind": "k",
         "note": "tab\there"},
    ]


@pytest.mark.parametrize("value", ["plain", "it's", "back\\slash", "tab\tand\nnewline", "ünïcode"])
def test_parameters_bind_the_same_on_both_engines(backend: Backend, value: str) -> None:
    result = backend.query("SELECT {v:String} AS v, length({v:String}) AS n", {"v": value})
    assert result.rows == [(value, len(value.encode()))]


def test_datetime_and_array_parameters(backend: Backend) -> None:
    result = backend.query("SELECT {at:DateTime64(3, 'UTC')} AS at, {ids:Array(String)} AS ids",
                           {"at": AT, "ids": ["a", "b'c"]})
    assert result.rows == [(AT, ["a", "b'c"])]


def test_a_rejected_statement_raises_query_error_with_clickhouse_code(backend: Backend) -> None:
    with pytest.raises(ClickHouseQueryError) as syntax:
        backend.query("SELEC 1")
    assert syntax.value.code == 62 and "Syntax error" in str(syntax.value)
    with pytest.raises(ClickHouseQueryError) as unknown:
        backend.query("SELECT * FROM no_such_table")
    assert unknown.value.code == 60


def test_unreachable_server_is_a_clear_error_without_the_password() -> None:
    url = f"http://reader:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(ClickHouseUnavailable) as error:
        ServerBackend(url, "db", connect_timeout_s=1)
    assert "s3cret" not in str(error.value)
    assert "reader:***@127.0.0.1" in str(error.value)
    assert "EVENTJOBS_CLICKHOUSE_URL" in str(error.value)


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("https://u:p%40ss@ch.example:8443/db?x=1") == "https://u:***@ch.example:8443/db?x=1"
    assert redact_url("http://ch:8123") == "http://ch:8123"


@pytest.mark.parametrize("credentials", [
    ("reader:p%40ss%26w0rd@", ""), ("reader@", "?password=p%40ss%26w0rd"), ("", "?user=reader&password=p%40ss%26w0rd"),
])
def test_a_server_with_a_password_answers_wherever_the_url_carries_it(chdb_path: Path,
                                                                      credentials: tuple[str, str]) -> None:
    # Given a ClickHouse HTTP interface that requires the password `p@ss&w0rd`
    with chdb_http_server(chdb_path, password="p@ss&w0rd") as url:
        address = url.removeprefix("http://").rstrip("/")
        before_host, query = credentials
        # When the URL carries the credentials before the host or in its query, the server answers
        backend = ServerBackend(f"http://{before_host}{address}/{query}", "default", connect_timeout_s=2)
        try:
            assert backend.query("SELECT 1 AS one").rows == [(1,)]
        finally:
            backend.close()
        # And a wrong password is refused by the server, in an error that does not repeat it
        with pytest.raises(ClickHouseQueryError) as refused:
            ServerBackend(f"http://reader@{address}/?password=wr0ng-pw", "default", connect_timeout_s=2)
        assert refused.value.code == 516 and "wr0ng-pw" not in str(refused.value)


def test_http_api_accepts_clickhouse_connects_own_native_insert_and_query(server_url: str, namespace: str) -> None:
    # clickhouse-connect's default paths (Native format, compression negotiation) work on the fixture
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=server_url)
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {namespace}")
        client.command(f"CREATE TABLE {namespace}.n (id UInt32, s String) ENGINE = MergeTree ORDER BY id")
        client.insert(f"{namespace}.n", [(i, f"s{i}") for i in range(1000)], column_names=["id", "s"])
        assert client.query(f"SELECT count(), sum(id) FROM {namespace}.n").result_rows == [(1000, 499500)]
        assert client.ping()
    finally:
        client.command(f"DROP DATABASE IF EXISTS {namespace} SYNC")
        client.close()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Another process holding a chdb directory and serving its read API (as a projector does)."""
    directory = tmp_path / "state" / "chdb"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.chdb_http", str(directory), "eventjobs project"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield directory, url
    finally:
        process.kill()
        process.wait()


def test_a_locked_chdb_directory_names_its_holder(holder: tuple[Path, str]) -> None:
    directory, url = holder
    with pytest.raises(ClickHouseLocked) as error:
        ChdbBackend(directory, "default")
    message = str(error.value)
    assert "eventjobs project" in message and "read API" in message and url in message


def test_open_backend_goes_through_the_owners_read_api(holder: tuple[Path, str]) -> None:
    directory, url = holder
    settings = Settings(state_dir=directory.parent, namespace="default")
    backend = open_backend(settings)
    try:
        assert backend.kind == "server" and url in backend.describe()
        assert backend.query("SELECT 41 + 1").scalar() == 42
    finally:
        backend.close()


def test_a_command_that_writes_goes_through_the_owners_socket_and_a_reader_cannot_write(
        holder: tuple[Path, str]) -> None:
    # Given another process holding the chdb directory as the projector does
    directory, url = holder
    settings = Settings(state_dir=directory.parent, namespace="default")
    # When a writing command (replay, projections apply) opens the read side, it writes
    writer = open_backend(settings, writes=True)
    reader = open_backend(settings)
    try:
        assert "owner socket" in writer.describe() and url not in writer.describe()
        writer.command("CREATE TABLE IF NOT EXISTS written_by_owner (x UInt8) ENGINE = MergeTree ORDER BY x")
        writer.command("INSERT INTO written_by_owner SELECT 7")
        # while a reading command, through the read API with the recorded token, reads and cannot write
        assert reader.query("SELECT sum(x) FROM written_by_owner").scalar() == 7
        with pytest.raises(ClickHouseQueryError) as error:
            reader.command("DROP TABLE written_by_owner")
        assert error.value.code == 164
        assert reader.query("EXISTS TABLE written_by_owner").scalar() == 1
    finally:
        reader.close()
        writer.close()


def test_http_api_with_credentials_refuses_a_wrong_password(chdb_path: Path) -> None:
    from eventjobs.clickhouse.http_api import ReadApi

    engine = ChdbBackend(chdb_path, "default")
    api = ReadApi(engine, token="right")
    url = api.start()
    try:
        host = url.removeprefix("http://")
        assert ServerBackend(f"http://reader:right@{host}", "default").query("SELECT 1").scalar() == 1
        with pytest.raises(ClickHouseQueryError) as error:
            ServerBackend(f"http://reader:wrong@{host}", "default")
        assert error.value.code == 516 and "wrong" not in str(error.value)
    finally:
        api.stop()
        engine.close()


def test_the_read_api_binds_to_loopback_by_default(chdb_path: Path) -> None:
    from eventjobs.clickhouse.http_api import ReadApi

    engine = ChdbBackend(chdb_path, "default")
    api = ReadApi(engine)
    try:
        assert api.url.startswith("http://127.0.0.1:")
    finally:
        api.stop()
        engine.close()
    assert os.getpid() > 0
