"""The ClickHouse engine for tests: embedded chdb, or a real server when a URL is configured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class ClickHouseTarget:
    """A real ClickHouse engine and a way to run SQL on it; `kind` is 'chdb' or 'server'."""

    kind: str
    query: Callable[[str], list[tuple[Any, ...]]]
    close: Callable[[], None]
    path: Path | None = None
    url: str | None = None


def chdb_target(path: Path) -> ClickHouseTarget:
    from chdb import session

    sess = session.Session(str(path))

    def query(sql: str) -> list[tuple[Any, ...]]:
        result = sess.query(sql, "JSONCompact")
        data = result.bytes()
        if not data:
            return []
        import orjson

        return [tuple(row) for row in orjson.loads(data)["data"]]

    return ClickHouseTarget(kind="chdb", query=query, close=sess.close, path=path)


def server_target(url: str) -> ClickHouseTarget:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=url)

    def query(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in client.query(sql).result_rows]

    return ClickHouseTarget(kind="server", query=query, close=client.close, url=url)
