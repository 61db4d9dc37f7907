"""`App.wait` against the real broker, processor and worker: many concurrent first waits, jobs
whose state left the watcher's cache long ago, unknown jobs; and the app's producers per loop."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from eventjobs import App
from eventjobs.core.ids import job_id_for_key, new_job_id
from eventjobs.core.state import JobStatus
from eventjobs.kafka.admin import apply_topics
from eventjobs.settings import Settings
from tests.e2e.conftest import QUEUES, Runtime
from tests.support.jobs_app import build_app

CONCURRENT_WAITS = 2_000
TINY_CACHE_JOBS = 3


async def test_many_concurrent_first_waits_all_return(runtime: Runtime) -> None:
    app = runtime.app
    await runtime.start_worker(concurrency=50)
    events = [app._build_enqueue("add", {"a": n, "b": 1}) for n in range(CONCURRENT_WAITS)]
    await app.writer.append(events)
    assert app._watcher is None  # the gather below is the first use of App.wait

    states = await asyncio.wait_for(asyncio.gather(*[app.wait(e.job_id, timeout=45) for e in events]), 50)

    assert [s.job_id for s in states] == [e.job_id for e in events]
    assert all(s.status is JobStatus.COMPLETED for s in states)
    assert [s.result for s in states] == [{"sum": n + 1} for n in range(CONCURRENT_WAITS)]
    assert not app._watcher._waiting  # type: ignore[union-attr]  # every waiter was removed


async def test_wait_answers_a_job_whose_state_left_the_cache(settings: Settings) -> None:
    await apply_topics(settings, QUEUES)
    app = build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap, wait_cache_jobs=TINY_CACHE_JOBS)
    runtime = Runtime(app)
    runtime.start_processor()
    await runtime.start_worker()
    late = App(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap, wait_cache_jobs=TINY_CACHE_JOBS)
    try:
        first = await app.enqueue("add", {"a": 1, "b": 2})
        assert (await app.wait(first, timeout=30)).result == {"sum": 3}
        later = [app._build_enqueue("add", {"a": n, "b": 0}) for n in range(30)]
        await app.writer.append(later)
        await asyncio.gather(*[app.wait(e.job_id, timeout=30) for e in later])
        assert first not in app._watcher.raw and len(app._watcher.raw) <= TINY_CACHE_JOBS  # type: ignore[union-attr]

        again = await app.wait(first, timeout=10)  # evicted: answered from its changelog partition
        assert again.status is JobStatus.COMPLETED and again.result == {"sum": 3}
        assert (await app.state(first)) == again

        from_scratch = await late.wait(first, timeout=10)  # a new watcher that never waited for it
        assert from_scratch == again

        never_enqueued = job_id_for_key("add", "never enqueued")  # a name-based id: always looked up
        with pytest.raises(TimeoutError, match=r"has no state for it \(its changelog partition \d+\)"):
            await app.wait(never_enqueued, timeout=3)
    finally:
        await late.close()
        await runtime.close()


async def test_wait_for_an_unknown_job_times_out_saying_so(app: App) -> None:
    job_id = new_job_id()
    with pytest.raises(TimeoutError) as raised:
        await app.wait(job_id, timeout=2)
    message = str(raised.value)
    assert f"job {job_id} did not finish within 2 s" in message
    assert f"{app.names.job_state} has no state for it" in message
    assert "never enqueued" in message and "is a processor running?" in message and "retention" in message
    assert not app._watcher._waiting  # type: ignore[union-attr]


async def test_producers_are_stopped_with_their_event_loop(app: App) -> None:
    def enqueue_on_a_loop_of_its_own() -> AIOKafkaProducer:
        async def enqueue() -> AIOKafkaProducer:
            await app.enqueue("add", {"a": 1, "b": 1})
            return app.writer._producers[asyncio.get_running_loop()].started.result()

        return asyncio.run(enqueue())

    senders = [await asyncio.to_thread(enqueue_on_a_loop_of_its_own) for _ in range(3)]
    assert all(sender._closed for sender in senders)  # asyncio.run's shutdown stopped each
    assert not app.writer._producers

    await asyncio.gather(*[app.enqueue("add", {"a": n, "b": 1}) for n in range(50)])  # concurrent first sends
    app._run_sync(app.enqueue("add", {"a": 2, "b": 2}))
    assert len(app.writer._producers) == 2  # this loop's and the private loop's of _run_sync
    live = [held.started.result() for held in app.writer._producers.values()]

    await app.close()
    assert all(sender._closed for sender in live) and not app.writer._producers
