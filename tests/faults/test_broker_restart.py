"""The broker stopped and restarted under load: no acknowledged enqueue is lost, and the processor
and the worker carry on by themselves (same processes, no restart).

The test runs its own single-node KRaft broker (`LocalKafka` on free ports in a temporary
directory; the jars are cached from the session broker's start), so the session broker the other
tests use is untouched. The broker is stopped once with SIGTERM (a clean shutdown) and once with
SIGKILL (log recovery on the next start), each time for a few seconds while jobs are being
enqueued, then started again on the same ports and the same data directory.

Why the services survive: every producer is idempotent, and aiokafka never expires an idempotent
producer's batches, it retries them until the broker is back; consumers reconnect and rejoin
their groups; the processor's open transactions stay open (well within their 60 s timeout) and
commit once the broker answers again. One gap of aiokafka 0.14 made the processor stop instead
(in about one broker stop in three under this load): a connection closed while a transactional
producer looked up its coordinator killed that producer for good, the commit failed and the
processor exited with "commit of partition N failed". `eventjobs/kafka/clients.py` retries that
lookup; `test_a_connection_lost_while_looking_up_a_coordinator_is_retried` pins the fix.

An enqueue is acknowledged when the app's `LogWriter.append` returns; one that times out during the outage is
not counted (it may still land later, and is then processed like any other job).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from eventjobs.dev.broker import LocalKafka, free_port
from eventjobs.kafka.admin import apply_topics
from eventjobs.settings import Settings
from tests.e2e.conftest import ROOT
from tests.faults.test_process_faults import (
    Expected,
    Services,
    check_against_the_log,
    log_size,
    stop_cleanly,
    wait_all_terminal,
)
from tests.support.fault_app import build_app
from eventjobs.core.state import JobStatus

pytestmark = pytest.mark.kafka


async def test_a_connection_lost_while_looking_up_a_coordinator_is_retried() -> None:
    """The aiokafka sender fix in `eventjobs.kafka.clients`, without a broker: the first lookup
    fails as it does when the broker goes away mid-request, the second finds the coordinator."""
    from types import SimpleNamespace

    from aiokafka.client import CoordinationType
    from aiokafka.errors import KafkaConnectionError, TransactionalIdAuthorizationFailed
    from aiokafka.producer.sender import Sender

    import eventjobs.kafka.clients  # noqa: F401 - applies the fix

    class Client:
        def __init__(self, failure: BaseException) -> None:
            self.failure = failure
            self.lookups = 0

        async def coordinator_lookup(self, kind: object, key: str) -> int:
            self.lookups += 1
            if self.lookups == 1:
                raise self.failure
            return 7

        async def ready(self, node_id: int, group: object = None) -> bool:
            return True

        async def force_metadata_update(self) -> bool:
            return True

    def sender(client: Client) -> Sender:
        made = Sender.__new__(Sender)
        made.client, made._coordinators, made._retry_backoff = client, {}, 0.001  # type: ignore[attr-defined]
        made._txn_manager = SimpleNamespace(transactional_id="ns.processor.0")  # type: ignore[attr-defined]
        return made

    lost = Client(KafkaConnectionError("Connection at 127.0.0.1:9092 closed"))
    assert await sender(lost)._find_coordinator(CoordinationType.TRANSACTION, "ns.processor.0") == 7
    assert lost.lookups == 2
    refused = Client(TransactionalIdAuthorizationFailed())  # not retriable: still raised
    with pytest.raises(TransactionalIdAuthorizationFailed):
        await sender(refused)._find_coordinator(CoordinationType.TRANSACTION, "ns.processor.0")


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker of this module only (it is stopped and restarted by the tests)."""
    broker = LocalKafka(home=tmp_path_factory.mktemp("restarted-kafka"), port=free_port(), controller_port=free_port())
    broker.up()
    try:
        yield broker
    finally:
        broker.down()


