"""HTTP over a Unix socket for clickhouse-connect: how local eventjobs commands reach the owner socket.

The projector's owner socket (`eventjobs.clickhouse.http_api.OwnerApi`) is a Unix socket in a
directory only its user can enter, so no browser page and no other user can reach it.
clickhouse-connect speaks HTTP through a urllib3 `PoolManager` it accepts as `pool_mgr`; this one
connects every pool to the socket instead of a TCP address (urllib3 documents `_new_pool` as the
place for that), so the same client code talks to it as to a ClickHouse server.
"""

from __future__ import annotations

import socket
from typing import Any

from urllib3 import HTTPConnectionPool, PoolManager
from urllib3.connection import HTTPConnection
from urllib3.exceptions import NewConnectionError

#: the host name requests to the owner socket carry (the socket decides where they go)
SOCKET_HOST = "localhost"


class _UnixSocketConnection(HTTPConnection):
    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.timeout, (int, float)):
            sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError as error:
            sock.close()
            raise NewConnectionError(self, f"cannot connect to the socket {self._socket_path}: {error}") from error
        return sock


class _UnixSocketPool(HTTPConnectionPool):
    ConnectionCls = _UnixSocketConnection


class UnixSocketPoolManager(PoolManager):
    """A urllib3 pool manager whose every connection goes to the Unix socket `socket_path`."""

    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.socket_path = socket_path

    def _new_pool(self, scheme: str, host: str, port: int,
                  request_context: dict[str, Any] | None = None) -> HTTPConnectionPool:
        context = dict(request_context if request_context is not None else self.connection_pool_kw)
        for key in ("scheme", "host", "port", "blocksize"):
            context.pop(key, None)
        return _UnixSocketPool(host, port, socket_path=self.socket_path, **context)
