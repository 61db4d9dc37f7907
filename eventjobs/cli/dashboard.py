"""`eventjobs dashboard`: the web dashboard over the ClickHouse projections, with operator actions."""

from __future__ import annotations

from typing import Annotated

import typer

from eventjobs.cli.options import NamespaceOption, OptionalAppOption, app_or_namespace
from eventjobs.cli.output import err


def dashboard(
    app: OptionalAppOption = None,
    namespace: NamespaceOption = None,
    host: Annotated[str | None, typer.Option(
        help="Address to bind (default 127.0.0.1; env EVENTJOBS_DASHBOARD_HOST). One beyond loopback exposes the "
             "dashboard and its actions to that network and needs a token.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080; env EVENTJOBS_DASHBOARD_PORT; 0: any free).")]
    = None,
    token: Annotated[str | None, typer.Option(
        help="Require this access token (env EVENTJOBS_DASHBOARD_TOKEN, which keeps it out of the process list); "
             "required when the dashboard binds beyond loopback.")]
    = None,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", metavar="HOST", help="A host name the dashboard answers besides the bound address, localhost, 127.0.0.1 "
                               "and [::1] (repeatable; env EVENTJOBS_DASHBOARD_ALLOWED_HOSTS, comma-separated). "
                               "Add the name people type in the address bar.")] = None,
) -> None:
    """Serve the web dashboard: overview, jobs, job timelines, dead letters, workers, queues (Ctrl-C to stop)."""
    from eventjobs.http_hosts import allowed_hosts, is_loopback
    from eventjobs.web.app import create_app
    from eventjobs.web.server import DashboardError, bind, serve, url_of

    target = app_or_namespace(app, namespace)
    settings = target.settings
    secret = token if token is not None else (
        settings.dashboard_token.get_secret_value() if settings.dashboard_token else None)
    if secret is not None and not secret.strip():
        raise typer.BadParameter("must not be empty", param_hint="--token")
    bound_host = host or settings.dashboard_host
    try:
        sock = bind(bound_host, settings.dashboard_port if port is None else port)
    except DashboardError as error:
        err.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    address = sock.getsockname()[0]
    if secret is None and not is_loopback(address):
        sock.close()
        err.print(f"[red]error:[/] the dashboard would listen on {address}, reachable from other machines, without an "
                  f"access token: set EVENTJOBS_DASHBOARD_TOKEN (or --token), or bind to 127.0.0.1",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    hosts = allowed_hosts(bound_host, [*settings.dashboard_allowed_hosts, *(allowed_host or [])])
    where = url_of(sock)
    access = " (access token required: open /login, or add ?token=... once)" if secret else ""
    err.print(f"dashboard of namespace {settings.namespace} at [bold]{where}[/]{access}; answers to "
              f"{', '.join(hosts)}; Ctrl-C to stop", highlight=False, soft_wrap=True)
    serve(create_app(settings, target, token=secret, hosts=hosts), sock)
