"""ClickHouse for the read side: one `Backend` interface, two engines (chdb in-process, a server).

`open_backend(settings)` picks the engine: the server at `EVENTJOBS_CLICKHOUSE_URL` when it is
set; otherwise chdb under `<state_dir>/chdb`, or, when another process owns that directory and
serves the read API, that API with the token from the owner record (so CLI commands keep working
while the projector runs); a command that writes (`writes=True`: replay, `projections apply`)
goes through the owner's private socket instead, since the read API is read-only.
"""

from __future__ import annotations

from pathlib import Path

from eventjobs.clickhouse.backend import Backend, Result, qualified, quote_identifier
from eventjobs.clickhouse.backoff import Backoff
from eventjobs.clickhouse.chdb_backend import ChdbBackend
from eventjobs.clickhouse.errors import (
    ClickHouseError,
    ClickHouseLocked,
    ClickHouseQueryError,
    ClickHouseUnavailable,
    InvalidClickHouseUrl,
)
from eventjobs.clickhouse.ownership import OwnerRecord, live_owner
from eventjobs.clickhouse.server_backend import ServerBackend
from eventjobs.clickhouse.server_url import redact_url
from eventjobs.clickhouse.unix_http import SOCKET_HOST
from eventjobs.settings import Settings

__all__ = [
    "Backend", "Backoff", "ChdbBackend", "ClickHouseError", "ClickHouseLocked", "ClickHouseQueryError",
    "ClickHouseUnavailable", "InvalidClickHouseUrl", "Result", "ServerBackend", "chdb_dir", "open_backend",
    "open_owners_api", "open_owning_backend", "qualified", "quote_identifier", "redact_url",
]


def chdb_dir(settings: Settings) -> Path:
    """Where the embedded engine keeps its tables."""
    return settings.state_dir / "chdb"


def database_for(settings: Settings) -> str:
    """The ClickHouse database of a namespace: the namespace itself (tests get one each)."""
    return settings.namespace


def open_backend(settings: Settings, *, role: str | None = None, writes: bool = False) -> Backend:
    """The read side's engine for a command that may share it: server, the owner's read API (its
    owner socket when the command `writes`), or chdb.

    Raises `ClickHouseLocked` when another process holds the chdb directory without serving the
    read API, `ClickHouseUnavailable` when the configured server does not answer, and
    `InvalidClickHouseUrl` when its URL cannot be used.
    """
    if settings.clickhouse_url is not None:
        return ServerBackend(settings.clickhouse_url.get_secret_value(), database_for(settings))
    data_dir = chdb_dir(settings)
    owner = live_owner(data_dir.resolve())
    if owner is not None and owner.read_api:
        try:
            return open_owners_api(owner, database_for(settings), writes=writes)
        except ClickHouseUnavailable as error:
            raise ClickHouseLocked(
                f"the chdb data directory {data_dir} is held by {owner.describe()}, but its read API does "
                f"not answer ({error}); wait for it, or stop that process"
            ) from None
    return ChdbBackend(data_dir, database_for(settings), role=role)


def open_owners_api(owner: OwnerRecord, database: str, *, writes: bool = False) -> ServerBackend:
    """A backend over the API of the process that owns a chdb directory: its read API with the
    recorded token, or, for `writes`, its owner socket (`ClickHouseLocked` when it has none)."""
    if writes:
        if not owner.owner_socket:
            raise ClickHouseLocked(
                f"the chdb data directory is held by {owner.describe()}, which serves no owner socket for "
                f"writes (its read API is read-only): stop that process, then retry")
        return ServerBackend(f"http://{SOCKET_HOST}", database, unix_socket=owner.owner_socket)
    if not owner.read_api:
        raise ClickHouseLocked(f"the chdb data directory is held by {owner.describe()}: stop it, then retry")
    return ServerBackend(owner.read_api, database, access_token=owner.read_api_token)


def open_owning_backend(settings: Settings, *, role: str) -> Backend:
    """The engine for the process that owns the read side (the projector): never another's read API."""
    if settings.clickhouse_url is not None:
        return ServerBackend(settings.clickhouse_url.get_secret_value(), database_for(settings))
    return ChdbBackend(chdb_dir(settings), database_for(settings), role=role)
