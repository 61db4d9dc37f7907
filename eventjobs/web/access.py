"""Who may talk to the dashboard: the `Host` allow-list, the origin of every POST, the access token.

* `HostAllowList`: Starlette's `TrustedHostMiddleware` over the allowed names, with a refusal
  that says what to do. A page whose DNS name was rebound to 127.0.0.1 reaches the port, but its
  requests carry its own name and are refused, so it reads nothing.
* `OriginCheck`: a POST whose `Origin` (or, when a browser sends none, `Referer`) is not the
  dashboard's own address is refused with 403, before the CSRF check and the token: a page of
  another site can submit a form to the dashboard, but its browser names that site.
* `TokenGate`, the access token (optional on loopback, required beyond it, see the CLI): a
  browser proves it once, with the login form or `?token=` in a link, and gets a cookie holding
  an HMAC of the token (never the token itself); the `?token=` form is answered with a redirect
  to the same address without it, so the token does not stay in the address bar or the history.
  Comparisons are constant-time. The token is never written into a page, a redirect or a log
  line (the server's access log is off for this reason: it would print `?token=`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "eventjobs_dashboard"
LOGIN_PATH = "/login"
#: paths served without the token: the login form and the vendored assets (nothing of the data)
OPEN_PREFIXES = ("/static/", LOGIN_PATH)


#: methods that change nothing (the dashboard's GETs never do); every other one is origin-checked
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_HOST_PASSED = "eventjobs.host_allowed"


class HostAllowList:
    """ASGI middleware: requests whose `Host` is not in `hosts` get a 400 saying how to allow it.

    The check itself is Starlette's `TrustedHostMiddleware`; this only replaces its refusal text.
    """

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = list(hosts)
        self._check = TrustedHostMiddleware(self._allowed, allowed_hosts=self.hosts, www_redirect=False)

    async def _allowed(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_HOST_PASSED] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._check(scope, receive, send)
            return
        refused = False

        async def answer(message: Message) -> None:
            nonlocal refused
            if scope.get(_HOST_PASSED):
                await send(message)
            elif not refused:  # TrustedHostMiddleware's own 400: answer with what to do instead
                refused = True
                host = Headers(scope=scope).get("host", "")
                await PlainTextResponse(
                    f"this dashboard does not answer to the host name {host[:200]!r}; it answers to "
                    f"{', '.join(self.hosts)} (add a name with --allowed-host or EVENTJOBS_DASHBOARD_ALLOWED_HOSTS)\n",
                    status_code=400)(scope, receive, send)

        await self._check(scope, receive, answer)


def same_origin(source: str, host: str) -> bool:
    """Whether `source` (an `Origin` or a `Referer`) names the host:port of the `Host` header `host`.
    The opaque origin `null` (sandboxed frames, `data:` pages) never does."""
    parts = urlsplit(source.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False
    default = f":{_DEFAULT_PORTS[parts.scheme]}"
    return parts.netloc.lower().removesuffix(default) == host.strip().lower().removesuffix(default)


class OriginCheck:
    """ASGI middleware: a request that may change something (not GET/HEAD/OPTIONS) must come from a
    page of the dashboard itself: its `Origin`, or without one its `Referer`, must name the host
    it was sent to (already checked against the allow-list). Browsers send `Origin` with every
    cross-site POST; a request with neither header is no browser's form (the CSRF token still
    applies to it). Refusals are 403 with one line saying why."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        source, which = (origin, "Origin") if origin is not None else (headers.get("referer"), "Referer")
        if source is None or same_origin(source, headers.get("host", "")):
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse(
            f"refused: this {scope['method']} was sent from another site ({which} {source[:200]!r}), not from a "
            f"page of this dashboard; open the dashboard itself to act on jobs\n", status_code=403)
        await response(scope, receive, send)


def cookie_value(token: str) -> str:
    """What the session cookie holds for `token`: an HMAC of it, so the cookie never is the token."""
    return hmac.new(token.encode(), b"eventjobs dashboard session", hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def set_session(response: Response, token: str) -> None:
    response.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="strict", path="/")


class TokenGate:
    """ASGI middleware: without a valid cookie or `?token=`, GETs go to the login form, the rest get 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token
        self._cookie = cookie_value(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self._cookie.encode()):
            await self.app(scope, receive, send)
            return
        given = request.query_params.get("token")
        if given is not None and token_matches(given, self.token):
            rest = urlencode([(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k != "token"])
            response: Response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
            set_session(response, self.token)
        elif request.method in ("GET", "HEAD"):
            response = RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': scope['path']})}", status_code=303)
        else:
            response = Response("this dashboard needs its access token: open /login first\n", status_code=401,
                                media_type="text/plain")
        await response(scope, receive, send)


#: headers on every answer: no framing (the action buttons cannot be clickjacked), no referrer
#: leaving the dashboard, no content sniffing
SECURITY_HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
                    (b"referrer-policy", b"same-origin"), (b"x-content-type-options", b"nosniff"))


class SecurityHeaders:
    """ASGI middleware adding `SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)
