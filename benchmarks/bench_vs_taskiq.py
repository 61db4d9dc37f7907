"""eventjobs beside taskiq on this machine, both at their defaults, in one run.

    .venv/bin/python benchmarks/bench_vs_taskiq.py [--rounds 3] [--jobs 10000] [--rate 500] [--seconds 10]

Setup (nothing is installed by the script):
    apt-get install -y redis-server          # Debian's Redis, run by the script on a free port
    .venv/bin/pip install -e '.[bench]'      # taskiq and taskiq-redis, pinned in pyproject.toml

Each round runs, for each system in turn (the order swaps every round):
  1. throughput: N no-op jobs enqueued (`asyncio.gather` over windows of --window calls, the same
     for both) and awaited; jobs/s from the first enqueue to the last completion;
  2. latency: jobs enqueued one at a time at a steady --rate for --seconds; each handler's first
     line appends `time.time()` beside the enqueue time it was given (benchmarks/stamps.py);
     enqueue -> start p50 / p99.
Every phase gets fresh services: eventjobs a new namespace with one `eventjobs processor` and one
`eventjobs worker` process (default concurrency, 100 for async handlers); taskiq an emptied Redis
and one `taskiq worker` (its defaults: 2 worker processes, 100 async tasks each, the result
backend none, acknowledgement once the result is saved).

Completion: eventjobs through `App.wait` on every job (the committed changelog, as a user awaits
a job). taskiq at its defaults keeps no results, and polling a result backend per task (what
`wait_result` does, every 0.2 s) would load Redis with thousands of reads a second; its stream
broker acknowledges each message after the task ran, so the script polls the consumer group
(`XINFO GROUPS`, every 10 ms) until every message was read and none is pending. That adds no
work to taskiq's worker and counts a task done the moment its worker says so.

CPU: user + system seconds from /proc over each throughput run and each steady window, for the
services (process groups, so taskiq's forked workers count), the broker process when the script
started it, and this client.

Kafka is KAFKA_BOOTSTRAP_SERVERS, or a local broker started for the run (eventjobs.dev.broker
defaults). Redis is started by the script with its defaults, only the port, the directory and
the bind address (127.0.0.1) given. Medians over rounds; the aims: eventjobs throughput at least
2x taskiq's, eventjobs enqueue -> start p50 <= 8 ms at 500 jobs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eventjobs.dev.broker import POM, LocalKafka, free_port  # noqa: E402
from eventjobs.dev.processes import stop_processes  # noqa: E402
from benchmarks import stamps  # noqa: E402
from benchmarks.bench_app import build_app  # noqa: E402
from benchmarks.bench_throughput import fresh, pct  # noqa: E402

SETUP = ("apt-get install -y redis-server (Debian's Redis) and .venv/bin/pip install -e '.[bench]' "
         "(taskiq, taskiq-redis)")
BIN = Path(sys.executable).parent
TASKIQ_WORKER_PROCESSES = 2  # `taskiq worker`'s default --workers


def missing_setup() -> list[str]:
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server is not on PATH: apt-get install -y redis-server")
    for package in ("taskiq", "taskiq-redis"):
        try:
            importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{package} is not installed: .venv/bin/pip install -e '.[bench]'")
    return missing


def machine_info(bootstrap_external: bool) -> list[str]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    kafka = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    redis = re.search(r"v=(\S+)", subprocess.run(["redis-server", "--version"], capture_output=True,
                                                   text=True).stdout)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {cpu}, {os.cpu_count()} CPUs, {memory}, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}; eventjobs {importlib.metadata.version('eventjobs')}; "
        f"Kafka {'(KAFKA_BOOTSTRAP_SERVERS)' if bootstrap_external else kafka.group(1) if kafka else '?'}; "
        f"redis-server {redis.group(1) if redis else '?'}; taskiq {importlib.metadata.version('taskiq')}, "
        f"taskiq-redis {importlib.metadata.version('taskiq-redis')}",
        f"load average at start (1 / 5 / 15 min): {load}",
    ]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process so far (0 if it is gone)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def group_cpu(leaders: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of every live process in the process groups led by `leaders`."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[2]) in leaders:  # fields[2]: the process group
                seconds[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return seconds


class CpuMeter:
    """CPU seconds spent between `start()` and `stop()` by the services, the broker and this process.

    The services are whole process groups (taskiq's forked workers included); the broker is the
    Kafka or Redis process when the script started it (None otherwise).
    """

    def __init__(self, leaders: list[int], broker_pid: int | None) -> None:
        self.leaders = leaders
        self.broker_pid = broker_pid

    def _broker(self) -> float:
        return process_cpu(self.broker_pid) if self.broker_pid is not None else 0.0

    def start(self) -> None:
        self.services0 = group_cpu(self.leaders)
        self.broker0 = self._broker()
        self.client0 = time.process_time()

    def stop(self) -> dict[str, float | None]:
        services = group_cpu(self.leaders)
        spent = sum(cpu - self.services0.get(pid, 0.0) for pid, cpu in services.items())
        return {"services": spent, "broker": self._broker() - self.broker0 if self.broker_pid else None,
                "client": time.process_time() - self.client0}


class Services:
    """Child processes of one phase, each logging to its own file and leading its own process group.

    Stopped with SIGTERM; a group still running 30 s later is killed whole (`taskiq worker`'s
    forked worker processes included).
    """

    def __init__(self, logs: Path, env: dict[str, str], commands: dict[str, list[str]]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.procs = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=open(logs / f"{name}.log", "ab"),
                                       stderr=subprocess.STDOUT, start_new_session=True)
                      for name, command in commands.items()]

    @property
    def leaders(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def stop(self) -> None:
        stop_processes(self.procs, whole_group=True)


class Redis:
    """Debian's redis-server at its defaults, on a free port of 127.0.0.1, data in its own dir."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(home)], stdout=open(home / "redis.log", "wb"),
                                     stderr=subprocess.STDOUT)
        self.url = f"redis://127.0.0.1:{self.port}"

    async def client(self) -> Any:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.ping()
                return client
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer; see its redis.log")
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def enqueue_windows(jobs: int, window: int, enqueue: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """`jobs` enqueue calls, `window` of them at a time under asyncio.gather."""
    results: list[Any] = []
    for first in range(0, jobs, window):
        results.extend(await asyncio.gather(*(enqueue(i) for i in range(first, min(jobs, first + window)))))
    return results


async def steady(rate: int, seconds: float, enqueue: Callable[[float], Awaitable[Any]]) -> int:
    """Enqueue at `rate` per second for `seconds`, each call started on time and given time.time()."""
    total = int(rate * seconds)
    sends = []
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sends.append(asyncio.ensure_future(enqueue(time.time())))
    await asyncio.gather(*sends)
    return total


async def wait_for_stamps(path: Path, total: int, timeout_s: float) -> list[float]:
    deadline = time.monotonic() + timeout_s
    while stamps.count(path) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {stamps.count(path)} of {total} jobs started in {timeout_s} s")
        await asyncio.sleep(0.05)
    return stamps.waits_ms(path)


# -- eventjobs --------------------------------------------------------------------------------------

class EventjobsSide:
    name = "eventjobs"

    def __init__(self, bootstrap: str, logs: Path, kafka_pid: int | None) -> None:
        self.bootstrap = bootstrap
        self.logs = logs
        self.broker_pid = kafka_pid

    async def _start(self, stamp_file: Path | None) -> tuple[Any, Services]:
        settings = await fresh(self.bootstrap)
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "EVENTJOBS_NAMESPACE": settings.namespace}
        if stamp_file is not None:
            env["BENCH_STAMPS"] = str(stamp_file)
        cli = [str(BIN / "eventjobs")]
        services = Services(self.logs, env, {
            f"{settings.namespace}-processor": [*cli, "processor", "--namespace", settings.namespace],
            f"{settings.namespace}-worker": [*cli, "worker", "--app", "benchmarks.bench_app:app"],
        })
        app = build_app(settings.namespace, kafka_bootstrap=self.bootstrap)
        try:
            await app.wait(await app.enqueue("noop", {}), timeout=120)  # processor and worker are up
        except BaseException:
            services.stop()
            await app.close()
            raise
        return app, services

    async def throughput(self, jobs: int, window: int) -> tuple[float, dict[str, float | None]]:
        app, services = await self._start(None)
        try:
            waits: list[asyncio.Task[Any]] = []

            async def enqueue(i: int) -> None:
                job_id = await app.enqueue("noop", {"i": i})
                waits.append(asyncio.ensure_future(app.wait(job_id, timeout=600)))

            meter = CpuMeter(services.leaders, self.broker_pid)
            meter.start()
            started = time.perf_counter()
            await enqueue_windows(jobs, window, enqueue)
            await asyncio.gather(*waits)
            return jobs / (time.perf_counter() - started), meter.stop()
        finally:
            await app.close()
            services.stop()

    async def latency(self, rate: int, seconds: float, stamp_file: Path) -> tuple[list[float], dict[str, float | None]]:
        app, services = await self._start(stamp_file)
        try:
            meter = CpuMeter(services.leaders, self.broker_pid)
            meter.start()
            total = await steady(rate, seconds, lambda t: app.enqueue("stamp", {"t": t}))
            spent = meter.stop()
            return await wait_for_stamps(stamp_file, total, timeout_s=300), spent
        finally:
            await app.close()
            services.stop()


