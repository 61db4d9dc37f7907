"""Reading a service's Prometheus metrics in tests: a free port, one scrape, samples by name."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections import defaultdict
from pathlib import Path
from subprocess import Popen

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(port: int) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return response.read().decode()

    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(await asyncio.to_thread(get)):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


async def scrape_when_up(port: int, proc: Popen[bytes], log: Path, timeout: float = 60) -> Samples:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        assert proc.poll() is None, f"the service exited: {log.read_text()[-3000:]}"
        try:
            return await scrape(port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def total(samples: Samples, metric: str, **labels: str) -> float:
    return sum(value for sample_labels, value in samples.get(metric, [])
               if all(sample_labels.get(k) == v for k, v in labels.items()))
