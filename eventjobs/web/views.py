"""Rendering: the Jinja2 environment, the values every page gets, and the error pages."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

NAV = (("/", "Overview"), ("/jobs", "Jobs"), ("/dead-letters", "Dead letters"), ("/workers", "Workers"),
       ("/queues", "Queues"))


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), default=str)


def templates() -> Jinja2Templates:
    engine = Jinja2Templates(directory=str(TEMPLATES_DIR))
    engine.env.filters.update(time=_time, seconds=_seconds, percent=_percent, compact_json=_compact_json)
    return engine


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A page with what every page shows: namespace, navigation, the CSRF token, a notice."""
    state = request.app.state
    base = {
        "namespace": state.settings.namespace,
        "nav": NAV,
        "path": request.url.path,
        "csrftoken": request.scope["csrftoken"]() if "csrftoken" in request.scope else "",
        "notice": request.query_params.get("notice", "")[:300],
        "error": request.query_params.get("error", "")[:300],
        "refresh_url": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    }
    response: HTMLResponse = state.templates.TemplateResponse(request, name, {**base, **context},
                                                             status_code=status_code)
    return response


def problem(request: Request, status_code: int, message: str) -> HTMLResponse:
    """An error page with one clear line (bad filter 400, unknown job 404, Kafka down 503)."""
    return render(request, "problem.html", {"status_code": status_code, "message": message}, status_code)
