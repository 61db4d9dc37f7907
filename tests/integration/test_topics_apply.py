"""`topics apply` against the real broker: creates, is idempotent, reports drift, never shrinks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aiokafka.admin import NewTopic

from eventjobs.kafka.clients import admin_client
from eventjobs.settings import Settings
from eventjobs.kafka.admin import apply_topics, describe, wait_for_topics
from eventjobs.kafka.topics import PRIORITIES, TopicNames, load_specs

ROOT = Path(__file__).resolve().parents[2]
SINGLES = sum(not spec_file.spec.family for spec_file in load_specs(ROOT / "topics").values())  # topics not per queue


async def test_apply_twice_second_run_changes_nothing(settings: Settings) -> None:
    first = await apply_topics(settings, ["emails", "default"])
    second = await apply_topics(settings, ["emails", "default"])

    expected = SINGLES + 2 * len(PRIORITIES)  # the single topics + ready topics per queue x priority
    assert [r.action for r in first] == ["created"] * expected
    assert [r.action for r in second] == ["unchanged"] * expected
    assert [r.name for r in first] == [r.name for r in second]


async def test_compacted_topics_are_compacted_on_the_broker(settings: Settings) -> None:
    await apply_topics(settings)
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    admin = admin_client(settings)
    await admin.start()
    try:
        live = await describe(admin, [names.job_state, names.timers, names.dead_letters, names.events])
    finally:
        await admin.close()
    assert live[names.job_state].configs["cleanup.policy"] == "compact"
    assert live[names.timers].configs["cleanup.policy"] == "compact"
    assert live[names.dead_letters].configs["cleanup.policy"] == "compact"
    assert live[names.events].configs["cleanup.policy"] == "delete"
    assert live[names.events].configs["retention.ms"] == str(30 * 86_400_000)
    # co-partitioning of the event log and the state changelog is what the processor relies on
    assert live[names.events].partitions == live[names.job_state].partitions == 6


async def test_drift_is_reported_and_nothing_is_shrunk_or_deleted(settings: Settings) -> None:
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    # Given an events topic made by hand with too few partitions and another retention
    admin = admin_client(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(names.events, 2, 1, topic_configs={"retention.ms": "1000"})])
        await wait_for_topics(admin, [names.events])
    finally:
        await admin.close()

    # When topics are applied
    reports = {r.name: r for r in await apply_topics(settings)}

    # Then the drift is reported, and the topic is left as it was
    report = reports[names.events]
    assert report.action == "drift"
    assert any("has 2 partitions, spec wants 6" in note for note in report.notes)
    assert any("retention.ms is '1000' on the broker" in note for note in report.notes)
    admin = admin_client(settings)
    await admin.start()
    try:
        live = await describe(admin, [names.events])
    finally:
        await admin.close()
    assert live[names.events].partitions == 2
    assert live[names.events].configs["retention.ms"] == "1000"


def _wide_env() -> dict[str, str]:
    import os

    return {**os.environ, "COLUMNS": "200"}


def test_cli_apply_reports_nothing_to_change_on_second_run(settings: Settings) -> None:
    command = [sys.executable, "-m", "eventjobs.cli", "topics", "apply",
               "--bootstrap", settings.kafka_bootstrap, "--namespace", settings.namespace]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60, env=_wide_env())
    second = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60, env=_wide_env())
    assert first.returncode == 0, first.stderr
    assert f"{SINGLES + len(PRIORITIES)} created, 0 with drift" in first.stdout
    assert second.returncode == 0, second.stderr
    assert f"nothing to change: all {SINGLES + len(PRIORITIES)} topics match their specs" in second.stdout


def test_cli_apply_with_app_creates_its_namespace_queues_and_capability_routes(settings: Settings) -> None:
    from eventjobs.core.records import capability_route
    from tests.support.cli import run_cli

    # Given an app (namespace from EVENTJOBS_NAMESPACE) with jobs on "default" and a gpu job on "render"
    result = run_cli("topics", "apply", "--app", "tests.support.jobs_app:app", settings=settings)

    assert result.returncode == 0, result.stderr
    routes = ["default", "render", capability_route("render", ["gpu"])]
    expected = SINGLES + len(routes) * len(PRIORITIES)
    assert f"{expected} created, 0 with drift" in result.stdout
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    for route in routes:
        for priority in PRIORITIES:
            assert names.ready(route, priority) in result.stdout
    # an extra --queue is added to the app's queues
    again = run_cli("topics", "apply", "--app", "tests.support.jobs_app:app", "--queue", "extra", settings=settings)
    assert again.returncode == 0, again.stderr
    assert f"{len(PRIORITIES)} created, 0 with drift (reported, not changed), {expected} unchanged" in again.stdout
