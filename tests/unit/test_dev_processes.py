"""`eventjobs.dev.processes.stop_processes`, on real child processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from eventjobs.dev.processes import stop_processes

#: a child that ignores SIGTERM, says so on stdout, then sleeps
STUBBORN = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def test_processes_that_stop_on_sigterm_are_stopped_by_it() -> None:
    processes = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    stop_processes(processes)
    assert [p.returncode for p in processes] == [-signal.SIGTERM, -signal.SIGTERM]


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    process = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    started = time.monotonic()
    stop_processes([process], timeout_s=0.5)
    assert process.returncode == -signal.SIGKILL and time.monotonic() - started >= 0.5


def test_with_whole_group_the_process_group_is_killed() -> None:
    # a leader of its own session that ignores SIGTERM, with a child of its own in the group
    leader = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 60 & echo $!; wait"], stdout=subprocess.PIPE,
                              start_new_session=True)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    stop_processes([leader], timeout_s=0.5, whole_group=True)
    assert leader.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as stat:
                if stat.read().split(")")[-1].split()[0] == "Z":  # killed, not reaped yet (init reaps it)
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the group's other process {child} still runs")
