"""Is a Kafka broker really serving? A metadata round trip, not just an open port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

T = TypeVar("T")


async def broker_count_async(bootstrap: str, timeout_s: float = 3.0) -> int:
    """How many brokers the cluster's metadata lists (0: no answer within `timeout_s`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return len(cluster.get("brokers") or [])
    except (TimeoutError, KafkaError, OSError):
        return 0
    finally:
        try:
            await admin.close()
        except Exception:  # noqa: BLE001, S110 - closing a client that never connected
            pass


async def broker_answers_async(bootstrap: str, timeout_s: float = 3.0) -> bool:
    return await broker_count_async(bootstrap, timeout_s) > 0


def _quietly(probe: Coroutine[Any, Any, T]) -> T:
    """Run a probe from sync code (the CLI, fixtures), silencing aiokafka's connection noise meanwhile."""
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(probe)
        # called from async code (tests, benchmarks): probe on a thread with its own loop
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, probe).result()
    finally:
        logger.setLevel(previous)


def broker_answers(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """Whether a broker at `bootstrap` answers a metadata request (sync)."""
    return _quietly(broker_answers_async(bootstrap, timeout_s))


def broker_count(bootstrap: str, timeout_s: float = 3.0) -> int:
    """How many brokers the cluster at `bootstrap` lists (sync; 0 when nothing answers)."""
    return _quietly(broker_count_async(bootstrap, timeout_s))
