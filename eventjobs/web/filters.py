"""What a page's query string may say, checked before anything is asked: a bad value is a 400
naming the parameter, what it got and what is allowed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit

from eventjobs.core.durations import parse_duration
from eventjobs.readside.as_of import AsOf, AsOfError, parse_as_of
from eventjobs.readside.queries import STATUSES, utc

PAGE_SIZE = 50
MAX_TEXT = 200  # longest name, queue or args text a filter accepts
#: the overview's time windows
WINDOWS: dict[str, timedelta] = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "6h": timedelta(hours=6),
                                 "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "1h"


class BadFilter(ValueError):
    """A query parameter the page cannot use; the message says which, and what is allowed."""


@dataclass(frozen=True)
class JobFilter:
    """The jobs page's filters: state, name, queue, enqueue time range, args text, page number,
    and the moment the jobs are shown as of (None: now)."""

    status: str | None = None
    name: str | None = None
    queue: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    args: str | None = None
    page: int = 1
    as_of: AsOf | None = None
    raw: tuple[tuple[str, str], ...] = ()

    @property
    def offset(self) -> int:
        return (self.page - 1) * PAGE_SIZE

    def query_for_page(self, page: int) -> str:
        """This filter's query string with another page number (for the pager links)."""
        return urlencode([(k, v) for k, v in self.raw if k != "page"] + [("page", str(page))])


def _text(params: Mapping[str, str], key: str) -> str | None:
    value = params.get(key, "").strip()
    if not value:
        return None
    if len(value) > MAX_TEXT:
        raise BadFilter(f"{key}: at most {MAX_TEXT} characters, got {len(value)}")
    return value


def parse_time(value: str, key: str, now: datetime) -> datetime:
    """An ISO-8601 time (UTC when it has no zone) or an age before `now` (15m, 2h, 1d)."""
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        return utc(datetime.fromisoformat(value))
    except ValueError:
        raise BadFilter(f"{key}: {value!r} is neither a time (2024-05-17T12:00, UTC unless it names a zone) "
                        f"nor an age (15m, 2h, 1d)") from None


def queue_name(params: Mapping[str, str]) -> str | None:
    """`?queue=`: one queue's name (None when absent)."""
    return _text(params, "queue")


def moment(params: Mapping[str, str], now: datetime) -> AsOf | None:
    """`?as_of=`: a past time, an age or a log position, as `--as-of` takes it (None when absent)."""
    text = _text(params, "as_of")
    if text is None:
        return None
    try:
        return parse_as_of(text, now)
    except AsOfError as error:
        raise BadFilter(f"as_of: {error}") from None


def job_filter(params: Mapping[str, str], now: datetime) -> JobFilter:
    """The jobs page's filters from its query string (ages count back from `now`); `BadFilter`
    for a value it cannot use."""
    status = _text(params, "status")
    if status is not None and status not in STATUSES:
        raise BadFilter(f"status: unknown state {status!r} (allowed: {', '.join(STATUSES)})")
    since = _text(params, "since")
    until = _text(params, "until")
    since_at = parse_time(since, "since", now) if since else None
    until_at = parse_time(until, "until", now) if until else None
    if since_at and until_at and since_at >= until_at:
        raise BadFilter(f"since ({since}) must be before until ({until})")
    page_text = params.get("page", "1").strip() or "1"
    if not page_text.isdigit() or int(page_text) < 1 or int(page_text) > 100_000:
        raise BadFilter(f"page: a whole number from 1 to 100000, got {page_text!r}")
    as_of = moment(params, now)
    args = _text(params, "args")
    if as_of is not None and args is not None:
        raise BadFilter("args: cannot be combined with as_of (the jobs as of a moment are filtered by state, name, "
                        "queue and enqueue time)")
    raw = tuple((k, v) for k, v in params.items()
                if k in ("status", "name", "queue", "since", "until", "args", "as_of") and v)
    return JobFilter(status=status, name=_text(params, "name"), queue=_text(params, "queue"), since=since_at,
                     until=until_at, args=args, page=int(page_text), as_of=as_of, raw=raw)


def window(params: Mapping[str, str]) -> tuple[str, timedelta]:
    """The overview's time window (`?window=1h`)."""
    key = params.get("window", DEFAULT_WINDOW).strip() or DEFAULT_WINDOW
    if key not in WINDOWS:
        raise BadFilter(f"window: {key!r} is not one of {', '.join(WINDOWS)}")
    return key, WINDOWS[key]


def job_id(value: str) -> str:
    """A job id from a path or form: printable, no spaces, at most 200 characters."""
    value = value.strip()
    if not value or len(value) > MAX_TEXT or not value.isprintable() or " " in value:
        raise BadFilter(f"job id: expected a job id such as 0190a7c2-5b1e-7cc0-8a9e-3f1d2b4c5d6e, got {value[:60]!r}")
    return value


def local_path(value: str, default: str) -> str:
    """`value` if it is a path on this dashboard (for redirects after a form), else `default`:
    never another site (`//host`, `/\\host` and absolute URLs are refused)."""
    if not value.startswith("/") or value.startswith(("//", "/\\")) or urlsplit(value).netloc:
        return default
    return value
