"""Bad input at `enqueue` and on the CLI: a clear error, and nothing reaches the event log."""

from __future__ import annotations

from datetime import datetime

import pytest

from eventjobs import App, InvalidJobArguments, InvalidJobOptions, PayloadTooLarge, UnknownJob
from eventjobs.core.codec import encode
from eventjobs.kafka.clients import consumer, partitions_of, producer
from eventjobs.settings import Settings
from eventjobs.kafka.admin import KafkaUnavailable
from tests.e2e.conftest import Runtime, job_events
from tests.support.cli import run_cli
from tests.support.jobs_app import build_app



async def _log_size(settings: Settings) -> int:
    parts = await partitions_of(settings, f"{settings.namespace}.events")
    reader = consumer(settings, group_id=None)
    await reader.start()
    try:
        return sum((await reader.end_offsets(parts)).values())
    finally:
        await reader.stop()


@pytest.mark.parametrize(
    ("name", "args", "options", "error", "message"),
    [
        ("nope", {}, {}, UnknownJob, "unknown job 'nope'; registered jobs: add,"),
        ("add", ["not", "a", "dict"], {}, InvalidJobArguments, "args of job 'add' must be a dict (JSON object), got list"),
        ("add", {"when": datetime(2024, 1, 1)}, {}, InvalidJobArguments, "args: when: datetime is not a JSON value"),
        ("add", {"x": float("nan")}, {}, InvalidJobArguments, "nan is not a finite number"),
        ("add", {"blob": "x" * 2_000_000}, {}, PayloadTooLarge, "over the limit of 344,064 for args"),
        ("add", {"blob": "x" * 400_000}, {}, PayloadTooLarge, "over the limit of 344,064 for args"),
        ("add", {}, {"delay": -5}, InvalidJobOptions, "delay must be >= 0 seconds, got -5"),
        ("add", {}, {"priority": "urgent"}, InvalidJobOptions, "unknown priority 'urgent'"),
        ("add", {}, {"max_attempts": 0}, InvalidJobOptions, "max_attempts must be >= 1, got 0"),
        ("add", {}, {"colour": "red"}, InvalidJobOptions, "unknown job option 'colour'"),
        ("add", {}, {"unique_for": 0, "idempotency_key": "k"}, InvalidJobOptions, "unique_for must be > 0 seconds, got 0"),
        ("add", {}, {"unique_for": "-10m", "idempotency_key": "k"}, InvalidJobOptions, "'-10m' is not a duration"),
        ("add", {}, {"debounce": "30s"}, InvalidJobOptions,
         "debounce needs an idempotency_key (a value, or a function of the args): the window is kept per key; job 'add' has none"),
        ("add", {}, {"unique_for": "1m", "debounce": "1m", "idempotency_key": "k"}, InvalidJobOptions,
         "give unique_for or debounce, not both"),
        ("add", {}, {"unique_states": ["pending"], "unique_for": "1m", "idempotency_key": "k"}, InvalidJobOptions,
         "unique_states must include every status of a job not ended yet"),
    ],
)
async def test_enqueue_rejects_bad_input_and_sends_nothing(
    app: App, name: str, args: object, options: dict[str, object], error: type[Exception], message: str
) -> None:
    before = await _log_size(app.settings)
    with pytest.raises(error) as raised:
        await app.enqueue(name, args, **options)  # type: ignore[arg-type]
    assert message in str(raised.value)
    assert await _log_size(app.settings) == before