def _stop(broker: LocalKafka, how: signal.Signals) -> None:
    if how is signal.SIGKILL:
        broker.kill()
    else:
        broker.down(timeout_s=60)  # SIGTERM: a controlled shutdown (SIGKILL only after 60 s)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_broker_restart_mid_load_loses_no_acknowledged_enqueue_and_services_resume(
        own_broker: LocalKafka, namespace: str, tmp_path: Path, processes: list[Popen[bytes]],
        how: signal.Signals) -> None:
    settings = Settings(kafka_bootstrap=own_broker.bootstrap, namespace=namespace, topics_dir=ROOT / "topics")
    await apply_topics(settings, ["default"])
    app = build_app(namespace, kafka_bootstrap=own_broker.bootstrap)
    services = Services(settings, tmp_path, processes)
    processor = services.start("processor", "processor")
    worker = services.start("worker", "worker", "--concurrency", "20", "--lease", "60s")  # outlives the outage
    try:
        acknowledged: dict[str, Expected] = {}  # job id -> how it must end
        refused = 0
        enqueuing = asyncio.Event()
        enqueuing.set()

        async def enqueue_forever() -> None:
            """One job every ~10 ms; an enqueue not acknowledged within 3 s counts as refused."""
            nonlocal refused
            i = 0
            while enqueuing.is_set():
                fails = 1 if i % 10 == 0 else 0  # every tenth job fails once and is retried
                event = app._build_enqueue("work", {"i": i, "fail_times": fails})
                i += 1
                try:
                    await asyncio.wait_for(app.writer.append([event]), 3)
                    acknowledged[event.job_id] = Expected(JobStatus.COMPLETED, fails)
                except Exception:  # noqa: BLE001 - a timeout or a send error: not acknowledged
                    refused += 1
                await asyncio.sleep(0.01)

        warm = await app.enqueue("work", {"i": -1})
        assert (await app.wait(warm, timeout=60)).status is JobStatus.COMPLETED  # both services are up
        producer = asyncio.create_task(enqueue_forever())
        deadline = time.monotonic() + 30
        while len(acknowledged) < 200:  # under load
            assert time.monotonic() < deadline and not producer.done(), "the load did not start"
            await asyncio.sleep(0.05)
        before_stop = len(acknowledged)
        marks = {name: log_size(services.log(name)) for name in ("processor", "worker")}
        await asyncio.to_thread(_stop, own_broker, how)
        stopped = time.monotonic()
        while time.monotonic() - stopped < 4:  # away for a few seconds while the producer keeps trying
            assert processor.poll() is None and worker.poll() is None, "a service exited while the broker was away"
            await asyncio.sleep(0.2)
        await asyncio.to_thread(own_broker.up)  # same ports, same data directory
        during = len(acknowledged)
        deadline = time.monotonic() + 60
        while len(acknowledged) < during + 200:  # enqueues are acknowledged again
            assert time.monotonic() < deadline and not producer.done(), "enqueues were not acknowledged again"
            await asyncio.sleep(0.05)
        enqueuing.clear()
        await producer

        def still_serving() -> None:  # same processes, and nothing failed in them since the stop
            for process, name in ((processor, "processor"), (worker, "worker")):
                assert process.poll() is None, f"the {name} exited:\n{services.tail(name)}"
                after = services.log(name).read_text(errors="replace")[marks[name]:]
                assert " stops: " not in after and "Traceback" not in after, after[-3000:]

        still_serving()
        expected = {warm: Expected(JobStatus.COMPLETED, 0), **acknowledged}
        await wait_all_terminal(app, list(expected), timeout=90)  # every acknowledged job ran to the end
        still_serving()
        await stop_cleanly(services, [processor, worker])
        verdict = await check_against_the_log(settings, expected, services.executions)
        assert before_stop >= 200 and len(expected) > 400, (before_stop, len(expected))
        print(f"{how.name}: {len(acknowledged)} acknowledged ({len(acknowledged) - before_stop} after the stop), "
              f"{refused} not acknowledged while the broker was away, {verdict.events} events")
    finally:
        await app.close()
