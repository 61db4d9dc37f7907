"""A real Apache Kafka node (KRaft, broker and controller in one process) started from the Maven
Central jars.

Development machines and CI have Java and Maven but no Docker engine, so `eventjobs dev up`
resolves the pinned broker with Maven (cached in ~/.m2), formats KRaft storage once, and runs
`kafka.Kafka` in the background with its data and logs under `.eventjobs/`. Tests use the same
class, so the broker the tests talk to is the broker a user runs. A node alone is a single-node
cluster; `eventjobs.dev.cluster.LocalCluster` runs several of them as one replicated cluster.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

_RESOURCES = Path(__file__).parent
POM = _RESOURCES / "pom.xml"
LOG4J_CONFIG = _RESOURCES / "log4j2.xml"
SERVER_TEMPLATE = _RESOURCES / "server.properties"
KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


class DevStackError(RuntimeError):
    """The local stack could not do what was asked; the message says what to do about it."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    home: Path
    log_file: Path

    def describe(self) -> str:
        if self.running:
            return f"Kafka is running (pid {self.pid}) at {self.bootstrap}; data and logs in {self.home}"
        return f"Kafka is not running; data dir {self.home}"


def _require_tool(name: str, what_for: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DevStackError(
            f"'{name}' was not found on PATH; it is needed {what_for}. "
            f"Install Java 17+ and Maven (Debian: apt-get install openjdk-17-jre-headless maven), "
            f"or use docker compose (see README), or point KAFKA_BOOTSTRAP_SERVERS at a broker."
        )
    return path


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A port nobody listens on right now (for tests that start their own broker)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_cluster_id() -> str:
    """Kafka's Uuid.toString(): URL-safe base64 of 16 random bytes without padding.

    Like Kafka's own generator, never one that starts with '-': `kafka-storage format -t -...`
    would read it as an option (1 new id in 64 did).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalKafka:
    """Owns one broker process: its config, storage, pid file and log under `home`.

    Alone (the defaults) it is a single-node cluster: node 1, the only controller voter, internal
    topics with one replica. As one node of a `LocalCluster` it gets its `node_id`, the quorum's
    `voters` (`id@host:controller_port,...`), the cluster's shared `cluster_id` (its storage is
    formatted with it) and the replication the cluster's internal topics use.
    """

    def __init__(
        self,
        home: Path | str = ".eventjobs/kafka",
        port: int = 9092,
        controller_port: int | None = None,
        heap: str = "512m",
        host: str = "127.0.0.1",
        *,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        replication_factor: int = 1,
        min_insync_replicas: int = 1,
    ) -> None:
        self.home = Path(home).resolve()
        self.port = port
        self.controller_port = controller_port if controller_port is not None else port + 1
        self.heap = heap
        self.host = host
        self.node_id = node_id
        self.voters = voters or f"{node_id}@{host}:{self.controller_port}"
        self.cluster_id = cluster_id
        self.replication_factor = replication_factor
        self.min_insync_replicas = min_insync_replicas

    # -- paths -----------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def _stdout_file(self) -> Path:
        return self.log_dir / "stdout.log"

    @property
    def _pid_file(self) -> Path:
        return self.home / "broker.json"

    @property
    def _config_file(self) -> Path:
        return self.home / "server.properties"

    # -- jars ------------------------------------------------------------------------------
    def classpath(self, quiet: bool = True) -> str:
        """Resolve the broker jars with Maven once; later calls reuse the recorded classpath.

        The recorded classpath is keyed by a hash of the pom, and is reused only while every jar
        it names is still in ~/.m2, so a second `up` neither downloads nor even starts Maven.
        """
        pom_hash = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
        cache = Path.home() / ".m2" / "eventjobs" / f"classpath-{pom_hash}.txt"
        if cache.exists():
            entries = cache.read_text().strip().split(os.pathsep)
            if entries and all(Path(entry).exists() for entry in entries):
                return os.pathsep.join(entries)
        mvn = _require_tool("mvn", "to resolve the Kafka broker jars from Maven Central")
        _require_tool("java", "to run the Kafka broker")
        cache.parent.mkdir(parents=True, exist_ok=True)
        output = cache.with_suffix(".tmp")
        command = [
            mvn, "-B", "-f", str(POM),
            "dependency:build-classpath", f"-Dmdep.outputFile={output}",
        ]
        if quiet:
            command.insert(2, "-q")
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not output.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise DevStackError(
                f"Maven could not resolve the Kafka jars (exit {proc.returncode}). "
                f"Check that Maven Central is reachable.\n{tail}"
            )
        output.replace(cache)
        return cache.read_text().strip()

    # -- lifecycle -------------------------------------------------------------------------
    def _java_command(self, classpath: str, main: str, *args: str, heap: str | None = None) -> list[str]:
        java = _require_tool("java", "to run the Kafka broker")
        heap = heap or self.heap
        return [
            java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            classpath,
            main,
            *args,
        ]

    def run_tool(self, main: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run one of Kafka's command-line tools (a main class of the same jars) with a small heap."""
        command = self._java_command(self.classpath(), main, *args, heap="128m")
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)

    def _write_config(self) -> None:
        template = SERVER_TEMPLATE.read_text()
        config = template.format(
            port=self.port, controller_port=self.controller_port, data_dir=self.data_dir, node_id=self.node_id,
            voters=self.voters, replication_factor=self.replication_factor,
            min_insync_replicas=self.min_insync_replicas,
        )
        self._config_file.write_text(config)

    def _format_storage(self, classpath: str) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        command = self._java_command(
            classpath, STORAGE_TOOL, "format", "-t", self.cluster_id or new_cluster_id(), "-c", str(self._config_file),
            heap="256m",
        )
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DevStackError(
                f"Formatting KRaft storage in {self.data_dir} failed (exit {proc.returncode}):\n"
                + (proc.stdout + proc.stderr).strip()[-2000:]
            )

    def up(self, timeout_s: float = 90.0) -> BrokerStatus:
        """Start the broker (idempotent: a running broker is left alone) and wait until it answers."""
        proc = self.start()
        if proc is not None:
            self.wait_ready(proc, timeout_s)
        return self.status()

    def start(self) -> subprocess.Popen[bytes] | None:
        """Start the broker process without waiting for it (None: it runs already).

        A node of a cluster answers only once a majority of the controller voters run, so a
        cluster starts every node first and then waits for each (`wait_ready`).
        """
        if self.status().running:
            return None
        for port, role in ((self.port, "broker"), (self.controller_port, "controller")):
            if _port_in_use(self.host, port):
                raise DevStackError(
                    f"port {port} on {self.host} (the {role} port) is already in use by another "
                    f"process; stop it or choose other ports with --port/--controller-port"
                )
        classpath = self.classpath()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format_storage(classpath)
        command = self._java_command(classpath, KAFKA_MAIN, str(self._config_file))
        with open(self._stdout_file, "ab") as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI that started it
                cwd=self.home,
            )
        self._pid_file.write_text(
            json.dumps({"pid": proc.pid, "port": self.port, "controller_port": self.controller_port})
        )
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
        """Wait until the started broker answers a metadata request; stop it if it does not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._pid_file.unlink(missing_ok=True)
                raise DevStackError(
                    f"the Kafka broker exited with code {proc.returncode} while starting. "
                    f"Last lines of its log:\n{self.tail_logs(30)}"
                )
            if _port_in_use(self.host, self.port) and self._answers_metadata():
                return
            time.sleep(0.3)
        self.down()
        raise DevStackError(
            f"the Kafka broker did not answer a metadata request on {self.bootstrap} within "
            f"{timeout_s:.0f} s and was stopped. Last lines of its log:\n{self.tail_logs(30)}"
        )

    def _answers_metadata(self) -> bool:
        from eventjobs.dev.probe import broker_answers

        return broker_answers(self.bootstrap, timeout_s=3.0)

    def down(self, timeout_s: float = 30.0) -> bool:
        """Stop exactly the process `up` started: SIGTERM, then SIGKILL after `timeout_s`.

        Returns False when nothing of ours was running.
        """
        pid = self._recorded_pid()
        if pid is None:
            return False
        if not self._is_our_broker(pid):
            self._pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._is_alive(pid):
            time.sleep(0.2)
        if self._is_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while self._is_alive(pid):
                time.sleep(0.05)
        self._pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the broker (tests of crash recovery)."""
        pid = self._recorded_pid()
        if pid is not None and self._is_our_broker(pid):
            os.kill(pid, signal.SIGKILL)
            while self._is_alive(pid):
                time.sleep(0.05)
        self._pid_file.unlink(missing_ok=True)

    def status(self) -> BrokerStatus:
        pid = self._recorded_pid()
        running = pid is not None and self._is_our_broker(pid)
        return BrokerStatus(
            running=running,
            pid=pid if running else None,
            bootstrap=self.bootstrap,
            home=self.home,
            log_file=self.log_file,
        )

    def tail_logs(self, lines: int = 50) -> str:
        chunks: list[str] = []
        for path in (self.log_file, self._stdout_file):
            if path.exists():
                with open(path, errors="replace") as handle:
                    tail = deque(handle, maxlen=lines)
                if tail:
                    chunks.append(f"--- {path} ---\n" + "".join(tail).rstrip())
        return "\n".join(chunks) if chunks else f"(no log yet in {self.log_dir})"

    # -- process bookkeeping ---------------------------------------------------------------
    def _recorded_pid(self) -> int | None:
        try:
            return int(json.loads(self._pid_file.read_text())["pid"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def _is_alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
            return state != "Z"
        except (FileNotFoundError, IndexError):
            return False

    def _is_our_broker(self, pid: int) -> bool:
        """The recorded pid is ours only if it is alive and runs kafka.Kafka with our config."""
        if not self._is_alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, PermissionError):
            return False
        return KAFKA_MAIN.encode() in cmdline and str(self._config_file).encode() in cmdline


def main_for_ci() -> None:  # pragma: no cover - used by .ci/run
    """Resolve the jars only (no broker): `python -m eventjobs.dev.broker`."""
    started = time.monotonic()
    classpath = LocalKafka().classpath(quiet=False)
    jars = classpath.split(os.pathsep)
    print(f"Kafka jars ready: {len(jars)} jars in {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    main_for_ci()
