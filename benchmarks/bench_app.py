"""The app the benchmarks run: a no-op job, and one that stamps its start (bench_vs_taskiq).

Namespace from EVENTJOBS_NAMESPACE."""

import os
from typing import Any

from eventjobs import App

from benchmarks.stamps import record


def build_app(namespace: str, **settings: Any) -> App:
    app = App(namespace, **settings)

    @app.job(queue="default")
    async def noop(args: dict[str, Any]) -> None:
        return None

    @app.job(queue="default")
    async def stamp(args: dict[str, Any]) -> None:
        record(args["t"])

    return app


app = build_app(os.environ.get("EVENTJOBS_NAMESPACE", "bench"))
