"""collector_paused: the collector is off inside, back as it was after, whatever happens inside.
LoadPause: off across a load, then what the load made is frozen out of every later scan."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from eventjobs.runtime.gc_pause import LoadPause, collector_paused


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_the_collector_is_off_inside_and_on_again_after() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_an_error_inside_still_turns_it_back_on() -> None:
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_a_collector_turned_off_by_someone_else_stays_off() -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_an_inner_pause_leaves_the_outer_one_in_charge() -> None:
    with collector_paused():
        with collector_paused():
            pass
        assert not gc.isenabled()  # the outer pause is not cut short
    assert gc.isenabled()


def test_services_run_with_the_collector_tuned() -> None:
    # In a process of its own (the thresholds are process-wide): the runner of every service
    # (processor, worker, projector) raises the thresholds and freezes what start-up made.
    import subprocess
    import sys

    code = ("import gc\n"
            "from eventjobs.cli.services import run_until_signalled\n"
            "async def main(stop):\n"
            "    print(gc.get_threshold(), gc.get_freeze_count() > 1000)\n"
            "run_until_signalled(main)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    from eventjobs.runtime.gc_pause import SERVICE_THRESHOLDS
    assert out.strip() == f"{SERVICE_THRESHOLDS} True"
    assert SERVICE_THRESHOLDS[0] > 700  # not CPython's default


def test_a_load_pause_freezes_what_the_load_made_and_turns_the_collector_back_on() -> None:
    pause = LoadPause()
    frozen_before = gc.get_freeze_count()
    pause.start()
    pause.start()  # a second take while loading: still one pause
    assert not gc.isenabled()
    loaded = [{"schedule": n} for n in range(1000)]
    pause.end()
    assert gc.isenabled() and gc.get_freeze_count() >= frozen_before + len(loaded)
    pause.end()  # nothing to end
    assert gc.isenabled()
    gc.unfreeze()


def test_a_load_pause_leaves_a_collector_turned_off_by_someone_else_off() -> None:
    gc.disable()
    pause = LoadPause()
    pause.start()
    pause.end()
    assert not gc.isenabled()
