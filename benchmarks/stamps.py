"""Start stamps for the latency comparison: a handler's first line appends when it started.

Each line is `<enqueued at> <started at>` (both `time.time()`, the same machine's clock), appended
with one `write` to the file named by BENCH_STAMPS (O_APPEND: lines from several worker
processes do not mix).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_fd: int | None = None


def record(enqueued_at: float) -> None:
    """Append this handler's start time beside the time its job was enqueued."""
    started_at = time.time()
    global _fd
    if _fd is None:
        path = os.environ.get("BENCH_STAMPS")
        if not path:
            raise RuntimeError("BENCH_STAMPS is not set: it names the file the start stamps go to")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{enqueued_at!r} {started_at!r}\n".encode())


def waits_ms(path: Path) -> list[float]:
    """Enqueue -> start of every stamped job, in milliseconds."""
    waits = []
    for line in path.read_text().splitlines():
        enqueued_at, started_at = line.split()
        waits.append((float(started_at) - float(enqueued_at)) * 1000)
    return waits


def count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0
