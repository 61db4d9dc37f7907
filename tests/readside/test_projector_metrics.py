"""The projector's Prometheus metric: its lag behind the log, in seconds, after each written batch."""

from __future__ import annotations

import asyncio
import time

import pytest

from eventjobs import metrics
from eventjobs.clickhouse import Backend
from eventjobs.testing.simulation import generate_log
from eventjobs.kafka.admin import apply_topics
from eventjobs.metrics import Metrics
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import Projector, ProjectorOptions
from eventjobs.settings import Settings
from tests.support.event_log import end_offsets, produce_events

pytestmark = pytest.mark.kafka


async def test_projector_lag_is_the_age_of_the_newest_written_event(backend: Backend, settings: Settings) -> None:
    await apply_topics(settings)
    await produce_events(settings, generate_log(300, seed=3))
    produced = time.time()
    await asyncio.sleep(1.0)
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
    service = Metrics()
    projector = Projector(backend, settings, control=False, stop_at=await end_offsets(settings),
                          options=ProjectorOptions(batch_max_events=100, batch_max_wait_s=0.2), metrics=service)
    await asyncio.wait_for(projector.run(asyncio.Event()), 120)
    lag = service.registry.get_sample_value(metrics.PROJECTOR_LAG)
    assert lag is not None and 1.0 <= lag <= time.time() - produced + 1.0
