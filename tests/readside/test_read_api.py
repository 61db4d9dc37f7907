"""The projector's read API against the real chdb engine: reads work with the token, every write is
refused by ClickHouse itself (`readonly = 1`), requests without the token or with a foreign `Host`
are refused, and writes go only through the owner socket."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from eventjobs.clickhouse import ChdbBackend, ClickHouseQueryError, ServerBackend, quote_identifier
from eventjobs.clickhouse.http_api import MAX_READ_REQUEST_BYTES, OwnerApi, ReadApi
from eventjobs.clickhouse.ownership import owner_file, read_owner

TOKEN = "read-api-test-token-5f2c"


@pytest.fixture
def engine(chdb_path: Path, namespace: str) -> Iterator[ChdbBackend]:
    """The session's chdb engine with a database of this test's own holding a table `t` of 3 rows."""
    backend = ChdbBackend(chdb_path, namespace, role="pytest")
    backend.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(namespace)}", database="")
    backend.command("CREATE TABLE t (x UInt64) ENGINE = MergeTree ORDER BY x")
    backend.command("INSERT INTO t VALUES (1), (2), (3)")
    try:
        yield backend
    finally:
        backend.command(f"DROP DATABASE IF EXISTS {quote_identifier(namespace)} SYNC", database="")
        backend.close()


@pytest.fixture
def api(engine: ChdbBackend) -> Iterator[ReadApi]:
    served = ReadApi(engine, token=TOKEN)
    served.start()
    try:
        yield served
    finally:
        served.stop()


def _request(api: ReadApi, method: str, target: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, host: str | None = None) -> tuple[int, str, dict[str, str]]:
    """One raw HTTP request (exactly these headers, this Host) to the read API."""
    parts = urlsplit(api.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host or parts.netloc)
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace"), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def _bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _rows(engine: ChdbBackend) -> list[tuple[int, int]]:
    return engine.query("SELECT count(), sum(x) FROM t").rows


def test_reads_work_with_the_token_through_clickhouse_connect(api: ReadApi, namespace: str) -> None:
    reader = ServerBackend(api.url, namespace, access_token=TOKEN)
    try:
        assert reader.query("SELECT count() AS n, sum(x) AS s FROM t").dicts() == [{"n": 3, "s": 6}]
        assert reader.query("SELECT {v:String} AS v", {"v": "it's"}).scalar() == "it's"
        assert reader.query("SHOW TABLES").rows == [("t",)]
        assert reader.query("DESCRIBE TABLE t").rows[0][:2] == ("x", "UInt64")
        assert reader.query("EXISTS TABLE t").scalar() == 1
        assert reader.query("WITH 2 AS k SELECT count() * k FROM t").scalar() == 6
    finally:
        reader.close()


WRITES = [
    "INSERT INTO t VALUES (4)",
    "INSERT INTO t SELECT 5",
    "CREATE TABLE u (x UInt8) ENGINE = Memory",
    "DROP TABLE t",
    "ALTER TABLE t DELETE WHERE 1",
    "TRUNCATE TABLE t",
    "SET readonly = 0",
    "SELECT count() FROM t SETTINGS readonly = 0",
    "SET readonly = 0; INSERT INTO t VALUES (6)",
    "SELECT 1; INSERT INTO t VALUES (7)",
    "INSERT INTO FUNCTION file('read_api_escape.tsv') SELECT 1",
]


@pytest.mark.parametrize("sql", WRITES)
@pytest.mark.parametrize("how", ["POST body", "GET query", "POST form"])
def test_every_write_is_refused_by_the_engine(api: ReadApi, engine: ChdbBackend, namespace: str, sql: str,
                                              how: str) -> None:
    before = _rows(engine)
    database = urlencode({"database": namespace})
    if how == "POST body":
        status, text, headers = _request(api, "POST", f"/?{database}", sql.encode(), _bearer())
    elif how == "GET query":
        status, text, headers = _request(api, "GET", f"/?{database}&{urlencode({'query': sql})}", None, _bearer())
    else:  # what a browser's <form method=post> sends
        status, text, headers = _request(api, "POST", f"/?{database}", urlencode({"query": sql}).encode(),
                                         {**_bearer(), "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403, (status, text)
    assert headers["x-clickhouse-exception-code"] == "164" and "readonly" in text.lower(), text
    assert _rows(engine) == before
    assert engine.query("EXISTS TABLE u").scalar() == 0


def test_clickhouse_connects_own_compressed_insert_is_refused(api: ReadApi, engine: ChdbBackend,
                                                              namespace: str) -> None:
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import DatabaseError

    client = clickhouse_connect.get_client(dsn=api.url, database=namespace, access_token=TOKEN)
    try:
        with pytest.raises(DatabaseError) as error:
            client.insert("t", [(9,)], column_names=["x"])
        assert "read-only" in str(error.value) or "READONLY" in str(error.value)
    finally:
        client.close()
    assert _rows(engine) == [(3, 6)]


def test_an_uncompressed_insert_with_data_is_refused_by_the_engine(api: ReadApi, engine: ChdbBackend,
                                                                   namespace: str) -> None:
    target = f"/?{urlencode({'database': namespace, 'query': 'INSERT INTO t FORMAT TabSeparated'})}"
    status, text, headers = _request(api, "POST", target, b"8\n9\n", _bearer())
    assert status == 403 and headers["x-clickhouse-exception-code"] == "164", text
    assert _rows(engine) == [(3, 6)]


def test_a_compressed_body_is_refused_before_it_is_unpacked(api: ReadApi) -> None:
    status, text, _ = _request(api, "POST", "/", gzip.compress(b"SELECT 1"), {**_bearer(), "Content-Encoding": "gzip"})
    assert status == 403 and "compressed request body" in text


def test_a_body_over_the_limit_is_413(api: ReadApi) -> None:
    status, _, _ = _request(api, "POST", "/", b"-" * (MAX_READ_REQUEST_BYTES + 1), _bearer())
    assert status == 413


@pytest.mark.parametrize("headers", [
    {},
    {"X-ClickHouse-User": "default"},
    {"Authorization": "Basic " + base64.b64encode(b"default:").decode()},
])
def test_a_request_without_the_token_is_401(api: ReadApi, headers: dict[str, str]) -> None:
    status, text, response_headers = _request(api, "GET", "/?query=SELECT+count()+FROM+system.tables", None, headers)
    assert status == 401 and response_headers["x-clickhouse-exception-code"] == "516"
    assert "needs its token" in text


def test_the_token_is_not_taken_from_the_address(api: ReadApi) -> None:
    # a token in a URL ends up in logs and histories: only headers carry it
    status, _, _ = _request(api, "GET", f"/?{urlencode({'query': 'SELECT 1', 'password': TOKEN})}")
    assert status == 401


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer not-the-token"},
    {"Authorization": "Basic " + base64.b64encode(b"default:not-the-token").decode()},
    {"X-ClickHouse-User": "default", "X-ClickHouse-Key": "not-the-token"},
    {"Authorization": "Basic %%%"},
])
def test_a_wrong_token_is_403_and_not_echoed(api: ReadApi, headers: dict[str, str]) -> None:
    status, text, _ = _request(api, "GET", "/?query=SELECT+1", None, headers)
    assert status == 403 and "Authentication failed" in text and "not-the-token" not in text


@pytest.mark.parametrize("headers", [
    _bearer(),
    {"Authorization": "Basic " + base64.b64encode(f"eventjobs:{TOKEN}".encode()).decode()},
    {"X-ClickHouse-User": "default", "X-ClickHouse-Key": TOKEN},
])
def test_the_token_in_each_header_clients_use_is_accepted(api: ReadApi, headers: dict[str, str]) -> None:
    status, text, _ = _request(api, "GET", "/?query=SELECT+41%2B1", None, headers)
    assert (status, text) == (200, "42\n")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "0.0.0.0:{port}"])
def test_a_foreign_host_is_refused_even_with_the_token(api: ReadApi, host: str) -> None:
    # what a page whose DNS name was rebound to 127.0.0.1 sends: its own name
    port = urlsplit(api.url).port
    status, _, _ = _request(api, "GET", "/?query=SELECT+1", None, _bearer(), host=host.format(port=port))
    assert status == 400


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}",
                                  "localhost"])
def test_the_loopback_names_are_answered(api: ReadApi, host: str) -> None:
    port = urlsplit(api.url).port
    status, text, _ = _request(api, "GET", "/?query=SELECT+1", None, _bearer(), host=host.format(port=port))
    assert (status, text) == (200, "1\n")


def test_a_request_without_a_host_is_refused(api: ReadApi) -> None:
    parts = urlsplit(api.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection._http_vsn_str = "HTTP/1.0"  # HTTP/1.0 may omit Host; 1.1 may not
        connection.putrequest("GET", "/?query=SELECT+1", skip_host=True)
        connection.putheader("Authorization", f"Bearer {TOKEN}")
        connection.endheaders()
        assert connection.getresponse().status == 400
    finally:
        connection.close()


def test_writes_go_through_the_owner_socket_only(engine: ChdbBackend, namespace: str) -> None:
    owner = OwnerApi(engine)
    owner.start()
    try:
        socket_path = Path(owner.path)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        writer = ServerBackend("http://localhost", namespace, unix_socket=owner.path)
        try:
            writer.command("INSERT INTO t SELECT 10")
            assert writer.insert("t", ["x"], [[20, 30]]) == 2
            assert writer.query("SELECT count(), sum(x) FROM t").rows == [(6, 66)]
            assert "owner socket" in writer.describe()
        finally:
            writer.close()
    finally:
        owner.stop()
    assert not Path(owner.path).parent.exists()


def test_advertising_keeps_the_token_in_a_private_owner_record(engine: ChdbBackend, api: ReadApi) -> None:
    owner = OwnerApi(engine)
    try:
        api.advertise("pytest holder", owner)
        record_path = owner_file(engine.path)
        assert stat.S_IMODE(record_path.stat().st_mode) == 0o600
        record = read_owner(engine.path)
        assert record is not None and record.read_api == api.url and record.owner_socket == owner.path
        assert record.read_api_token == TOKEN
        assert TOKEN not in record.describe() and TOKEN not in repr(record)
        assert json.loads(record_path.read_text())["read_api_token"] == TOKEN
    finally:
        owner.stop()
        engine.set_read_api(None, "pytest")


def test_a_fresh_token_per_read_api_when_none_is_given(engine: ChdbBackend) -> None:
    first, second = ReadApi(engine), ReadApi(engine)
    try:
        assert first.token != second.token and len(first.token) >= 40
    finally:
        first.stop()
        second.stop()


def test_a_wrong_token_from_a_backend_is_a_clear_error_without_the_token(api: ReadApi, namespace: str) -> None:
    with pytest.raises(ClickHouseQueryError) as error:
        ServerBackend(api.url, namespace, access_token="guessed-token")
    assert error.value.code == 516 and "guessed-token" not in str(error.value)


async def test_the_projector_fails_loudly_when_its_read_api_stops(engine: ChdbBackend) -> None:
    import asyncio

    from eventjobs.clickhouse import ClickHouseError
    from eventjobs.readside.service import _watch_servers

    served = ReadApi(engine, token=TOKEN)
    served.start()
    watch = asyncio.ensure_future(_watch_servers([served], asyncio.Event()))
    await asyncio.sleep(0.3)
    assert not watch.done()  # quiet while it serves
    served.stop()  # as if its thread had died
    with pytest.raises(ClickHouseError, match="the read API of the projector stopped"):
        await asyncio.wait_for(watch, 10)
