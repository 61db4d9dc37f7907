"""Is a Kafka broker really serving? A metadata round trip, not just an open port."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError


async def broker_answers_async(bootstrap: str, timeout_s: float = 3.0) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return bool(cluster.get("brokers"))
    except (KafkaError, OSError, asyncio.TimeoutError):
        return False
    finally:
        try:
            await admin.close()
        except Exception:  # noqa: BLE001 - closing a client that never connected
            pass


def broker_answers(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """Sync wrapper for the CLI and fixtures; silences aiokafka's connection noise meanwhile."""
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(broker_answers_async(bootstrap, timeout_s))
        # called from async code (tests, benchmarks): probe on a thread with its own loop
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, broker_answers_async(bootstrap, timeout_s)).result()
    finally:
        logger.setLevel(previous)
