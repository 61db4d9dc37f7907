"""The worker's default concurrency per handler kind, and `concurrency` overriding it."""

from __future__ import annotations

import os
from typing import Any

from eventjobs import App
from eventjobs.runtime.worker import DEFAULT_ASYNC_CONCURRENCY, Worker, default_threads


def _app(*, sync: bool, async_: bool) -> App:
    app = App("defaults")
    if sync:
        @app.job()
        def render(args: dict[str, Any]) -> None: ...
    if async_:
        @app.job()
        async def send(args: dict[str, Any]) -> None: ...
    return app


def test_thread_default_is_concurrent_futures_default() -> None:
    assert default_threads() == min(32, (os.cpu_count() or 1) + 4)


def test_async_handlers_run_100_at_once_sync_ones_in_a_default_thread_pool() -> None:
    worker = Worker(_app(sync=True, async_=True))
    assert worker.concurrency == DEFAULT_ASYNC_CONCURRENCY == 100
    assert worker.threads == default_threads()
    assert worker._executor._max_workers == default_threads()


def test_only_sync_handlers_run_as_many_at_once_as_there_are_threads() -> None:
    worker = Worker(_app(sync=True, async_=False))
    assert worker.concurrency == worker.threads == default_threads()


def test_concurrency_overrides_both() -> None:
    worker = Worker(_app(sync=True, async_=True), concurrency=7)
    assert worker.concurrency == worker.threads == worker._executor._max_workers == 7