async def test_enqueue_with_the_broker_down_says_so(settings: Settings) -> None:
    offline = build_app(settings.namespace, kafka_bootstrap="127.0.0.1:1", kafka_request_timeout_s=2)
    with pytest.raises(KafkaUnavailable, match="cannot reach Kafka at 127.0.0.1:1 .*nothing was sent"):
        await offline.enqueue("add", {"a": 1, "b": 2})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "add", "--app", "tests.support.jobs_app:app", "--args", "{bad json"], "not valid JSON"),
        (["enqueue", "add", "--app", "tests.support.jobs_app:app", "--args", "[1, 2]"], "must be a JSON object"),
        (["enqueue", "nope", "--app", "tests.support.jobs_app:app"], "unknown job 'nope'"),
        (["enqueue", "add", "--app", "tests.support.jobs_app:app", "--delay", "soon"], "'soon' is not a duration"),
        (["enqueue", "add", "--app", "tests.support.jobs_app:app", "--priority", "urgent"], "unknown priority 'urgent'"),
        (["enqueue", "add", "--app", "no.such.module:app"], "cannot import module 'no.such.module'"),
        (["enqueue", "add", "--app", "tests.support.jobs_app:build_app"], "is function, not an eventjobs.App"),
        (["enqueue", "add", "--app", "jobs_app"], "must look like module:attribute"),
        (["enqueue", "add", "--app", "tests.support.jobs_app:app", "--unique-for", "0s", "--idempotency-key", "k"],
         "unique_for must be > 0 seconds"),
        (["enqueue", "add", "--app", "tests.support.jobs_app:app", "--debounce", "5s"], "debounce needs an idempotency_key"),
        (["enqueue", "add", "--app", "tests.support.jobs_app:app", "--idempotency-key", "k", "--unique-for", "1h",
          "--unique-states", "pending,running"], "unique_states must include every status of a job not ended yet"),
        (["limits", "set", "add", "--namespace", "x", "--rate", "fast"], "rate must be a count per second, minute or hour"),
        (["limits", "set", "add", "--namespace", "x"], "give max (jobs of a key at once), rate"),
        (["processor", "--app", "tests.support.jobs_app:app", "--commit-interval", "-5s"], "'-5s' is not a duration"),
    ],
)
async def test_cli_rejects_bad_input_and_sends_nothing(app: App, args: list[str], message: str) -> None:
    before = await _log_size(app.settings)
    result = run_cli(*args, settings=app.settings)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert await _log_size(app.settings) == before


async def test_cli_enqueue_prints_the_job_id(app: App) -> None:
    result = run_cli("enqueue", "add", "--app", "tests.support.jobs_app:app", "--args", '{"a": 1, "b": 2}',
                     "--idempotency-key", "k1", "--priority", "high", "--delay", "250ms", settings=app.settings)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    events = await job_events(app.settings, job_id)
    assert len(events) == 1 and events[0].type == "enqueued"
    assert events[0].priority.value == "high" and events[0].idempotency_key == "k1" and events[0].run_at is not None


async def test_cli_enqueue_with_a_window_names_the_windows_job(app: App) -> None:
    args = ("enqueue", "add", "--app", "tests.support.jobs_app:app", "--args", '{"a": 1, "b": 2}', "--idempotency-key", "k2")
    first = run_cli(*args, "--unique-for", "1h", settings=app.settings)
    second = run_cli(*args, "--unique-for", "1h", settings=app.settings)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout  # the window's job: the same id, from the key and the hour
    [event, _] = await job_events(app.settings, first.stdout.strip())
    assert event.options.unique_for_s == 3600
    states = "waiting,pending,scheduled,claimed,running,retrying,dead_lettered"
    limited = run_cli(*args[:-1], "k3", "--unique-for", "1h", "--unique-states", states, settings=app.settings)
    assert limited.returncode == 0, limited.stderr
    [event] = await job_events(app.settings, limited.stdout.strip())
    assert event.options.unique_states == tuple(states.split(","))
    debounced = run_cli(*args, "--debounce", "250ms", settings=app.settings)
    [event] = await job_events(app.settings, debounced.stdout.strip())
    assert event.options.debounce_s == 0.25 and event.run_at is not None


async def test_malformed_event_on_the_log_is_quarantined_and_the_rest_goes_on(runtime: Runtime) -> None:
    await runtime.start_worker()
    settings = runtime.app.settings
    sender = producer(settings)
    await sender.start()
    try:
        await sender.send_and_wait(f"{settings.namespace}.events", b'{"type": "enqueued", "job_id": 42', key=b"junk")
        good = runtime.app._build_enqueue("add", {"a": 20, "b": 22})
        await sender.send_and_wait(f"{settings.namespace}.events", encode(good), key=good.job_id.encode())
    finally:
        await sender.stop()
    assert (await runtime.app.wait(good.job_id, timeout=30)).result == {"sum": 42}
    quarantine = consumer(settings, f"{settings.namespace}.quarantine")
    await quarantine.start()
    try:
        batch = await quarantine.getmany(timeout_ms=10_000)
    finally:
        await quarantine.stop()
    records = [r for rs in batch.values() for r in rs]
    assert len(records) == 1 and records[0].value == b'{"type": "enqueued", "job_id": 42'
    headers = dict(records[0].headers)
    assert b"not valid JSON" in headers["eventjobs.reason"] or b"JSON" in headers["eventjobs.reason"]
    assert headers["eventjobs.source"].startswith(f"{settings.namespace}.events/".encode())
