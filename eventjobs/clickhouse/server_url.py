"""A ClickHouse server URL (`EVENTJOBS_CLICKHOUSE_URL`): its parts for the client, and its text
for people.

Why this module exists: the URL may carry credentials, as `user:password@` or as `?user=` /
`?password=` (both forms are common in ClickHouse DSNs), and both must reach the client as its
username and password, never as a stray keyword (clickhouse-connect passes a DSN's query on as
keyword arguments, so `?password=` collided with its own password argument). And wherever the
URL is shown, in an error, a log line or `eventjobs config show`, it goes through `redact_url`,
which masks every credential it can carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from eventjobs.clickhouse.errors import InvalidClickHouseUrl

#: Query keys whose values are masked when a URL is shown.
_SECRET_WORDS = ("pass", "token", "secret", "key")
#: Query keys that would name again what the URL's own parts say.
_ADDRESS_KEYS = {
    "host": "the host", "port": "the port", "interface": "the scheme", "secure": "the scheme (https)",
    "dsn": "the URL", "database": "the path (http://host:8123/<database>)",
}
#: Query keys that name the user (clickhouse-connect reads `user` and `user_name` from a DSN).
_USER_KEYS = ("user", "username", "user_name")
_EXAMPLE = "e.g. http://user:password@host:8123/database"


@dataclass(frozen=True)
class ServerAddress:
    """What a server URL says: where, as whom, which database, and further client options."""

    interface: str  # http or https
    host: str
    port: int | None  # None: clickhouse-connect's default for the interface (8123 / 8443)
    username: str | None
    password: str = field(repr=False)
    database: str | None
    options: dict[str, str]  # other query parameters, handed to clickhouse-connect as they are


def redact_url(url: str) -> str:
    """`url` safe to show: a password becomes `***`, and so does the value of every query parameter
    that looks secret (`password`, `token`, ...), and a user name given without any password (it
    may be a token)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    netloc = parts.netloc
    if "@" in netloc:
        address = netloc.rpartition("@")[2]
        if parts.password is not None or any(key == "password" for key, _ in pairs):
            netloc = f"{parts.username}:***@{address}" if parts.password is not None else f"{parts.username}@{address}"
        else:
            netloc = f"***@{address}"
    query = urlencode([(key, "***" if any(word in key.lower() for word in _SECRET_WORDS) else value)
                       for key, value in pairs], safe="*") if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_database(url: str) -> str | None:
    """The database named in the URL path (`http://host:8123/mydb`), if any."""
    path = urlsplit(url).path.strip("/")
    return unquote(path) if path else None


def parse_server_url(url: str) -> ServerAddress:
    """The parts of a server URL; `InvalidClickHouseUrl` (one line, the URL redacted) if it cannot
    be used. Credentials may be given as `user:password@host` or as `?user=...&password=...`
    (percent-encoded either way; `?username=` and `?user_name=` too); given both ways, they must agree."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _refused(url, f"the scheme must be http or https, {_EXAMPLE}")
    if not parts.hostname:
        raise _refused(url, f"it names no host, {_EXAMPLE}")
    try:
        port = parts.port
    except ValueError:
        raise _refused(url, "its port is not a number from 0 to 65535") from None
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in query:
            raise _refused(url, f"?{key}= is given twice; give it once")
        query[key] = value
    for key, where in _ADDRESS_KEYS.items():
        if key in query:
            raise _refused(url, f"?{key}= is not read: the URL says it by {where}")
    username = _given_once(url, "user name", {"before the host": _unquoted(parts.username),
                                              **{f"?{key}=": query.pop(key, None) for key in _USER_KEYS}})
    password = _given_once(url, "password", {"before the host": _unquoted(parts.password),
                                             "?password=": query.pop("password", None)})
    return ServerAddress(parts.scheme, parts.hostname, port, username, password or "", url_database(url), query)


def _refused(url: str, problem: str) -> InvalidClickHouseUrl:
    return InvalidClickHouseUrl(f"ClickHouse URL {redact_url(url)} (EVENTJOBS_CLICKHOUSE_URL): {problem}")


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value is not None else None


def _given_once(url: str, what: str, places: dict[str, str | None]) -> str | None:
    """The value given in one or more places (refused when they differ), or None."""
    given = {place: value for place, value in places.items() if value is not None}
    if len(set(given.values())) > 1:
        raise _refused(url, f"the {what} is given with different values {' and '.join(given)}; give it once")
    return next(iter(given.values()), None)
