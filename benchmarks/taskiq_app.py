"""taskiq's side of bench_vs_taskiq: its Redis stream broker at its defaults and two tasks.

Redis from BENCH_REDIS_URL. Needs the `bench` extra (`pip install -e '.[bench]'`).
"""

import os

from taskiq_redis import RedisStreamBroker

from benchmarks.stamps import record

broker = RedisStreamBroker(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))


@broker.task
async def noop() -> None:
    return None


@broker.task
async def stamp(t: float) -> None:
    record(t)
