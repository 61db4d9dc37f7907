"""Stopping the service processes a dev command or a benchmark started."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any


def stop_processes(processes: Sequence[subprocess.Popen[Any]], *, timeout_s: float = 30,
                   whole_group: bool = False) -> None:
    """SIGTERM to each process, then wait for each; one still running `timeout_s` later is killed
    (with `whole_group`, its whole process group: a process started in a session of its own)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if whole_group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.wait()