# -- taskiq -----------------------------------------------------------------------------------------

class TaskiqSide:
    name = "taskiq"

    def __init__(self, redis: Redis, logs: Path) -> None:
        self.redis = redis
        self.logs = logs
        self.round = 0

    async def _start(self, stamp_file: Path | None) -> tuple[Any, Any, Services]:
        os.environ["BENCH_REDIS_URL"] = self.redis.url  # read when benchmarks.taskiq_app is imported
        from benchmarks import taskiq_app

        client = await self.redis.client()
        await client.flushall()
        self.round += 1
        env = {"BENCH_REDIS_URL": self.redis.url}
        if stamp_file is not None:
            env["BENCH_STAMPS"] = str(stamp_file)
        services = Services(self.logs, env, {
            f"taskiq-{self.round}-worker": [str(BIN / "taskiq"), "worker", "benchmarks.taskiq_app:broker"],
        })
        broker = taskiq_app.broker
        try:
            await broker.startup()
            await taskiq_app.noop.kiq()
            await self._wait_done(client, broker.queue_name, broker.consumer_group_name, 1, timeout_s=120)
            await self._wait_listeners(client, timeout_s=60)
        except BaseException:
            services.stop()
            await broker.shutdown()
            await client.aclose()
            raise
        return client, taskiq_app, services

    @staticmethod
    async def _wait_done(client: Any, stream: str, group: str, total: int, timeout_s: float) -> None:
        """Until the group has read `total` messages and none is pending (all acknowledged after running)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for info in await client.xinfo_groups(stream):
                if info["name"].decode() == group and (info.get("entries-read") or 0) >= total and info["pending"] == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"taskiq: not all of {total} tasks acknowledged in {timeout_s} s")
            await asyncio.sleep(0.01)

    @staticmethod
    async def _wait_listeners(client: Any, timeout_s: float) -> None:
        """Until every worker process waits on the stream (one connection blocked in XREADGROUP each)."""
        deadline = time.monotonic() + timeout_s
        while sum(1 for c in await client.client_list() if c.get("cmd") == "xreadgroup") < TASKIQ_WORKER_PROCESSES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"taskiq: fewer than {TASKIQ_WORKER_PROCESSES} worker processes listen after {timeout_s} s")
            await asyncio.sleep(0.05)

    async def _close(self, client: Any, taskiq_app: Any, services: Services) -> None:
        services.stop()
        await taskiq_app.broker.shutdown()
        await client.aclose()

    async def throughput(self, jobs: int, window: int) -> tuple[float, dict[str, float | None]]:
        client, taskiq_app, services = await self._start(None)
        try:
            broker = taskiq_app.broker
            meter = CpuMeter(services.leaders, self.redis.proc.pid)
            meter.start()
            started = time.perf_counter()
            await enqueue_windows(jobs, window, lambda i: taskiq_app.noop.kiq())
            await self._wait_done(client, broker.queue_name, broker.consumer_group_name, jobs + 1, timeout_s=600)
            return jobs / (time.perf_counter() - started), meter.stop()
        finally:
            await self._close(client, taskiq_app, services)

    async def latency(self, rate: int, seconds: float, stamp_file: Path) -> tuple[list[float], dict[str, float | None]]:
        client, taskiq_app, services = await self._start(stamp_file)
        try:
            meter = CpuMeter(services.leaders, self.redis.proc.pid)
            meter.start()
            total = await steady(rate, seconds, taskiq_app.stamp.kiq)
            spent = meter.stop()
            return await wait_for_stamps(stamp_file, total, timeout_s=300), spent
        finally:
            await self._close(client, taskiq_app, services)


# -- the run ----------------------------------------------------------------------------------------

def fmt(values: list[float], digits: int = 0) -> str:
    return " / ".join(f"{v:,.{digits}f}" for v in values)


async def run(options: argparse.Namespace, bootstrap: str, kafka_pid: int | None, redis: Redis, logs: Path) -> int:
    sides = [EventjobsSide(bootstrap, logs, kafka_pid), TaskiqSide(redis, logs)]
    cpu: dict[str, list[dict[str, float | None]]] = {side.name: [] for side in sides}
    steady_cpu: dict[str, list[dict[str, float | None]]] = {side.name: [] for side in sides}
    tput: dict[str, list[float]] = {side.name: [] for side in sides}
    p50: dict[str, list[float]] = {side.name: [] for side in sides}
    p99: dict[str, list[float]] = {side.name: [] for side in sides}
    for r in range(options.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            jobs_per_s, spent = await side.throughput(options.jobs, options.window)
            tput[side.name].append(jobs_per_s)
            cpu[side.name].append(spent)
            print(f"round {r + 1}: {side.name:<9} throughput {jobs_per_s:,.0f} jobs/s; CPU seconds per 1,000 jobs: "
                  + ", ".join(f"{part} {'?' if v is None else f'{v * 1000 / options.jobs:.2f}'}"
                              for part, v in spent.items()), flush=True)
        for side in order:
            waits, spent = await side.latency(options.rate, options.seconds, logs / f"stamps-{side.name}-{r + 1}.txt")
            steady_cpu[side.name].append(spent)
            p50[side.name].append(pct(waits, 50))
            p99[side.name].append(pct(waits, 99))
            print(f"round {r + 1}: {side.name:<9} enqueue->start at {options.rate}/s: p50 {pct(waits, 50):.1f} ms, "
                  f"p99 {pct(waits, 99):.1f} ms, max {max(waits):.1f} ms; CPU over the steady {options.seconds:g} s, "
                  f"cores: " + ", ".join(f"{part} {'?' if v is None else f'{v / options.seconds:.2f}'}"
                                         for part, v in spent.items()), flush=True)
    print(f"load average at the end (1 / 5 / 15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    med = {name: statistics.median(values) for name, values in tput.items()}
    ratio = med["eventjobs"] / med["taskiq"]
    p50_ej = statistics.median(p50["eventjobs"])
    print()
    print(f"| {options.rounds} rounds, alternating | eventjobs | taskiq |")
    print("|---|---|---|")
    print(f"| throughput, {options.jobs:,} no-op jobs enqueued and awaited, jobs/s (runs) | "
          f"{fmt(tput['eventjobs'])} | {fmt(tput['taskiq'])} |")
    print(f"| throughput, median | **{med['eventjobs']:,.0f}** | **{med['taskiq']:,.0f}** |")
    for name, values in (("p50", p50), ("p99", p99)):
        print(f"| enqueue → start at {options.rate} jobs/s, {name} ms (runs) | {fmt(values['eventjobs'], 1)} | "
              f"{fmt(values['taskiq'], 1)} |")
        print(f"| enqueue → start {name}, median | **{statistics.median(values['eventjobs']):.1f} ms** | "
              f"**{statistics.median(values['taskiq']):.1f} ms** |")
    for part, what in (("services", "processor + worker / taskiq worker (2 processes)"),
                       ("broker", "broker: Kafka / Redis"), ("client", "the enqueuing and awaiting client")):
        values = {name: [c[part] for c in runs] for name, runs in cpu.items()}
        cells = ["?" if any(v is None for v in vs) else f"{statistics.median(vs) * 1000 / options.jobs:.2f}"
                 for vs in values.values()]
        print(f"| CPU seconds per 1,000 jobs (throughput runs, median), {what} | {cells[0]} | {cells[1]} |")
    for part, what in (("services", "services"), ("broker", "broker"), ("client", "client")):
        values = {name: [c[part] for c in runs] for name, runs in steady_cpu.items()}
        cells = ["?" if any(v is None for v in vs) else f"{statistics.median(vs) / options.seconds:.2f}"
                 for vs in values.values()]
        print(f"| cores busy at {options.rate} jobs/s (latency runs, median), {what} | {cells[0]} | {cells[1]} |")
    print()
    print(f"ratio of the throughput medians, eventjobs / taskiq: {ratio:.2f} (aim >= 2): "
          f"{'reached' if ratio >= 2 else 'not reached'}")
    print(f"eventjobs enqueue -> start p50 at {options.rate} jobs/s, median of rounds: {p50_ej:.1f} ms (aim <= 8 ms): "
          f"{'reached' if p50_ej <= 8 else 'not reached'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000, help="no-op jobs per throughput run")
    parser.add_argument("--window", type=int, default=100, help="enqueue calls gathered at once (both systems)")
    parser.add_argument("--rate", type=int, default=500, help="jobs/s of the latency runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each latency run")
    options = parser.parse_args()
    for name in ("rounds", "jobs", "window", "rate"):
        if getattr(options, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(options, name)}")
    if options.seconds <= 0:
        parser.error(f"--seconds must be positive, got {options.seconds}")
    # leadership moves on the fresh topics of each namespace make aiokafka warn and retry
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    missing = missing_setup()
    if missing:
        print("bench_vs_taskiq needs " + SETUP + ":\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    print("command: " + shlex.join([python, *sys.argv]))
    for line in machine_info(bootstrap is not None):
        print(line)
    logs = Path(tempfile.mkdtemp(prefix="eventjobs-vs-taskiq-"))
    broker = None
    redis = Redis(logs / "redis")
    try:
        kafka_pid = None
        if not bootstrap:
            broker = LocalKafka(home=logs / "kafka", port=free_port(), controller_port=free_port())
            status = broker.up()
            bootstrap, kafka_pid = status.bootstrap, status.pid
        print(f"Kafka at {bootstrap}, Redis at {redis.url}; logs in {logs}", flush=True)
        return asyncio.run(run(options, bootstrap, kafka_pid, redis, logs))
    finally:
        redis.stop()
        if broker is not None:
            broker.down()
            shutil.rmtree(broker.data_dir, ignore_errors=True)  # its logs stay with the services' logs


if __name__ == "__main__":
    sys.exit(main())
