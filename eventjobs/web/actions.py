"""Operator actions: POSTs (CSRF-checked by the middleware) that call `App` methods, each of which
appends events to the log. The read side shows the result once the projector has caught up.
Every action answers with a redirect back to the page it came from and a one-line notice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from eventjobs.app import NotInDeadLetters, UnknownQueue
from eventjobs.core.validation import issues
from eventjobs.web.filters import MAX_TEXT, BadFilter, job_id, local_path
from eventjobs.web.views import problem

def _redirect(back: str, **message: str) -> Response:
    separator = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{separator}{urlencode(message)}", status_code=303)


def _field(form: Any, key: str, what: str) -> str:
    value = str(form.get(key, "")).strip()
    if not value or len(value) > MAX_TEXT:
        raise BadFilter(f"{key}: {what} (1 to {MAX_TEXT} characters), got {value[:60]!r}")
    return value


async def _act(request: Request, default_back: str, act: Callable[[Any, Any], Awaitable[str]]) -> Response:
    form = await request.form()
    back = local_path(str(form.get("back", "")), default_back)
    try:
        notice = await act(request.app.state.app, form)
    except BadFilter as error:
        return problem(request, 400, str(error))
    except (NotInDeadLetters, UnknownQueue) as error:
        return _redirect(back, error=str(error))
    except ValidationError as error:  # a queue name the control record refuses
        return _redirect(back, error="; ".join(issue.message for issue in issues(error)))
    return _redirect(back, notice=notice)


async def retry_dead_letter(request: Request) -> Response:
    async def act(app: Any, form: Any) -> str:
        wanted = job_id(str(form.get("job_id", "")))
        await app.retry_dead_letter(wanted, "retried from the dashboard")
        return f"job {wanted} retried with a fresh attempt budget"
    return await _act(request, "/dead-letters", act)


async def discard_dead_letter(request: Request) -> Response:
    async def act(app: Any, form: Any) -> str:
        wanted = job_id(str(form.get("job_id", "")))
        await app.discard_dead_letter(wanted, "discarded from the dashboard")
        return f"job {wanted} discarded"
    return await _act(request, "/dead-letters", act)


async def retry_all_dead_letters(request: Request) -> Response:
    async def act(app: Any, form: Any) -> str:
        name = _field(form, "name", "the job name whose dead letters to retry")
        retried = await app.retry_all_dead_letters(name, "retried from the dashboard")
        return f"{len(retried)} dead-lettered job(s) of {name} retried"
    return await _act(request, "/dead-letters", act)


async def discard_all_dead_letters(request: Request) -> Response:
    async def act(app: Any, form: Any) -> str:
        name = _field(form, "name", "the job name whose dead letters to discard")
        discarded = await app.discard_all_dead_letters(name, "discarded from the dashboard")
        return f"{len(discarded)} dead-lettered job(s) of {name} discarded"
    return await _act(request, "/dead-letters", act)


async def pause_queue(request: Request) -> Response:
    async def act(app: Any, form: Any) -> str:
        queue = _field(form, "queue", "the queue to pause")
        reason = str(form.get("reason", "")).strip()[:MAX_TEXT] or "paused from the dashboard"
        await app.pause_queue(queue, reason)
        return f"queue {queue} paused: workers claim nothing more from it until it is resumed"
    return await _act(request, "/queues", act)


async def resume_queue(request: Request) -> Response:
    async def act(app: Any, form: Any) -> str:
        queue = _field(form, "queue", "the queue to resume")
        await app.resume_queue(queue, "resumed from the dashboard")
        return f"queue {queue} resumed"
    return await _act(request, "/queues", act)


#: every action's path and handler (POST only); the CSRF middleware checks these paths even when a
#: request carries no cookie, so a route is only ever added here, where it is protected too
ROUTES: tuple[tuple[str, Callable[[Request], Awaitable[Response]]], ...] = (
    ("/actions/dead-letters/retry", retry_dead_letter),
    ("/actions/dead-letters/discard", discard_dead_letter),
    ("/actions/dead-letters/retry-all", retry_all_dead_letters),
    ("/actions/dead-letters/discard-all", discard_all_dead_letters),
    ("/actions/queues/pause", pause_queue),
    ("/actions/queues/resume", resume_queue),
)
PATHS = tuple(path for path, _ in ROUTES)
