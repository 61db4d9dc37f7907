"""The dashboard as an ASGI app: `create_app(settings, app)` puts pages, actions, the `Host`
allow-list, the origin check, the CSRF check, the optional access token and the vendored assets
together.

Reads go to the ClickHouse projections (`reads.ReadSide`); writes are POSTs to `/actions/...`
that call `App` methods appending events. Every request's `Host` must be in the allow-list
(a DNS-rebinding page is refused, see `access.py`); every POST must come from a page of the
dashboard (`Origin` / `Referer`). CSRF: asgi-csrf's double-submit cookie, a token in every form;
the action paths are checked even for a request without cookies (asgi-csrf would otherwise let
such a request through, and a cross-site form post sends no SameSite cookie).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.errors import KafkaError
from asgi_csrf import asgi_csrf
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from eventjobs import App
from eventjobs.clickhouse.errors import ClickHouseError
from eventjobs.kafka.admin import KafkaUnavailable
from eventjobs.settings import Settings
from eventjobs.web import actions, pages
from eventjobs.http_hosts import allowed_hosts
from eventjobs.web.access import (
    LOGIN_PATH,
    HostAllowList,
    OriginCheck,
    SecurityHeaders,
    TokenGate,
    set_session,
    token_matches,
)
from eventjobs.web.filters import local_path
from eventjobs.web.reads import ReadSide
from eventjobs.web.views import STATIC_DIR, problem, render, templates


def _login_page(token: str | None) -> Any:
    async def login(request: Request) -> Response:
        next_path = local_path(request.query_params.get("next", "/"), "/")
        if request.method == "POST":
            form = await request.form()
            if token is not None and token_matches(str(form.get("token", "")), token):
                response = RedirectResponse(next_path, status_code=303)
                set_session(response, token)
                return response
            return render(request, "login.html", {"next": next_path, "failed": True}, status_code=401)
        return render(request, "login.html", {"next": next_path, "failed": False})
    return login


async def _unavailable(request: Request, error: Exception) -> Response:
    """Kafka or ClickHouse did not answer: a 503 page with one line, not a traceback."""
    if isinstance(error, KafkaUnavailable):
        what = str(error)
    elif isinstance(error, KafkaError):
        what = f"Kafka at {request.app.state.settings.kafka_bootstrap} did not answer ({type(error).__name__})"
    else:
        what = f"the read side (ClickHouse) failed: {error}"
    return problem(request, 503, f"{what}; the page shows again once it answers")


def create_app(settings: Settings, app: App, *, token: str | None = None, reads: ReadSide | None = None,
               close_app: bool = True, hosts: Sequence[str] | None = None) -> ASGIApp:
    """The dashboard for `app`'s namespace. `token`: when given, every request must carry it.
    `close_app`: close the App's Kafka clients when the server stops. `hosts`: the `Host` names
    it answers (default: `settings.dashboard_host`, the loopback names and
    `settings.dashboard_allowed_hosts`)."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if close_app:
                await app.close()

    routes = [
        Route("/", pages.overview),
        Route("/api/series", pages.series),
        Route("/jobs", pages.jobs),
        Route("/jobs/{job_id:path}", pages.job),
        Route("/dead-letters", pages.dead_letters),
        Route("/workers", pages.workers),
        Route("/queues", pages.queues),
        Route(LOGIN_PATH, _login_page(token), methods=["GET", "POST"]),
        *(Route(path, handler, methods=["POST"]) for path, handler in actions.ROUTES),
        Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]
    web = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={KafkaError: _unavailable, KafkaUnavailable: _unavailable,
                                        ClickHouseError: _unavailable})
    web.state.settings = settings
    web.state.app = app
    web.state.reads = reads or ReadSide(settings)
    web.state.templates = templates()
    protected: ASGIApp = asgi_csrf(web, signing_secret=secrets.token_hex(32),
                                   always_protect={*actions.PATHS, LOGIN_PATH})
    if token:
        protected = TokenGate(protected, token)
    if hosts is None:
        hosts = allowed_hosts(settings.dashboard_host, settings.dashboard_allowed_hosts)
    return SecurityHeaders(HostAllowList(OriginCheck(protected), hosts))
