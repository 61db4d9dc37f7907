"""The dashboard's HTTP rules without a browser: the Host allow-list, the origin of every POST,
CSRF on every write, the access token (required beyond loopback), the loopback default, a clear
400 for a bad filter, a clear error for a taken port; the rules that depend on the server also
against the real one (`eventjobs dashboard` in its own process)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from eventjobs import App
from eventjobs.readside.queries import STATUSES
from eventjobs.settings import Settings
from eventjobs.web.access import COOKIE
from eventjobs.web.actions import PATHS
from eventjobs.web.app import create_app
from eventjobs.web.filters import local_path
from eventjobs.web.server import DashboardError, bind
from tests.support.cli import run_cli

TOKEN = "s3cret-dashboard-token"


def _client(token: str | None = None, base_url: str = "http://127.0.0.1", **settings_given: Any) -> Iterator[TestClient]:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", namespace="webunit", **settings_given)  # Kafka never reached
    with TestClient(create_app(settings, App("webunit", settings=settings), token=token),
                    base_url=base_url, follow_redirects=False) as client:
        yield client


@pytest.fixture
def client() -> Iterator[TestClient]:
    yield from _client()


@pytest.fixture
def gated() -> Iterator[TestClient]:
    yield from _client(TOKEN)


@pytest.mark.parametrize("path", PATHS)
def test_every_action_refuses_a_post_without_the_csrf_token(client: TestClient, path: str) -> None:
    # no cookie at all: what a cross-site form post looks like (SameSite keeps the cookie back)
    assert client.post(path, data={"job_id": "x", "name": "x", "queue": "x"}).status_code == 403
    # a cookie, but the form does not carry its token
    client.get("/login")  # any page that renders a form sets the CSRF cookie
    assert client.cookies.get("csrftoken")
    refused = client.post(path, data={"job_id": "x", "csrftoken": "forged"})
    assert refused.status_code == 403
    assert "did not match" in refused.text


def test_a_post_with_the_csrf_token_reaches_the_action(client: TestClient) -> None:
    page = client.get("/login")
    token = client.cookies.get("csrftoken")
    assert token and f'value="{token}"' in page.text
    answer = client.post("/actions/dead-letters/retry", data={"csrftoken": token, "job_id": "has space"})
    assert answer.status_code == 400  # past CSRF: the action checks its input
    assert "job id: expected a job id" in answer.text


def test_gets_never_change_anything_writes_are_posts_only(client: TestClient) -> None:
    for path in PATHS:
        assert client.get(path).status_code == 405


@pytest.mark.parametrize("query, message", [
    ("status=bogus", f"status: unknown state 'bogus' (allowed: {', '.join(STATUSES)})"),
    ("since=yesterday", "since: 'yesterday' is neither a time"),
    ("page=0", "page: a whole number from 1 to 100000, got '0'"),
    ("since=1h&until=2h", "since (1h) must be before until (2h)"),
    ("name=" + "n" * 201, "name: at most 200 characters, got 201"),
    ("as_of=yesterday", "as_of: --as-of 'yesterday' is not a moment: give an ISO-8601 time"),
    ("as_of=2999-01-01", "as_of: --as-of '2999-01-01' is in the future"),
    ("as_of=offset:0:1,0:2", "names partition 0 twice"),
    ("as_of=1h&args=x", "args: cannot be combined with as_of"),
])
def test_a_bad_filter_is_a_400_that_says_what_is_allowed(client: TestClient, query: str, message: str) -> None:
    answer = client.get(f"/jobs?{query}")
    assert answer.status_code == 400
    assert message.replace("'", "&#39;") in answer.text


def test_a_bad_moment_on_a_job_page_is_a_400(client: TestClient) -> None:
    answer = client.get("/jobs/some-job?as_of=soon")
    assert answer.status_code == 400
    assert "as_of: --as-of &#39;soon&#39; is not a moment" in answer.text


def test_a_bad_queue_on_the_queues_page_is_a_400(client: TestClient) -> None:
    answer = client.get("/queues?queue=" + "q" * 201)
    assert answer.status_code == 400
    assert "queue: at most 200 characters, got 201" in answer.text


def test_a_bad_window_is_a_400(client: TestClient) -> None:
    answer = client.get("/api/series?window=3y")
    assert answer.status_code == 400
    assert answer.json() == {"error": "window: '3y' is not one of 15m, 1h, 6h, 24h, 7d"}


def test_with_a_token_nothing_is_served_without_it(gated: TestClient) -> None:
    for path in ("/", "/jobs", "/dead-letters", "/workers", "/queues", "/api/series", "/jobs/x"):
        answer = gated.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    assert gated.get("/?token=wrong").headers["location"].startswith("/login")
    assert gated.post("/actions/dead-letters/retry", data={"job_id": "x"}).status_code in (401, 403)
    assert gated.get("/static/dashboard.css").status_code == 200  # the assets hold no data


def test_the_token_in_a_link_sets_a_cookie_and_is_dropped_from_the_address(gated: TestClient) -> None:
    answer = gated.get(f"/jobs?status=pending&token={TOKEN}")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/jobs?status=pending"
    cookie = answer.cookies.get(COOKIE)
    assert cookie and TOKEN not in cookie
    assert "httponly" in answer.headers["set-cookie"].lower()
    assert gated.get("/jobs?status=bogus").status_code == 400  # past the gate now


def test_the_login_form_checks_the_token_in_constant_time_and_never_echoes_it(gated: TestClient) -> None:
    gated.get("/login")
    csrf = gated.cookies.get("csrftoken")
    wrong = gated.post("/login?next=/jobs", data={"csrftoken": csrf, "token": "nope"})
    assert wrong.status_code == 401 and "nope" not in wrong.text
    right = gated.post("/login?next=/jobs", data={"csrftoken": csrf, "token": TOKEN})
    assert right.status_code == 303 and right.headers["location"] == "/jobs"
    assert TOKEN not in right.text and TOKEN not in right.headers.get("set-cookie", "")
    assert gated.get("/jobs?page=x").status_code == 400  # signed in
    for elsewhere in ("https://evil.example", "//evil.example", "/\\evil.example"):
        answer = gated.post("/login", params={"next": elsewhere}, data={"csrftoken": csrf, "token": TOKEN})
        assert answer.headers["location"] == "/", elsewhere


def test_it_binds_loopback_by_default_and_names_a_taken_port() -> None:
    assert Settings().dashboard_host == "127.0.0.1"
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(DashboardError, match=f"port {port} on 127.0.0.1 is already in use"):
            bind("127.0.0.1", port)
        run = subprocess.run([sys.executable, "-m", "eventjobs.cli", "dashboard", "--namespace", "webunit",
                              "--port", str(port)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 1
        assert f"port {port} on 127.0.0.1 is already in use by another process; choose another" in run.stderr
    finally:
        taken.close()


def test_the_default_bind_is_loopback_only() -> None:
    sock = bind(Settings().dashboard_host, 0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.family == socket.AF_INET
    finally:
        sock.close()


def test_kafka_not_answering_is_a_503_with_one_line(client: TestClient) -> None:
    answer = client.get("/workers")  # the registry is read from Kafka, which is not at 127.0.0.1:1
    assert answer.status_code == 503
    assert "Kafka at 127.0.0.1:1 did not answer (KafkaConnectionError)" in answer.text
    assert "Traceback" not in answer.text


def test_the_token_is_a_secret_in_config_show() -> None:
    result = run_cli("config", "show", "--json", env={"EVENTJOBS_DASHBOARD_TOKEN": TOKEN}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    assert json.loads(result.stdout)["dashboard_token"] == "**********"


def test_the_read_api_token_is_a_secret_in_config_show() -> None:
    result = run_cli("config", "show", "--json", env={"EVENTJOBS_READ_API_TOKEN": TOKEN}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    assert json.loads(result.stdout)["read_api_token"] == "**********"


def test_no_page_can_be_framed(client: TestClient, gated: TestClient) -> None:
    for answer in (client.get("/login"), gated.get("/"), client.get("/jobs?status=bogus")):
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'"


@pytest.mark.parametrize("back, expected", [
    ("/jobs?page=2", "/jobs?page=2"), ("//evil.example/x", "/dead-letters"), ("/\\evil.example", "/dead-letters"),
    ("https://evil.example", "/dead-letters"), ("jobs", "/dead-letters"), ("", "/dead-letters"),
])
def test_after_an_action_it_returns_only_to_a_page_of_the_dashboard(back: str, expected: str) -> None:
    assert local_path(back, "/dead-letters") == expected


# ---- the Host allow-list -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/login", "/jobs", "/static/dashboard.css"])
def test_a_foreign_host_is_refused_with_what_to_do(path: str) -> None:
    # what a page whose DNS name was rebound to 127.0.0.1 sends: its own name in Host
    for client in _client(base_url="http://rebound.example:8080"):
        answer = client.get(path)
        assert answer.status_code == 400
        assert "does not answer to the host name 'rebound.example:8080'" in answer.text
        assert "--allowed-host" in answer.text and "csrftoken" not in answer.cookies


def test_the_loopback_names_and_configured_hosts_are_answered() -> None:
    for base_url in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://LOCALHOST"):
        for client in _client(base_url=base_url):
            assert client.get("/login").status_code == 200, base_url
    for client in _client(base_url="http://dash.example.com", dashboard_allowed_hosts=("dash.example.com",)):
        assert client.get("/login").status_code == 200
    for client in _client(base_url="http://other.example.com", dashboard_allowed_hosts=("dash.example.com",)):
        assert client.get("/login").status_code == 400


def test_the_allowed_hosts_setting_takes_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTJOBS_DASHBOARD_ALLOWED_HOSTS", "dash.example.com, 10.1.2.3")
    assert Settings().dashboard_allowed_hosts == ("dash.example.com", "10.1.2.3")


# ---- the origin of every POST ------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "http://127.0.0.1:8080"},  # another port is another origin
    {"Origin": "null"},  # a sandboxed frame or a data: page
    {"Referer": "http://evil.example/page.html"},  # no Origin: the Referer decides
    {"Origin": "http://evil.example", "Referer": "http://127.0.0.1/jobs"},  # Origin wins
])
@pytest.mark.parametrize("path", [*PATHS, "/login"])
def test_a_cross_origin_post_is_refused_with_403_and_a_clear_message(client: TestClient, path: str,
                                                                      headers: dict[str, str]) -> None:
    client.get("/login")
    csrf = client.cookies.get("csrftoken")
    answer = client.post(path, data={"csrftoken": csrf, "job_id": "x", "name": "x", "queue": "x", "token": "x"},
                         headers=headers)
    assert answer.status_code == 403
    assert "was sent from another site" in answer.text and "not from a page of this dashboard" in answer.text


@pytest.mark.parametrize("headers", [
    {"Origin": "http://127.0.0.1"}, {"Origin": "http://127.0.0.1:80"}, {"Referer": "http://127.0.0.1/dead-letters"}, {},
])
def test_a_post_from_the_dashboards_own_page_passes_the_origin_check(client: TestClient,
                                                                     headers: dict[str, str]) -> None:
    client.get("/login")
    answer = client.post("/actions/dead-letters/retry", data={"csrftoken": client.cookies.get("csrftoken"),
                                                              "job_id": "has space"}, headers=headers)
    assert answer.status_code == 400 and "job id: expected a job id" in answer.text  # reached the action


def test_the_origin_check_leaves_gets_alone(client: TestClient) -> None:
    assert client.get("/login", headers={"Origin": "http://evil.example"}).status_code == 200


# ---- a token beyond loopback -------------------------------------------------------------------


@pytest.mark.parametrize("how", [["--host", "0.0.0.0"], ["--host", "::"], []])
def test_beyond_loopback_without_a_token_it_refuses_to_start(how: list[str]) -> None:
    env = {"EVENTJOBS_DASHBOARD_HOST": "0.0.0.0"} if not how else {}
    result = run_cli("dashboard", "--namespace", "webunit", "--port", "0", *how, env=env, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "without an access token: set EVENTJOBS_DASHBOARD_TOKEN" in lines[0], result.stderr


def test_loopback_addresses_need_no_token() -> None:
    from eventjobs.http_hosts import allowed_hosts, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5")
    assert allowed_hosts("0.0.0.0") == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("::1", ["Dash.example"]) == ["[::1]", "localhost", "127.0.0.1", "dash.example"]


# ---- the real server ---------------------------------------------------------------------------


def _serve(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, int]:
    """`eventjobs dashboard` in its own process on a free port; its process, bound host and port."""
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    probe = bind(host, 0)
    port = probe.getsockname()[1]
    probe.close()
    process = subprocess.Popen([sys.executable, "-m", "eventjobs.cli", "dashboard", "--namespace", "webunit",
                                "--port", str(port), *args], cwd=Path(__file__).resolve().parents[2],
                               env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **(env or {})},
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "dashboard of namespace webunit at" in line, line
    return process, host, port


def _raw(host: str, port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, str]:
    """One request with exactly these headers (Host included) to the real server."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_answering(host: str, port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _raw(host, port, "GET", "/static/dashboard.css", {"Host": f"{host}:{port}"})
            return
        except OSError:
            assert time.monotonic() < deadline, "the dashboard did not answer"
            time.sleep(0.1)


