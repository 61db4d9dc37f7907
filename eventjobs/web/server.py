"""Serving the dashboard with uvicorn on a socket bound here, so a taken port is one clear error."""

from __future__ import annotations

import errno
import socket

import uvicorn
from starlette.types import ASGIApp


class DashboardError(RuntimeError):
    """The dashboard cannot start (its address is taken or cannot be bound)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; `DashboardError` naming the address when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise DashboardError(f"port {port} on {host} is already in use by another process; choose another "
                                 f"with --port (or EVENTJOBS_DASHBOARD_PORT)") from None
        raise DashboardError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"


def serve(asgi: ASGIApp, sock: socket.socket) -> None:
    """Serve until SIGINT or SIGTERM. The access log is off: it would print `?token=` query strings."""
    config = uvicorn.Config(asgi, access_log=False, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
