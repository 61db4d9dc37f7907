"""Processor memory and restore time with and without the retention of finished jobs.

    .venv/bin/python benchmarks/bench_retention.py [--completed 1000000] [--live 10000] [--runs 3]
        [--scenarios abcd] [--collector on|off]

(The default run takes about 7.5 minutes on the project's 2-core machine; `--completed 100000
--runs 1` is under a minute. `--collector off` disables CPython's cyclic gc in the measuring
process, a diagnostic of how much of the restore is the collector.)

One processor restoring its job-state table from the changelog (`<ns>.job-state`), in scenarios
side by side, each in its own namespace (a topic created from topics/job-state.yaml):

  a  no retention (the code before `retain_completed`): the changelog holds every job ever run,
     `--completed` completed states + `--live` live (pending / running / retrying) states;
  b  retention, before the broker compacted: the completed states, then a tombstone for each
     (what the processor writes when `retention_passed` forgets a job), then the live states;
  c  retention after compaction: the live states only;
  d  after compaction while the tombstones are still kept (Kafka keeps a tombstone for the
     topic's `delete.retention.ms`, 24 h by default, after the cleaner has removed what it
     deletes): `--completed` tombstones, then the live states.

Each measurement runs in a fresh child process: it reads every partition of the changelog with
`LifecycleProcessor._restore` (the code path a processor takes over a partition with: committed
records via `read_to_end`, `decode_state`, tombstones pop), one partition after the other as
`_take` does, and reports the wall time, the process CPU time, VmRSS before (after imports) and
after the restore, the peak (VmHWM), and VmRSS after `malloc_trim(0)` (what of the after-restore
RSS is free memory the C allocator had kept). Scenarios alternate within each run; the table shows
the median of `--runs` runs.

The states are realistic `JobState`s: each template is a job's life folded with the core's
command builders and `apply` (enqueue, claim, start, progress, success; a retry after a failure;
pending, running and retrying jobs for the live ones), encoded once with `encode_state`; every job
gets its own job id and event ids (the last 12 hex digits of each id in the template replaced),
keyed and partitioned as the processor writes them (murmur2 of the job id). They are produced in
1 MiB batches without compression (as the processor's producer does), without transactions (so
the changelog has no transaction markers; a real one has one per commit and lane).

Compaction is held off on the benchmark's topics (`min.compaction.lag.ms`, see `HOLD_COMPACTION`):
with the dev broker's 64 MiB segments the log cleaner would otherwise compact scenario b while it
is being measured, and rewrite a's segments (broker CPU) in the middle of the runs. The restore
counts the records it read, so the table shows that each changelog was read as written.

The broker is KAFKA_BOOTSTRAP_SERVERS, or a local one started for the run (and removed after).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import inspect
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The measuring children import `eventjobs` from a copy taken when the run starts (CODE_COPY), so
# every run measures the same code even while the working tree is being edited.
CODE_COPY = "EVENTJOBS_BENCH_CODE"
if os.environ.get(CODE_COPY):
    sys.path.insert(0, os.environ[CODE_COPY])

import numpy as np  # noqa: E402  (installed with chdb, a dependency of eventjobs)
from aiokafka.admin import NewTopic  # noqa: E402

from benchmarks.bench_throughput import machine_info as base_machine_info  # noqa: E402
from eventjobs.testing import commands  # noqa: E402
from eventjobs.core.events import JobEvent  # noqa: E402
from eventjobs.core.fold import apply  # noqa: E402
from eventjobs.core.options import JobOptions  # noqa: E402
from eventjobs.core.outcome import attempt_failed_event, attempt_succeeded_event  # noqa: E402
from eventjobs.core.state import JobState, JobStatus, encode_state  # noqa: E402
from eventjobs.dev.broker import POM, LocalKafka, free_port  # noqa: E402
from eventjobs.kafka.admin import effective_configs, wait_for_topics  # noqa: E402
from eventjobs.kafka.clients import admin_client, key_partition, producer  # noqa: E402
from eventjobs.kafka.topics import TopicNames, load_specs  # noqa: E402
from eventjobs.settings import Settings  # noqa: E402

TOPICS_DIR = ROOT / "topics"
HOLD_COMPACTION = {"min.compaction.lag.ms": str(7 * 24 * 3600 * 1000)}
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MARK = b"\x01" * 12  # stands for a job's 12-hex-digit suffix in a template (never in orjson output)

SCENARIOS = {
    "a": "no retention: completed + live states",
    "b": "retention, not compacted: completed states, their tombstones, live states",
    "c": "retention, compacted: live states only",
    "d": "compacted, tombstones still kept (delete.retention.ms): tombstones + live states",
}


# -- realistic job states --------------------------------------------------------------------------------
def _step(state: JobState | None, event: JobEvent) -> JobState:
    decision = apply(state, event)
    assert decision.accepted and decision.state is not None, (event.type, decision.rejected)
    return decision.state


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _run(state: JobState, start: float, *, worker: str, progress: bool = False) -> JobState:
    state = _step(state, commands.claim(state, worker_id=worker, now=_at(start), actor=worker))
    state = _step(state, commands.attempt_started(state, now=_at(start + 0.01), actor=worker))
    if progress:
        state = _step(state, commands.heartbeat(state, now=_at(start + 10), actor=worker))
        state = _step(state, commands.progress(state, 60.0, "rendered 12 of 20 pages", now=_at(start + 11), actor=worker))
    return state


def _succeed(state: JobState, at: float, result: dict) -> JobState:
    assert state.worker_id is not None
    return _step(state, attempt_succeeded_event(state.job_id, state.attempt, result, occurred_at=_at(at),
                                                actor=state.worker_id, claim_id=state.claim_id))


def _fail(state: JobState, at: float) -> JobState:
    assert state.worker_id is not None
    traceback = ('Traceback (most recent call last):\n  File "/app/jobs/accounts.py", line 88, in sync_account\n'
                 '    response = client.fetch(account_id)\n  File "/app/clients/crm.py", line 41, in fetch\n'
                 '    raise ConnectionError("connection reset by peer")\nConnectionError: connection reset by peer\n')
    return _step(state, attempt_failed_event(state.job_id, state.attempt, error_type="ConnectionError",
                                             message="connection reset by peer", traceback=traceback, retryable=True,
                                             occurred_at=_at(at), actor=state.worker_id, claim_id=state.claim_id))


def _enqueue(name: str, args: dict, queue: str) -> JobState:
    return _step(None, commands.enqueue(name, args, JobOptions(queue=queue, max_attempts=5), now=T0,
                                        actor="producer:web-3:4127"))


def completed_templates() -> list[tuple[float, JobState]]:
    """(share, final state) of finished jobs: plain success, success after progress, success on a retry."""
    plain = _enqueue("send_email", {"to": "customer-48213@example.com", "template": "order_shipped",
                                    "order_id": 99182733}, "emails")
    plain = _succeed(_run(plain, 0.02, worker="worker-2:311"), 0.4, {"message_id": "<20261120.48213@mail>"})
    report = _enqueue("render_report", {"account_id": 4821, "period": "2026-10", "format": "pdf"}, "reports")
    report = _succeed(_run(report, 0.05, worker="worker-1:288", progress=True), 19.5,
                      {"url": "s3://reports/4821/2026-10.pdf", "pages": 20})
    retried = _enqueue("sync_account", {"account_id": 77310}, "default")
    retried = _fail(_run(retried, 0.03, worker="worker-2:311"), 1.2)
    assert retried.status is JobStatus.RETRYING and retried.next_due_at is not None
    retried = _step(retried, commands.due(retried, now=retried.next_due_at, actor="timers:proc-1:90"))
    retried = _succeed(_run(retried, 3.0, worker="worker-1:288"), 4.1, {"synced": 312})
    return [(0.7, plain), (0.2, report), (0.1, retried)]


def live_templates() -> list[tuple[float, JobState]]:
    """(share, state) of unfinished jobs: pending, running (heartbeat, progress), retrying."""
    pending = _enqueue("send_email", {"to": "customer-51002@example.com", "template": "welcome"}, "emails")
    running = _run(_enqueue("render_report", {"account_id": 913, "period": "2026-11", "format": "pdf"}, "reports"),
                   0.05, worker="worker-1:288", progress=True)
    retrying = _fail(_run(_enqueue("sync_account", {"account_id": 5120}, "default"), 0.03, worker="worker-2:311"), 1.2)
    assert (pending.status, running.status, retrying.status) == (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RETRYING)
    return [(0.5, pending), (0.4, running), (0.1, retrying)]


@dataclass(frozen=True)
class Template:
    job_prefix: bytes  # the first 24 characters of the job id
    value: bytes  # encode_state(...) with the last 12 hex digits of every id replaced by MARK
    original: bytes  # encode_state(...)

    @classmethod
    def of(cls, state: JobState) -> Template:
        encoded = encode_state(state)
        value = UUID.sub(lambda m: m.group(0)[:24] + MARK, encoded)
        return cls(state.job_id.encode()[:24], value, encoded)


def pick(templates: list[tuple[float, Template]], n: int) -> Template:
    """Spread the shares evenly over job numbers (deterministic, interleaved)."""
    slot = (n * 7919) % 1000 / 1000  # a fixed permutation of 1000 slots
    for share, template in templates:
        if slot < share:
            return template
        slot -= share
    return templates[-1][1]


def key_partitions(keys: list[bytes], partitions: int) -> list[int]:
    """`key_partition` (Kafka's murmur2) of many 36-byte keys at once, vectorised with numpy.

    aiokafka's murmur2 is pure Python (about 19 us a key here); this is the same arithmetic on
    uint32 columns, checked against `key_partition` on a sample by the caller.
    """
    if not keys:
        return []
    m = np.uint32(0x5BD1E995)
    words = np.frombuffer(b"".join(keys), dtype="<u4").reshape(len(keys), 9)
    h = np.full(len(keys), 0x9747B28C ^ 36, dtype=np.uint32)
    with np.errstate(over="ignore"):
        for i in range(9):
            k = words[:, i] * m
            k ^= k >> np.uint32(24)
            k *= m
            h *= m
            h ^= k
        h ^= h >> np.uint32(13)
        h *= m
        h ^= h >> np.uint32(15)
    return ((h & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).tolist()


class Jobs:
    """Keys, partitions and encoded states of `completed` finished jobs followed by `live` live ones."""

    def __init__(self, completed: int, live: int, partitions: int) -> None:
        self.completed, self.live = completed, live
        self.done = [(share, Template.of(state)) for share, state in completed_templates()]
        self.open = [(share, Template.of(state)) for share, state in live_templates()]
        prefixes = [m[:24] for _, t in self.done + self.open for m in set(UUID.findall(t.original))]
        assert len(set(prefixes)) == len(prefixes), "two ids of the templates share a prefix: run again"
        self.state_bytes = {"completed": statistics.mean(len(t.value) for _, t in self.done),
                            "live": statistics.mean(len(t.value) for _, t in self.open)}
        started = time.perf_counter()
        # the job id of job n is its template's job prefix + n in 12 hex digits; its partition is
        # murmur2 of the id (what a keyed send does), computed once for every scenario
        keys = [self.key(n) for n in range(completed + live)]
        self.partition = key_partitions(keys, partitions)
        sample = range(0, len(keys), max(1, len(keys) // 1000))
        assert all(self.partition[n] == key_partition(keys[n], partitions) for n in sample)
        self.keyed_s = time.perf_counter() - started

    def template(self, n: int) -> Template:
        return pick(self.done, n) if n < self.completed else pick(self.open, n)

    def key(self, n: int) -> bytes:
        return self.template(n).job_prefix + b"%012x" % n

    def states(self, first: int, stop: int) -> Iterator[tuple[int, bytes, bytes | None]]:
        for n in range(first, stop):
            template = self.template(n)
            suffix = b"%012x" % n
            yield self.partition[n], template.job_prefix + suffix, template.value.replace(MARK, suffix)

    def tombstones(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        for n in range(self.completed):
            yield self.partition[n], self.key(n), None

    def changelog(self, scenario: str) -> Iterator[tuple[int, bytes, bytes | None]]:
        c = self.completed
        if scenario in ("a", "b"):
            yield from self.states(0, c)
        if scenario in ("b", "d"):
            yield from self.tombstones()
        yield from self.states(c, c + self.live)

    def expected(self, scenario: str) -> dict[str, int]:
        c, live = self.completed, self.live
        states = {"a": c + live, "b": c + live, "c": live, "d": live}[scenario]
        tombstones = c if scenario in ("b", "d") else 0
        return {"records": states + tombstones, "tombstones": tombstones, "jobs": c + live if scenario == "a" else live}


# -- the broker side --------------------------------------------------------------------------------------
def bench_settings(bootstrap: str, namespace: str) -> Settings:
    return Settings(kafka_bootstrap=bootstrap, namespace=namespace, topics_dir=TOPICS_DIR)


def job_state_spec(settings: Settings):
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    return names.job_state, next(spec for name, spec in names.planned(["default"]) if name == names.job_state)


async def create_changelog(settings: Settings) -> tuple[str, int]:
    """The namespace's job-state topic, as `apply_topics` creates it, plus HOLD_COMPACTION."""
    name, spec = job_state_spec(settings)
    admin = admin_client(settings)
    await admin.start()
    try:
        brokers = max(1, len((await admin.describe_cluster()).get("brokers", [])))
        replication = min(spec.replication_factor, brokers)
        configs = {**effective_configs(spec, replication), **HOLD_COMPACTION}
        response = await admin.create_topics([NewTopic(name, spec.partitions, replication, topic_configs=configs)])
        for topic, code, *rest in response.topic_errors:
            if code:
                raise RuntimeError(f"creating {topic}: error {code} {rest}")
        await wait_for_topics(admin, [name])
    finally:
        await admin.close()
    return name, spec.partitions


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = admin_client(bench_settings(bootstrap, "cleanup"))
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def write(settings: Settings, topic: str, records: Iterator[tuple[int, bytes, bytes | None]]) -> tuple[int, int, float]:
    """Produce (partition, key, value) records in full 1 MiB batches per partition; (records, bytes, seconds)."""
    client = producer(settings, linger_ms=5, compression_type=None)
    await client.start()
    started = time.perf_counter()
    batches: dict[int, object] = {}
    futures: list[asyncio.Future] = []
    count = size = 0
    try:
        for partition, key, value in records:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = client.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                futures.append(await client.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = client.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise RuntimeError("a record larger than a batch")
            count += 1
            size += len(key) + (len(value) if value is not None else 0)
            if len(futures) > 64:
                await asyncio.gather(*futures)
                futures.clear()
        for partition, batch in batches.items():
            batch.close()
            futures.append(await client.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await client.stop()
    return count, size, time.perf_counter() - started


# -- the measured child process ---------------------------------------------------------------------------
def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


async def child(bootstrap: str, namespace: str, collector: str) -> None:
    from eventjobs.runtime import processor as processor_module
    from eventjobs.runtime.processor import LifecycleProcessor

    settings = bench_settings(bootstrap, namespace)
    processor = LifecycleProcessor(settings)
    _, spec = job_state_spec(settings)
    read = {"records": 0, "tombstones": 0}
    original = processor_module.read_to_end

    async def counted(*args, **kwargs):  # the same reader, counting what it yields
        async for record in original(*args, **kwargs):
            read["records"] += 1
            if record.value is None:
                read["tombstones"] += 1
            yield record

    processor_module.read_to_end = counted
    gc.collect()
    if collector == "off":  # diagnostic only: the processor restores with the collector running
        gc.disable()
    baseline = _status("VmRSS")
    cpu = time.process_time()
    started = time.perf_counter()
    # `_restore(partition, txn)`: the lane's transactional producer is only used to quarantine
    # undecodable records, and there are none here (every job is counted below)
    extra = (None,) if len(inspect.signature(processor._restore).parameters) > 1 else ()
    tables = {}
    for partition in range(spec.partitions):  # one after the other, as `_take` restores its partitions
        tables[partition] = await processor._restore(partition, *extra)
    restore_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu
    after = _status("VmRSS")
    peak = _status("VmHWM")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = _status("VmRSS")
    print(json.dumps({"restore_s": restore_s, "cpu_s": cpu_s, "jobs": sum(map(len, tables.values())),
                      "baseline_mb": baseline, "after_mb": after, "peak_mb": peak, "trimmed_mb": trimmed,
                      **read}), flush=True)


def measure(bootstrap: str, namespace: str, collector: str, code: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", bootstrap, namespace, "--collector", collector],
                         capture_output=True, text=True, cwd=ROOT, timeout=1800, env={**os.environ, CODE_COPY: str(code)})
    if out.returncode != 0:
        raise RuntimeError(f"restore child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- main -------------------------------------------------------------------------------------------------
def kafka_version() -> str:
    found = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    return found.group(1) if found else "?"


def code_version() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "eventjobs")
    return f"commit {git('rev-parse', '--short', 'HEAD') or '?'}" + (" + uncommitted changes in eventjobs/" if dirty else "")


def memory_gib() -> str:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, available = (int(info[k].split()[0]) / 1024 / 1024 for k in ("MemTotal", "MemAvailable"))
    return f"{total:.1f} GiB RAM ({available:.1f} GiB available)"


def fmt_runs(values: list[float], spec: str) -> str:
    return f"{statistics.median(values):{spec}} ({' / '.join(f'{v:{spec}}' for v in values)})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completed", type=int, default=1_000_000, help="finished jobs (default 1,000,000)")
    parser.add_argument("--live", type=int, default=10_000, help="pending/running/retrying jobs (default 10,000)")
    parser.add_argument("--runs", type=int, default=3, help="restores per scenario; the table shows medians")
    parser.add_argument("--scenarios", default="abcd", help="which of a, b, c, d (default all)")
    parser.add_argument("--collector", choices=("on", "off"), default="on",
                        help="off: restore with CPython's cyclic gc disabled (a diagnostic; the processor runs with it on)")
    parser.add_argument("--child", nargs=2, metavar=("BOOTSTRAP", "NAMESPACE"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        await child(*options.child, options.collector)
        return
    scenarios = [s for s in "abcd" if s in options.scenarios]
    began = time.perf_counter()
    print(f"machine: {base_machine_info()}, {memory_gib()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    code = Path(tempfile.mkdtemp(prefix="eventjobs-bench-retention-code-"))
    shutil.copytree(ROOT / "eventjobs", code / "eventjobs", ignore=shutil.ignore_patterns("__pycache__"))
    print(f"code: {code_version()} (copied to {code} for the measuring processes)", flush=True)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = work = None
    if not bootstrap:
        work = Path(tempfile.mkdtemp(prefix="eventjobs-bench-retention-"))
        broker = LocalKafka(home=work / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
        bootstrap = broker.up().bootstrap
        print(f"broker: Kafka {kafka_version()}, one local KRaft broker (1 GiB heap) at {bootstrap}", flush=True)
    else:
        print(f"broker: {bootstrap} (KAFKA_BOOTSTRAP_SERVERS)", flush=True)
    topics: list[str] = []
    try:
        run_id = uuid.uuid4().hex[:6]
        namespaces = {s: f"retbench{run_id}{s}" for s in scenarios}
        partitions = job_state_spec(bench_settings(bootstrap, "x"))[1].partitions
        jobs = Jobs(options.completed, options.live, partitions)
        print(f"jobs: {options.completed:,} completed + {options.live:,} live; encoded state "
              f"{jobs.state_bytes['completed']:.0f} B (completed, mean of templates) / "
              f"{jobs.state_bytes['live']:.0f} B (live); keys partitioned in {jobs.keyed_s:.1f} s", flush=True)
        for s in scenarios:
            settings = bench_settings(bootstrap, namespaces[s])
            topic, _ = await create_changelog(settings)
            topics.append(topic)
            count, size, seconds = await write(settings, topic, jobs.changelog(s))
            print(f"({s}) wrote {count:,} records ({size / 1e6:,.0f} MB) to {topic} in {seconds:.1f} s "
                  f"({count / seconds:,.0f} records/s)", flush=True)
        results: dict[str, list[dict]] = {s: [] for s in scenarios}
        for run in range(options.runs):
            order = scenarios[run % len(scenarios):] + scenarios[:run % len(scenarios)]
            for s in order:
                result = measure(bootstrap, namespaces[s], options.collector, code)
                want = jobs.expected(s)
                got = {k: result[k] for k in want}
                if got != want:
                    raise RuntimeError(f"scenario {s}: read {got}, expected {want}")
                results[s].append(result)
                print(f"run {run + 1} ({s}): restore {result['restore_s']:.1f} s (CPU {result['cpu_s']:.1f} s), "
                      f"{result['jobs']:,} jobs, RSS {result['baseline_mb']:.0f} -> {result['after_mb']:.0f} MB, "
                      f"peak {result['peak_mb']:.0f} MB, after malloc_trim {result['trimmed_mb']:.0f} MB", flush=True)
        print(f"\nload average {os.getloadavg()[0]:.2f}; total {time.perf_counter() - began:.0f} s")
        print(f"\n{options.completed:,} completed + {options.live:,} live jobs; median of {options.runs} "
              f"run(s), each in a fresh process (runs in brackets); cyclic gc {options.collector}\n")
        print("| scenario | changelog records (tombstones) | jobs in the table | restore s | restore CPU s "
              "| RSS growth MB | peak RSS MB | RSS after malloc_trim MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in scenarios:
            runs = results[s]
            first = runs[0]
            growth = [r["after_mb"] - r["baseline_mb"] for r in runs]
            print(f"| ({s}) {SCENARIOS[s]} | {first['records']:,} ({first['tombstones']:,}) | {first['jobs']:,} "
                  f"| {fmt_runs([r['restore_s'] for r in runs], '.1f')} | {statistics.median(r['cpu_s'] for r in runs):.1f} "
                  f"| {fmt_runs(growth, ',.0f')} | {statistics.median(r['peak_mb'] for r in runs):,.0f} "
                  f"| {statistics.median(r['trimmed_mb'] for r in runs):,.0f} |")
        print(f"\nRSS before the restore (process with imports): "
              f"{statistics.median(r['baseline_mb'] for s in scenarios for r in results[s]):.0f} MB")
        for s in scenarios:
            per_record = statistics.median(r["restore_s"] * 1e6 / r["records"] for r in results[s])
            line = f"({s}) restore {per_record:.1f} us per changelog record"
            if s in "ac":  # no tombstones: the growth is the table's
                per_job = statistics.median((r["after_mb"] - r["baseline_mb"]) * 1024 / r["jobs"] for r in results[s])
                line += f"; RSS growth per job in the table {per_job:.1f} KiB"
            print(line)
    finally:
        shutil.rmtree(code, ignore_errors=True)
        if broker is not None:
            broker.down()
            shutil.rmtree(work, ignore_errors=True)
        elif topics:
            await delete_topics(bootstrap, topics)


if __name__ == "__main__":
    asyncio.run(main())
