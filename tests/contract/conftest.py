"""Fixtures for the contract tests: a real processor, timer service and worker in process, the
examples of docs/producers.md as subprocesses, and every record of the event log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord

from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.clients import partitions_of, read_to_end
from eventjobs.runtime.processor import LifecycleProcessor
from eventjobs.runtime.supervisor import run_services
from eventjobs.runtime.timers import TimerService
from eventjobs.settings import Settings
from tests.contract.jobs import build_contract_app
from tests.e2e.conftest import Runtime
from tests.support.tools import JDK, MAVEN, require_tool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "producers"
JAVA_EXAMPLE = EXAMPLES / "java"


@dataclass
class Services(Runtime):
    """The e2e runtime, with the lifecycle processor it runs in process (its move counters)."""

    processor: LifecycleProcessor = None  # type: ignore[assignment]  # always given by the fixture


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    await apply_topics(settings, ["default"])
    app = build_contract_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap)
    processor = LifecycleProcessor(settings)
    running = Services(app, processor=processor)
    running.tasks.append(asyncio.create_task(run_services(running.stop, {
        "lifecycle processor": processor.run(running.stop), "timer service": TimerService(settings).run(running.stop),
    })))
    await asyncio.wait_for(processor.started.wait(), 60)  # its partitions are taken: the topics are ready
    yield running
    await running.close()


async def event_records(settings: Settings) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of the namespace's event log, in order per partition."""
    topic = f"{settings.namespace}.events"
    return [record async for record in read_to_end(settings, await partitions_of(settings, topic))]


async def run_example(command: list[str], timeout: float = 180) -> list[list[str]]:
    """Run an example as a subprocess (the services keep running on this event loop); its stdout
    lines, split. Fails with its output if it exits non-zero."""
    proc = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"{command[:3]} exited {proc.returncode}:\n{out.decode()}\n{err.decode()[-3000:]}"
    return [line.split(" ", 3) for line in out.decode().splitlines() if line.strip()]


def python_example(*args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / "enqueue_confluent.py"), *args]


@pytest.fixture(scope="session")
def java_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Java example's jars (kafka-clients, Jackson), resolved by Maven: from ~/.m2 when they are
    there (the local broker resolves the same versions), else from Maven Central. Needs Java 17+
    as a JDK (`java File.java` compiles the example) and Maven."""
    for tool, hint in (("java", JDK), ("javac", JDK), ("mvn", MAVEN)):
        require_tool(tool, hint)
    output = tmp_path_factory.mktemp("java") / "classpath.txt"
    base = ["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(JAVA_EXAMPLE / "pom.xml"),
            "dependency:build-classpath", f"-Dmdep.outputFile={output}"]
    for offline in (True, False):
        proc = subprocess.run([*base[:1], "-o", *base[1:]] if offline else base, capture_output=True, text=True,
                              timeout=300)
        if proc.returncode == 0 and output.exists():
            return output.read_text().strip()
    raise AssertionError(f"Maven could not resolve the Java example's jars:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def java_example(classpath: str, *args: str) -> list[str]:
    return ["java", "-cp", classpath, str(JAVA_EXAMPLE / "EnqueueAndFollow.java"), *args]

