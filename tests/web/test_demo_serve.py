"""`eventjobs demo --serve`: the demo, then its stack and the dashboard until SIGINT, then nothing
it started is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from eventjobs.dev.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_serve_keeps_the_dashboard_up_until_sigint_then_stops_everything(kafka_bootstrap: str,
                                                                              tmp_path: Path) -> None:
    port = free_port()
    namespace = f"d{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "EVENTJOBS_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "100"}
    env.pop("EVENTJOBS_DASHBOARD_TOKEN", None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "eventjobs.cli", "demo", "--serve", "--dashboard-port", str(port), "--bootstrap",
         kafka_bootstrap, "--namespace", namespace], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150
        page = ""
        while time.monotonic() < deadline and demo.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/dead-letters", timeout=5) as answer:
                    page = answer.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert demo.poll() is None, demo.stdout.read() if demo.stdout else ""
        assert "sync_inventory" in page and "warehouse API rejected" in page  # the demo's dead letters
        started = _children(demo.pid)
        assert len(started) == 3, started  # processor, worker, dashboard (the broker was given)
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, output
    assert f"dashboard at http://127.0.0.1:{port}/" in output
    assert "stopped the dashboard, the worker and the processor" in output
    # the retried card payment, as it stood after its first failure, answered from its history
    flat = " ".join(output.split())
    assert "(its first failure), from the history alone: status retrying, attempt 1, 1 started" in flat, output
    assert not [pid for pid in started if _alive(pid)], output
