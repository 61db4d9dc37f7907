"""faust-streaming works against the pinned broker: a real Faust worker consumes and produces."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from aiokafka.admin import NewTopic

from eventjobs.kafka.clients import admin_client, consumer, producer
from eventjobs.settings import Settings
from eventjobs.kafka.admin import wait_for_topics

ROOT = Path(__file__).resolve().parents[2]


async def test_faust_worker_relays_records(settings: Settings, tmp_path: Path) -> None:
    source, sink = f"{settings.namespace}.faust-in", f"{settings.namespace}.faust-out"
    admin = admin_client(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(source, 1, 1), NewTopic(sink, 1, 1)])
        await wait_for_topics(admin, [source, sink])
    finally:
        await admin.close()

    worker = subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "tests.support.faust_relay", "--datadir", str(tmp_path),
         "worker", "-l", "warn", "--without-web"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "FAUST_RELAY_BROKER": settings.kafka_bootstrap, "FAUST_RELAY_IN": source,
             "FAUST_RELAY_OUT": sink, "FAUST_RELAY_ID": f"{settings.namespace}-relay"},
    )
    try:
        prod = producer(settings)
        await prod.start()
        try:
            for i in range(5):
                await prod.send_and_wait(source, f"event-{i}".encode(), key=f"k{i}".encode())
        finally:
            await prod.stop()
        cons = consumer(settings, sink)
        await cons.start()
        received: list[tuple[bytes, bytes]] = []
        try:
            deadline = asyncio.get_running_loop().time() + 90
            while len(received) < 5 and asyncio.get_running_loop().time() < deadline:
                batch = await cons.getmany(timeout_ms=1000)
                received += [(m.key, m.value) for ms in batch.values() for m in ms]
                assert worker.poll() is None, worker.stdout.read().decode() if worker.stdout else ""
        finally:
            await cons.stop()
        assert sorted(received) == [(f"k{i}".encode(), f"relayed:event-{i}".encode()) for i in range(5)]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
