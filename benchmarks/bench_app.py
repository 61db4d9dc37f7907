"""The app the benchmarks run: one no-op job. Namespace from EVENTJOBS_NAMESPACE."""

import os
from typing import Any

from eventjobs import App


def build_app(namespace: str, **settings: Any) -> App:
    app = App(namespace, **settings)

    @app.job(queue="default")
    async def noop(args: dict[str, Any]) -> None:
        return None

    return app


app = build_app(os.environ.get("EVENTJOBS_NAMESPACE", "bench"))
