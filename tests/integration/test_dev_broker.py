"""`eventjobs dev up | down | status | logs` against a real broker of its own (not the session one)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventjobs.dev.broker import DevStackError, LocalKafka, free_port
from eventjobs.kafka.clients import consumer, producer
from eventjobs.settings import Settings
from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.topics import TopicNames, load_specs
from tests.support.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    broker = LocalKafka(home=tmp_path / "kafka", port=free_port(), controller_port=free_port())
    try:
        yield broker
    finally:
        broker.down(timeout_s=10)


def test_events_survive_down_and_up(own_broker: LocalKafka) -> None:
    # Given a running broker (started through the CLI, as a user would) with an event in it
    home, port = str(own_broker.home), str(own_broker.port)
    up = run_cli("dev", "up", "--home", home, "--port", port, "--controller-port", str(own_broker.controller_port))
    assert up.returncode == 0, up.stderr
    assert f"bootstrap: {own_broker.bootstrap}" in up.stdout
    settings = Settings(kafka_bootstrap=own_broker.bootstrap, namespace="durable", topics_dir=ROOT / "topics")
    topic = TopicNames("durable", load_specs(settings.topics_dir)).events
    payload = os.urandom(256)
    asyncio.run(_produce(settings, topic, payload))
    status = run_cli("dev", "status", "--home", home)
    assert status.returncode == 0 and f"running (pid {own_broker.status().pid}) at {own_broker.bootstrap}" in status.stdout

    # When it is stopped and started again
    down = run_cli("dev", "down", "--home", home)
    assert down.returncode == 0 and "Kafka stopped; data kept" in down.stdout
    stopped = run_cli("dev", "status", "--home", home)
    assert stopped.returncode == 3 and "not running" in stopped.stdout
    again = run_cli("dev", "up", "--home", home, "--port", port, "--controller-port", str(own_broker.controller_port))
    assert again.returncode == 0, again.stderr

    # Then the event is still there, byte for byte, and the log is readable
    assert asyncio.run(_consume_one(settings, topic)) == payload
    logs = run_cli("dev", "logs", "--home", home, "-n", "200")
    assert "Kafka Server started" in logs.stdout


async def _produce(settings: Settings, topic: str, payload: bytes) -> None:
    await apply_topics(settings)
    prod = producer(settings)
    await prod.start()
    try:
        await prod.send_and_wait(topic, payload, key=b"job-1")
    finally:
        await prod.stop()


async def _consume_one(settings: Settings, topic: str) -> bytes:
    cons = consumer(settings, topic)
    await cons.start()
    try:
        batch = await cons.getmany(timeout_ms=10_000)
        values = [m.value for messages in batch.values() for m in messages]
        assert len(values) == 1, values
        return values[0]
    finally:
        await cons.stop()


def test_up_is_idempotent_and_down_stops_only_its_own_process(own_broker: LocalKafka) -> None:
    first = own_broker.up()
    second = own_broker.up()
    assert first.pid == second.pid and first.running
    assert own_broker.down() is True
    assert own_broker.status().running is False
    assert own_broker.down() is False  # nothing of ours left to stop


def test_port_already_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_cli("dev", "up", "--home", str(tmp_path / "k"), "--port", str(port))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 (the broker port) is already in use" in result.stderr


def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    # PATH without java (the jar classpath is cached already, so only java is looked up)
    LocalKafka().classpath()
    result = run_cli("dev", "up", "--home", str(tmp_path / "k"), "--port", str(free_port()),
                     env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "'java' was not found on PATH" in result.stderr
    assert "apt-get install openjdk-17-jre-headless maven" in result.stderr


def test_missing_maven_is_a_clear_error(tmp_path: Path) -> None:
    # A fresh HOME has no cached classpath, so the jars would need Maven, which is not on PATH
    result = run_cli("dev", "up", "--home", str(tmp_path / "k"), "--port", str(free_port()),
                     env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "'mvn' was not found on PATH" in result.stderr


def test_broker_that_does_not_come_up_shows_its_log(tmp_path: Path) -> None:
    broker = LocalKafka(home=tmp_path / "k", port=free_port(), controller_port=free_port(), heap="64k")
    with pytest.raises(DevStackError) as error:
        broker.up(timeout_s=30)
    message = str(error.value)
    assert "the Kafka broker exited with code 1 while starting" in message
    assert "Too small" in message or "heap" in message.lower()
    assert broker.status().running is False


def test_a_new_cluster_id_never_starts_with_a_dash() -> None:
    # `kafka-storage format -t <id>` reads an id starting with '-' as an option (1 new id in 64)
    from eventjobs.dev.broker import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]
    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert all(len(cluster_id) == 22 for cluster_id in ids)
