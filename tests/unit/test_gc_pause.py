"""collector_paused: the collector is off inside, back as it was after, whatever happens inside."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from eventjobs.core.gc_pause import collector_paused


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
