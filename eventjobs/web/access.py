"""The optional access token: when configured, every request must carry it.

A browser proves it once, with the login form or `?token=` in a link, and gets a cookie holding
an HMAC of the token (never the token itself); the `?token=` form is answered with a redirect to
the same address without it, so the token does not stay in the address bar or the history.
Comparisons are constant-time. The token is never written into a page, a redirect or a log line
(the server's access log is off for this reason: it would print `?token=`).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "eventjobs_dashboard"
LOGIN_PATH = "/login"
#: paths served without the token: the login form and the vendored assets (nothing of the data)
OPEN_PREFIXES = ("/static/", LOGIN_PATH)


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
