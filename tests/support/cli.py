"""Run the `eventjobs` command as a user would: a subprocess, with wide output for stable text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from eventjobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, settings: Settings | None = None, env: dict[str, str] | None = None, cwd: Path = ROOT,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """`python -m eventjobs.cli ARGS`; `settings` points it at a test's broker and namespace."""
    extra = dict(env or {})
    if settings is not None:
        extra = {"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap, "EVENTJOBS_NAMESPACE": settings.namespace,
                 **extra}
    return subprocess.run(
        [sys.executable, "-m", "eventjobs.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, "COLUMNS": "250", **extra},
    )
