"""EVENTJOBS_CLICKHOUSE_URL: credentials before the host or in the query reach the client as its
user and password; a URL that cannot be used is refused in one line; the password is never shown."""

from __future__ import annotations

import pytest

from eventjobs.clickhouse import ClickHouseUnavailable, InvalidClickHouseUrl, ServerBackend, redact_url
from eventjobs.clickhouse.server_url import ServerAddress, parse_server_url
from eventjobs.dev.broker import free_port
from tests.support.cli import run_cli

SECRET = "s3cret-qs"


def test_credentials_before_the_host_are_percent_decoded() -> None:
    address = parse_server_url("https://alice:p%40ss%3Aw0rd@ch.example.com:8443/analytics")
    assert address == ServerAddress("https", "ch.example.com", 8443, "alice", "p@ss:w0rd", "analytics", {})


def test_credentials_in_the_query_are_the_user_and_password_not_client_options() -> None:
    address = parse_server_url("http://ch:8123/?user=alice&password=p%26ss&compress=lz4")
    assert address == ServerAddress("http", "ch", 8123, "alice", "p&ss", None, {"compress": "lz4"})
    assert parse_server_url("http://alice@ch/db?password=pw").password == "pw"
    assert parse_server_url("http://ch?username=bob").username == "bob"
    # the same value in both places is accepted
    assert parse_server_url("http://alice:pw@ch?user=alice&password=pw").password == "pw"
    # without credentials: no user, an empty password (clickhouse-connect's default user)
    assert parse_server_url("https://ch.example.com").port is None


def test_the_password_is_not_in_the_address_repr() -> None:
    assert SECRET not in repr(parse_server_url(f"http://alice@ch/?password={SECRET}"))


@pytest.mark.parametrize(("url", "problem"), [
    (f"http://alice:other@ch:8123/db?password={SECRET}",
     "the password is given with different values before the host and ?password=; give it once"),
    (f"http://ch:8123/?user=a&username=b&password={SECRET}",
     "the user name is given with different values ?user= and ?username=; give it once"),
    (f"http://ch:8123/?password={SECRET}&password={SECRET}", "?password= is given twice; give it once"),
    (f"http://alice:{SECRET}@ch:8123/?database=x",
     "?database= is not read: the URL says it by the path (http://host:8123/<database>)"),
    (f"http://alice:{SECRET}@ch:8123/?host=other", "?host= is not read: the URL says it by the host"),
    (f"tcp://alice:{SECRET}@ch:9000",
     "the scheme must be http or https, e.g. http://user:password@host:8123/database"),
    (f"http://alice:{SECRET}@ch:99999", "its port is not a number from 0 to 65535"),
])
def test_a_url_that_cannot_be_used_is_refused_in_one_line_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(InvalidClickHouseUrl) as refused:
        parse_server_url(url)
    message = str(refused.value)
    assert message.endswith(f"(EVENTJOBS_CLICKHOUSE_URL): {problem}")
    assert message.startswith("ClickHouse URL ") and "\n" not in message
    assert SECRET not in message


def test_redact_url_masks_every_place_a_credential_can_be() -> None:
    assert redact_url(f"https://u:{SECRET}@ch:8443/db?x=1") == "https://u:***@ch:8443/db?x=1"
    assert redact_url(f"http://u@ch/db?password={SECRET}&x=1") == "http://u@ch/db?password=***&x=1"
    assert redact_url(f"http://ch/?user=u&password={SECRET}&access_token=t0k") == \
        "http://ch/?user=u&password=***&access_token=***"
    assert redact_url("https://tok-abc123@ch.example.com") == "https://***@ch.example.com"  # a token, maybe
    assert redact_url("http://ch:8123") == "http://ch:8123"


def test_a_password_in_the_query_reaches_the_connection_attempt_and_is_not_in_its_error() -> None:
    # Through clickhouse-connect's real client, up to its connection attempt on a closed port
    port = free_port()
    with pytest.raises(ClickHouseUnavailable) as unavailable:
        ServerBackend(f"http://reader@127.0.0.1:{port}/db?password={SECRET}", "db", connect_timeout_s=1)
    message = str(unavailable.value)
    assert message.startswith(f"cannot reach ClickHouse at http://reader@127.0.0.1:{port}/db?password=***: ")
    assert f"port={port}" in message and SECRET not in message


def test_stats_with_a_password_in_the_query_is_one_error_line_without_it() -> None:
    port = free_port()
    result = run_cli("stats", env={"EVENTJOBS_CLICKHOUSE_URL": f"http://reader@127.0.0.1:{port}/db?password={SECRET}"},
                     timeout=60)
    assert result.returncode == 1
    # (the lines before it are urllib3's and clickhouse-connect's warnings of the failed attempt)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach ClickHouse at http://reader@127.0.0.1:{port}/db?password=***: ")
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
