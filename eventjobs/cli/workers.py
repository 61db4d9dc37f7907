"""`eventjobs workers`: the worker registry (`<ns>.workers`), each worker with its presence."""

from __future__ import annotations

import json
from datetime import datetime

from rich.table import Table

from eventjobs.cli.options import JsonOption, NamespaceOption, OptionalAppOption, app_or_namespace, run_with_app
from eventjobs.cli.output import out
from eventjobs.core.clock import SystemClock

_PRESENCE_STYLE = {"alive": "green", "stopped": "dim", "gone": "red"}


def _ago(then: datetime, now: datetime) -> str:
    seconds = max(0.0, (now - then).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def workers(app: OptionalAppOption = None, namespace: NamespaceOption = None, as_json: JsonOption = False) -> None:
    """Workers that announced themselves: alive, stopped (said goodbye) or gone (silent for 3 heartbeats)."""
    target = app_or_namespace(app, namespace)
    found = run_with_app(lambda a: a.workers(), target)
    if as_json:
        out.print_json(json.dumps([w.model_dump(mode="json") for w in found]))
        return
    now = SystemClock().now()
    table = Table("worker", "presence", "host", "pid", "queues", "capabilities", "busy", "version", "started (UTC)",
                  "last seen")
    for w in found:
        table.add_row(w.worker_id, f"[{_PRESENCE_STYLE[w.presence]}]{w.presence}[/]", w.host, str(w.pid),
                      ", ".join(w.queues), ", ".join(w.capabilities), f"{w.busy}/{w.concurrency}", w.version,
                      w.started_at.strftime("%Y-%m-%d %H:%M:%S"), _ago(w.last_seen, now))
    out.print(table)
    alive = sum(w.presence == "alive" for w in found)
    out.print(f"{len(found)} worker(s), {alive} alive")
