"""The log simulator: reproducible, valid, and as long as asked."""

from __future__ import annotations

import random

from eventjobs.core.fold import apply
from eventjobs.testing.simulation import generate_log, job_lifecycle, sim_id


def test_generate_log_is_reproducible_and_exactly_as_long_as_asked() -> None:
    first, second = generate_log(3000, seed=5, concurrency=50), generate_log(3000, seed=5, concurrency=50)
    assert len(first) == 3000
    assert first == second
    assert generate_log(3000, seed=6, concurrency=50) != first
    assert len({e.job_id for e in first}) > 50


def test_every_simulated_event_is_accepted_or_a_derived_echo() -> None:
    states: dict = {}
    for event in generate_log(5000, seed=1, concurrency=100):
        decision = apply(states.get(event.job_id), event)
        assert decision.rejected is None
        states[event.job_id] = decision.state


def test_a_lifecycle_ends_in_a_terminal_state() -> None:
    for seed in range(30):
        state = None
        for event in job_lifecycle(random.Random(seed)):
            state = apply(state, event).state
        assert state is not None and state.is_terminal


def test_sim_ids_are_uuid7_shaped_and_reproducible() -> None:
    from datetime import datetime, timezone

    at = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert sim_id(random.Random(1), at) == sim_id(random.Random(1), at)
    assert sim_id(random.Random(1), at)[14] == "7"
