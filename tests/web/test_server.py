"""The dashboard's HTTP rules without a browser: CSRF on every write, the access token, the
loopback default, a clear 400 for a bad filter, a clear error for a taken port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator

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


def _client(token: str | None = None) -> Iterator[TestClient]:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", namespace="webunit")  # never reached by these requests
    with TestClient(create_app(settings, App("webunit", settings=settings), token=token),
                    base_url="http://127.0.0.1", follow_redirects=False) as client:
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
])
def test_a_bad_filter_is_a_400_that_says_what_is_allowed(client: TestClient, query: str, message: str) -> None:
    answer = client.get(f"/jobs?{query}")
    assert answer.status_code == 400
    assert message.replace("'", "&#39;") in answer.text


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
