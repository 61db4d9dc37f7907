"""Programs some tests need besides Python (promtool, chromium, a JDK, Maven): one rule for all.

The README's test command must pass on a fresh machine that lacks them, so by default a test
whose tool is missing is skipped, with the line that installs it as the reason. CI installs
every one of them (`.ci/run`) and sets `EVENTJOBS_REQUIRE_TOOLS=1`: there a missing tool is a
broken setup, and the test fails instead of being skipped.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_TOOLS = "EVENTJOBS_REQUIRE_TOOLS"

#: How to install each tool on Debian (what `.ci/run` does).
PROMTOOL = "apt-get install -y prometheus (Debian's prometheus package)"
CHROMIUM = "apt-get install -y chromium (Debian's chromium, driven by Playwright)"
JDK = "apt-get install -y openjdk-17-jdk-headless (a JDK: the Java example runs as a source file)"
MAVEN = "apt-get install -y maven (resolves the Java example's jars)"


def tools_required() -> bool:
    """Whether a missing tool fails the test (`EVENTJOBS_REQUIRE_TOOLS` set, and not to 0)."""
    return os.environ.get(REQUIRE_TOOLS, "").strip() not in ("", "0")


def require_tool(name: str, install_hint: str) -> str:
    """The path of the program `name` on PATH; if it is missing, skip the calling test (or
    fixture) naming `install_hint`, or fail it when `EVENTJOBS_REQUIRE_TOOLS=1`."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not on PATH; install it with: {install_hint}"
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_TOOLS}=1, as .ci/run sets, makes a missing tool a failure)", pytrace=False)
    pytest.skip(reason)
