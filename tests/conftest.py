"""Session fixtures: one real Kafka broker and one real ClickHouse engine for the whole run.

Kafka, in order of preference: `KAFKA_BOOTSTRAP_SERVERS` when set; Docker Compose through
pytest-docker when a Docker engine answers; otherwise the project's own local broker
(`eventjobs.dev.broker.LocalKafka`, the code behind `eventjobs dev up`) on a free port with its
data in a temporary directory. Tests isolate themselves by a unique namespace (topic prefix).

The suite runs in two processes (pytest-xdist, `-n 2 --dist loadfile` in pyproject.toml: most
tests wait on a broker or a service process, so two at once nearly halve the run). They share the
one broker: the first worker that needs it starts it under a file lock in a directory the
controller hands to every worker, the others read its address there, and the controller stops it
when the run ends. Each worker has its own chdb (it lives in the process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

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
    shared = getattr(request.config, "workerinput", {}).get(SHARED_DIR)
    if shared:
        yield _shared_broker(Path(shared))
        return
    broker = _new_broker(tmp_path_factory.mktemp("kafka"))
    broker.up()
    try:
        yield broker.bootstrap
    finally:
        broker.down()


SHARED_DIR = "eventjobs_shared_dir"  # the key of the directory the controller hands to its workers


def _new_broker(home: Path) -> LocalKafka:
    # 1 GiB of heap: the whole suite creates a few thousand partitions (one namespace per test) on
    # this one broker, and 512 MiB was seen running out under a long run of many namespaces
    return LocalKafka(home=home, port=free_port(), controller_port=free_port(), heap="1g")


def _recorded_broker(shared: Path) -> LocalKafka | None:
    """The broker a worker started in `shared` (None: none yet), as its record names it."""
    record = shared / "kafka.json"
    if not record.exists():
        return None
    ports = json.loads(record.read_text())
    return LocalKafka(home=shared / "kafka", port=ports["port"], controller_port=ports["controller_port"])


def _shared_broker(shared: Path) -> str:
    """The run's one broker, started by the first worker that asks (the others wait on the lock)."""
    with FileLock(shared / "kafka.lock"):
        broker = _recorded_broker(shared)
        if broker is None:
            broker = _new_broker(shared / "kafka")
            broker.up()
            (shared / "kafka.json").write_text(json.dumps({"port": broker.port, "controller_port": broker.controller_port}))
    return broker.bootstrap


class SharedBroker:
    """The controller's side under pytest-xdist: a directory for the workers, the broker stopped at the end."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="eventjobs-tests-"))

    def pytest_configure_node(self, node: object) -> None:
        node.workerinput[SHARED_DIR] = str(self.directory)  # type: ignore[attr-defined]

    def stop(self) -> None:
        broker = _recorded_broker(self.directory)
        if broker is not None:
            broker.down()
        shutil.rmtree(self.directory, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput") and config.getoption("numprocesses"):
        config.pluginmanager.register(SharedBroker(), "eventjobs-shared-broker")


#: The test directories from the longest files to the shortest: the two processes take whole files
#: in this order (`--no-loadscope-reorder`), so the last files handed out are short and both end
#: close together rather than one running a fault test alone at the end.
LONGEST_FIRST = ("faults", "e2e", "readside", "web", "contract", "integration", "testing", "core", "unit")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        parts = item.path.relative_to(ROOT).parts
        folder = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
        return LONGEST_FIRST.index(folder) if folder in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a directory stays


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = config.pluginmanager.get_plugin("eventjobs-shared-broker")
    if shared is not None:
        shared.stop()


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
