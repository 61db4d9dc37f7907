"""How long the processor's housekeeping loop waits: never past a lease's deadline.

The lease is one of the lane's housekeeping timers, so the loop's wait must end when the next
one is due (a lease shorter than HOUSEKEEPING_WAIT_S included), and a lease tracked while the
loop waits that is due before its next look must wake it (`_housekeeping_tracked`). No broker:
the processor is only constructed (it connects in `run`), and its lanes are given the one part
these methods read, their `Housekeeping`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from eventjobs.core.clock import FrozenClock, add_seconds, epoch_ms
from eventjobs.core.housekeeping import Housekeeping
from eventjobs.runtime.processor import HOUSEKEEPING_WAIT_S, LifecycleProcessor
from eventjobs.settings import Settings
from tests.unit.test_effects import T0, Job

ROOT = Path(__file__).resolve().parents[2]


def processor_with_lane() -> tuple[LifecycleProcessor, Housekeeping]:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", namespace="wait", topics_dir=ROOT / "topics")
    processor = LifecycleProcessor(settings, clock=FrozenClock(T0))
    housekeeping = Housekeeping()
    processor.lanes[0] = SimpleNamespace(housekeeping=housekeeping)  # type: ignore[assignment]
    return processor, housekeeping


def test_the_wait_ends_when_the_next_lease_is_due() -> None:
    processor, housekeeping = processor_with_lane()
    # nothing tracked: the longest wait
    assert processor._housekeeping_wait_s(T0) == HOUSEKEEPING_WAIT_S
    # a pending job: its re-publish is an hour away, the wait stays the longest
    pending = Job("job-p")
    pending.enqueue()
    housekeeping.track("job-p", pending.s)
    assert processor._housekeeping_wait_s(pending.now) == HOUSEKEEPING_WAIT_S
    # a running job whose lease ends in 0.2 s: the loop looks again then, not 0.5 s later
    running = Job("job-r")
    running.enqueue()
    running.run(lease_s=1.2)  # claimed 1 s before its start, so 0.2 s are left
    housekeeping.track("job-r", running.s)
    assert running.s.lease_deadline == add_seconds(running.now, 0.2)
    assert processor._housekeeping_wait_s(running.now) == 0.2
    # overdue (a lane that took the partition late): at once
    assert processor._housekeeping_wait_s(add_seconds(running.now, 5)) == 0.001


def test_a_lease_tracked_during_the_wait_wakes_the_loop_only_if_due_before_the_next_look() -> None:
    processor, housekeeping = processor_with_lane()
    # Given the loop waiting until 0.5 s from now
    processor._housekeeping_look_ms = epoch_ms(T0) + 500
    wakeup = processor._housekeeping_wakeup
    # When a job is claimed now with a lease that ends after that look: the loop sleeps on
    late = Job("job-late")
    late.now = add_seconds(T0, -1)
    late.enqueue()
    late.claim(lease_s=3)  # claimed at T0: its lease ends at T0 + 3 s
    housekeeping.track("job-late", late.s)
    processor._housekeeping_tracked(housekeeping)
    assert not wakeup.is_set()
    # When a claim folded late (the processor behind, or the worker's clock behind) has a lease
    # that ends before that look: the loop wakes and looks again
    soon = Job("job-soon")
    soon.now = add_seconds(T0, -3)
    soon.enqueue()
    soon.claim(lease_s=1)  # claimed at T0 - 2 s (the claim ticks 1 s): its lease ended at T0 - 1 s
    housekeeping.track("job-soon", soon.s)
    processor._housekeeping_tracked(housekeeping)
    assert wakeup.is_set()
    assert processor._housekeeping_wait_s(T0) == 0.001
