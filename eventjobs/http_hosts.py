"""Which `Host` headers a server of eventjobs answers, and whether an address stays on this machine.

The dashboard and the projector's read API check the `Host` of every request against an
allow-list (Starlette's `TrustedHostMiddleware`): a page that rebinds its own DNS name to
127.0.0.1 reaches the port, but its requests still carry its own name and are refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

#: the names of this machine's loopback interface a browser may use
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def host_pattern(host: str) -> str:
    """`host` as it appears in a `Host` header: IPv6 addresses in brackets, lower case."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def allowed_hosts(bound_host: str, extra: Iterable[str] = ()) -> list[str]:
    """The host patterns a server bound to `bound_host` answers: that host (unless it is the
    wildcard address, which no one types), the loopback names, and `extra` (names or addresses,
    `*.example.com` for subdomains, `*` for any), without repeats."""
    patterns: list[str] = []
    bound = [] if _unspecified(bound_host) else [bound_host]
    for host in (*bound, *LOOPBACK_HOSTS, *extra):
        pattern = host_pattern(host)
        if pattern and pattern not in patterns:
            patterns.append(pattern)
    return patterns


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_unspecified
    except ValueError:
        return False


def is_loopback(address: str) -> bool:
    """Whether the bound address `address` (an IP, as `socket.getsockname()` gives it) is reachable
    from this machine only."""
    try:
        return ipaddress.ip_address(address.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return address.lower() == "localhost"
