"""The app of the fault suite (`tests/faults/`) and the soak (`benchmarks/soak.py`).

Worker subprocesses load it with `--app tests.support.fault_app:app` and EVENTJOBS_NAMESPACE set.
Every handler run is written to a side channel before the handler does anything else: one line
`<job id> <attempt> <pid>` appended (one `write` of an O_APPEND file, so a line is whole or
absent even when the process is SIGKILLed right after) to `<EVENTJOBS_EXECUTIONS_DIR>/<pid>.log`.
The tests and the soak count handler executions from those files, which the event log cannot
tell: a worker killed after running a handler but before its `attempt_started` was written
leaves no trace in the log.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

from eventjobs import App, JobContext
from eventjobs.core.options import ConstantBackoff

EXECUTIONS_ENV = "EVENTJOBS_EXECUTIONS_DIR"
_channel: dict[int, int] = {}  # pid -> fd (a forked or restarted process opens its own file)


def record_execution(job_id: str, attempt: int) -> None:
    """Append this execution to the side channel (nothing when EVENTJOBS_EXECUTIONS_DIR is unset)."""
    directory = os.environ.get(EXECUTIONS_ENV)
    if not directory:
        return
    pid = os.getpid()
    fd = _channel.get(pid)
    if fd is None:
        fd = _channel[pid] = os.open(Path(directory) / f"{pid}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{job_id} {attempt} {pid}\n".encode())


def execution_lines(directory: Path) -> list[tuple[str, int, int]]:
    """Every recorded handler run: (job id, attempt, pid), over every process's file."""
    runs: list[tuple[str, int, int]] = []
    for path in Path(directory).glob("*.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line is written whole; anything else is not ours
                runs.append((parts[0], int(parts[1]), int(parts[2])))
    return runs


def read_executions(directory: Path) -> Counter[tuple[str, int]]:
    """(job id, attempt) -> how many times a handler ran it, over every process's file."""
    return Counter((job_id, attempt) for job_id, attempt, _ in execution_lines(directory))


def build_app(namespace: str, **settings: Any) -> App:
    app = App(namespace, **settings)

    @app.job(queue="default", max_attempts=3, backoff=ConstantBackoff(delay_s=0.2), timeout=60)
    async def work(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """Sleeps `sleep` seconds; fails its first `fail_times` attempts, or every one with `always_fail`."""
        record_execution(ctx.job_id, ctx.attempt)
        if args.get("sleep"):
            await asyncio.sleep(float(args["sleep"]))
        if args.get("always_fail"):
            raise RuntimeError(f"job {args.get('i')} always fails (attempt {ctx.attempt})")
        if ctx.attempt < int(args.get("fail_times", 0)):
            raise ConnectionError(f"job {args.get('i')} fails attempt {ctx.attempt} once")
        return {"i": args.get("i"), "attempt": ctx.attempt, "pid": os.getpid(),
                "worker": os.environ.get("FAULT_WORKER_NAME", "")}

    @app.job(queue="default", max_attempts=3, backoff=ConstantBackoff(delay_s=0.2), timeout=60)
    async def merge(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """Runs after its depends_on: returns the results of its dependencies as it saw them."""
        record_execution(ctx.job_id, ctx.attempt)
        return {"i": args.get("i"), "seen": ctx.dependency_results}

    return app


app = build_app(os.environ.get("EVENTJOBS_NAMESPACE", "faults"))