def test_the_real_server_refuses_a_rebound_host_and_a_cross_site_post() -> None:
    process, host, port = _serve("--allowed-host", "dash.example.com")
    try:
        _wait_answering(host, port)
        # Host: a DNS-rebinding page, a missing Host (HTTP/1.0 may omit it), the names it answers
        status, text = _raw(host, port, "GET", "/", {"Host": f"rebound.example:{port}"})
        assert status == 400 and "does not answer to the host name" in text
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection._http_vsn_str = "HTTP/1.0"
            connection.putrequest("GET", "/login", skip_host=True)
            connection.endheaders()
            assert connection.getresponse().status == 400
        finally:
            connection.close()
        for name in (f"127.0.0.1:{port}", f"localhost:{port}", f"dash.example.com:{port}"):
            assert _raw(host, port, "GET", "/login", {"Host": name})[0] == 200, name
        # Origin: a form another site's page submits
        status, text = _raw(host, port, "POST", "/actions/dead-letters/retry",
                            {"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example",
                             "Content-Type": "application/x-www-form-urlencoded"}, b"job_id=x")
        assert status == 403 and "was sent from another site" in text
    finally:
        _stop(process)


def test_the_real_server_on_ipv6_loopback_answers_its_bracketed_name() -> None:
    try:
        bind("::1", 0).close()
    except DashboardError:
        pytest.skip("no IPv6 loopback on this machine")
    process, host, port = _serve("--host", "::1")
    try:
        _wait_answering(host, port)
        assert _raw(host, port, "GET", "/login", {"Host": f"[::1]:{port}"})[0] == 200
        assert _raw(host, port, "GET", "/login", {"Host": f"rebound.example:{port}"})[0] == 400
    finally:
        _stop(process)


def test_beyond_loopback_with_a_token_it_starts_and_the_token_gates_it() -> None:
    # 0.0.0.0: every interface; the test talks to it over loopback only
    process, _, port = _serve("--host", "0.0.0.0", env={"EVENTJOBS_DASHBOARD_TOKEN": TOKEN})
    try:
        _wait_answering("127.0.0.1", port)
        status, _ = _raw("127.0.0.1", port, "GET", "/jobs", {"Host": f"127.0.0.1:{port}"})
        assert status == 303  # to the login form
        assert _raw("127.0.0.1", port, "GET", "/jobs", {"Host": f"rebound.example:{port}"})[0] == 400
    finally:
        _stop(process)
