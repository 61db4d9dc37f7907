"""`require_tool`: a program the machine lacks skips the test with its install line, or fails it
under `EVENTJOBS_REQUIRE_TOOLS=1` (`.ci/run`); a program that is there is found on PATH."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tools import PROMTOOL, REQUIRE_TOOLS, require_tool


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH is one empty directory: no tool is installed."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(REQUIRE_TOOLS, raising=False)
    return tmp_path


@pytest.mark.parametrize("setting", [None, "0", ""])
def test_a_missing_tool_skips_with_its_install_line(bare_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    setting: str | None) -> None:
    if setting is not None:
        monkeypatch.setenv(REQUIRE_TOOLS, setting)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_tool("promtool", PROMTOOL)
    assert str(skipped.value) == (
        "promtool is not on PATH; install it with: apt-get install -y prometheus (Debian's prometheus package)"
    )


def test_a_missing_tool_fails_when_tools_are_required(bare_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_TOOLS, "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_tool("promtool", PROMTOOL)
    assert str(failed.value) == (
        "promtool is not on PATH; install it with: apt-get install -y prometheus (Debian's prometheus package) "
        "(EVENTJOBS_REQUIRE_TOOLS=1, as .ci/run sets, makes a missing tool a failure)"
    )


def test_a_tool_on_path_is_found_whatever_the_setting(bare_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = bare_path / "promtool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv(REQUIRE_TOOLS, "1")
    assert require_tool("promtool", PROMTOOL) == str(tool)
