"""Session fixtures: one real Kafka broker and one real ClickHouse engine for the whole run.

Kafka, in order of preference: `KAFKA_BOOTSTRAP_SERVERS` when set; Docker Compose through
pytest-docker when a Docker engine answers; otherwise the project's own local broker
(`eventjobs.dev.broker.LocalKafka`, the code behind `eventjobs dev up`) on a free port with its
data in a temporary directory. Tests isolate themselves by a unique namespace (topic prefix).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventjobs.dev.broker import LocalKafka, free_port
from eventjobs.dev.probe import broker_answers
from eventjobs.settings import Settings
from tests.support.clickhouse import ClickHouseTarget, chdb_target, server_target

ROOT = Path(__file__).resolve().parent.parent


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(ROOT / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up --build -d kafka clickhouse"]


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_engine_answers():
        services = request.getfixturevalue("docker_services")
        bootstrap = "127.0.0.1:9092"
        services.wait_until_responsive(timeout=120.0, pause=1.0, check=lambda: broker_answers(bootstrap))
        yield bootstrap
        return
    # 1 GiB of heap: the whole suite creates a few thousand partitions (one namespace per test) on
    # this one broker, and 512 MiB was seen running out under a long run of many namespaces
    broker = LocalKafka(home=tmp_path_factory.mktemp("kafka"), port=free_port(), controller_port=free_port(),
                        heap="1g")
    broker.up()
    try:
        yield broker.bootstrap
    finally:
        broker.down()


@pytest.fixture
def namespace() -> str:
    """A namespace (topic prefix) no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(kafka_bootstrap: str, namespace: str) -> Settings:
    return Settings(kafka_bootstrap=kafka_bootstrap, namespace=namespace, topics_dir=ROOT / "topics")


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseTarget]:
    """chdb in a temporary directory, or the server at CLICKHOUSE_URL / EVENTJOBS_CLICKHOUSE_URL."""
    url = os.environ.get("EVENTJOBS_CLICKHOUSE_URL") or os.environ.get("CLICKHOUSE_URL")
    if url:
        yield server_target(url)
    else:
        target = chdb_target(tmp_path_factory.mktemp("chdb"))
        try:
            yield target
        finally:
            target.close()
