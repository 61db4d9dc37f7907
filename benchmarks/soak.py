"""Soak: many jobs through the whole pipeline while services are SIGKILLed, then check the invariants.

    .venv/bin/python benchmarks/soak.py [--jobs 100000] [--kill-every 8] [--seed 1]
    .venv/bin/python benchmarks/soak.py --brokers 3 --kill-broker alternate [--broker-down 20] [--broker-kill-every 60]

Three workers and two processors run as subprocesses (the app is `tests/support/fault_app.py`);
every few seconds (`--kill-every`, jittered) a random one of them is SIGKILLed and started again
at once. Meanwhile `--jobs` jobs are enqueued (at most `--in-flight` unfinished at a time):
10 % fail once and are retried, 1 % always fail (dead-lettered after 3 attempts), 5 % are delayed
by 1-20 s, 5 % sleep 0.2-2 s (so kills land mid-job), and 2 % are enqueued a second time with the
same idempotency key. Beside them, `--dependents` of the jobs (4 %) are `merge` jobs that depend on
one to three earlier jobs (half of them run whatever became of those, `on_dependency_failure="run"`;
half are cancelled by a failed one), and `--schedules` schedules (4) fire a job every
`--schedule-every` seconds (2) with `catch_up="all"` for as long as the load runs. Every handler
run is appended to a side-channel file (one line per run).

When every job has ended (or `--deadline` passed), the killing stops, the services are stopped
with SIGTERM, and the run is checked against the event log, the source of truth:

  lost jobs                   acknowledged jobs that did not end (completed / dead-lettered / cancelled by a
                              dependency) (must be 0)
  jobs in a wrong state       jobs that ended otherwise than planned, or after fewer attempts (must be 0); a
                              dependent cancelled because a dependency ended dead-lettered by kills is not wrong
  schedule ticks              every tick of every schedule, from its first fired to its last, enqueued exactly
                              one job, and each of those jobs completed (gaps and unended jobs must be 0)
  duplicated transitions      a derived event (retry_scheduled, completed, dead_lettered, ...) committed
                              twice for the same job and attempt (must be 0)
  changelog = fold of log     the processors' job-state changelog equals the fold of the log
                              (`eventjobs replay --state`'s check, runtime/state_check.compare_state)
  projections = fold of log   the projector, run into chdb up to the end of the log: job_events holds every
                              record once, jobs / dead_letters / metric counts equal the fold
  handler never ran           jobs that ended although no handler ever ran for them (must be 0)
  extra executions            handler runs beyond one per started attempt (at-least-once: reported, allowed)

It prints those with the job and event counts, the kills, the wall time and the command, and
exits 1 if an invariant fails. The broker is KAFKA_BOOTSTRAP_SERVERS, or a local one started for
the run (`eventjobs.dev.broker.LocalKafka`, its data in the run directory).

With `--brokers 3` the run starts its own three-broker cluster (`eventjobs.dev.cluster.LocalCluster`,
as `eventjobs dev up --brokers 3` does; KAFKA_BOOTSTRAP_SERVERS must be unset) and, with
`--kill-broker leader | controller | alternate`, SIGKILLs a broker every `--broker-kill-every`
seconds: the one leading most partitions of the event log (not the active controller), the
active controller, or the two in turn. The broker stays down `--broker-down` seconds (20), is
started again on its ports and data, and the run waits until it is back in the ISR of every
partition it replicates before the next broker kill; each kill is printed with those times.
`--kill-every 0` leaves the services alone, so that broker kills are the only fault.
Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import logging
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eventjobs.clickhouse.chdb_backend import ChdbBackend  # noqa: E402
from eventjobs.core.codec import EventDecodeError, decode  # noqa: E402
from eventjobs.core.events import DERIVED_TYPES, JobEvent  # noqa: E402
from eventjobs.core.fold import apply  # noqa: E402
from eventjobs.core.state import JobState, JobStatus  # noqa: E402
from eventjobs.dev.broker import LocalKafka, free_port  # noqa: E402
from eventjobs.dev.cluster import LocalCluster, free_ports  # noqa: E402
from eventjobs.kafka.admin import apply_topics  # noqa: E402
from eventjobs.kafka.clients import consumer, partitions_of, read_to_end  # noqa: E402
from eventjobs.kafka.topics import TopicNames, load_specs  # noqa: E402
from eventjobs.readside.migrations import apply_migrations, default_projections_dir  # noqa: E402
from eventjobs.readside.projector import Projector, ProjectorOptions  # noqa: E402
from eventjobs.runtime.state_check import compare_state  # noqa: E402
from eventjobs.settings import Settings  # noqa: E402
from tests.support.cluster import INTERNAL_TOPICS, busiest_leader, wait_in_sync  # noqa: E402
from eventjobs.app import App  # noqa: E402
from tests.support.fault_app import EXECUTIONS_ENV, build_app, read_executions  # noqa: E402

APP = "tests.support.fault_app:app"
TERMINAL = (b'"status":"completed"', b'"status":"dead_lettered"', b'"status":"cancelled"')
CHUNK = 500  # enqueue events appended (and acknowledged) together
SCHEDULE_PREFIX = "soak-tick-"  # the soak's schedules: soak-tick-0, soak-tick-1, ...
SCHEDULED_MARK = f'"idempotency_key":"{SCHEDULE_PREFIX}'.encode()  # in the changelog state of their jobs
# metric columns of job_metrics_1m and the event type each counts (accepted events, plus the first
# echo of each derived event), as tests/readside/test_projector.py checks them
METRICS = {"enqueued": "enqueued", "attempt_started": "started", "completed": "completed", "failed": "failed",
           "retry_scheduled": "retried", "dead_lettered": "dead_lettered", "cancelled": "cancelled"}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the services and the killer -------------------------------------------------------------------


@dataclass
class Service:
    role: str
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0


class Fleet:
    """The worker and processor subprocesses; `kill_one` SIGKILLs a random one and starts it again."""

    def __init__(self, settings: Settings, run_dir: Path, workers: int, processors: int, rng: random.Random) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.executions = run_dir / "executions"
        self.executions.mkdir(parents=True, exist_ok=True)
        self.rng = rng
        self.kills: Counter[str] = Counter()
        self.unexpected_exits: list[str] = []
        self.services = [Service("processor", f"processor-{i}", ["processor", "--app", APP]) for i in range(processors)]
        self.services += [Service("worker", f"worker-{i}", ["worker", "--app", APP, "--worker-id", f"worker-{i}",
                                                            "--concurrency", "20", "--lease", "5s"])
                          for i in range(workers)]

    def _start(self, service: Service) -> None:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap,
               "EVENTJOBS_NAMESPACE": self.settings.namespace, EXECUTIONS_ENV: str(self.executions),
               "FAULT_WORKER_NAME": service.name, "PYTHONPATH": str(ROOT)}
        log = open(self.run_dir / f"{service.name}.log", "ab")
        service.process = subprocess.Popen([sys.executable, "-m", "eventjobs.cli", *service.args], cwd=ROOT, env=env,
                                           stdout=log, stderr=subprocess.STDOUT)
        service.starts += 1

    def start_all(self) -> None:
        for service in self.services:
            self._start(service)

    def kill_one(self) -> Service:
        service = self.rng.choice(self.services)
        assert service.process is not None
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGKILL)
            service.process.wait()
            self.kills[service.role] += 1
        self._start(service)
        return service

    def restart_exited(self) -> None:
        """A service that exited by itself is a finding (logged, counted) and is started again."""
        for service in self.services:
            if service.process is not None and service.process.poll() is not None:
                self.unexpected_exits.append(f"{service.name} exited with {service.process.returncode}")
                say(f"{service.name} exited by itself with code {service.process.returncode}; starting it again")
                self._start(service)

    def stop_all(self, timeout_s: float = 60) -> list[str]:
        """SIGTERM everything; returns the services that did not exit with 0."""
        for service in self.services:
            if service.process is not None and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        unclean = []
        for service in self.services:
            if service.process is None:
                continue
            try:
                code = service.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                service.process.kill()
                code = service.process.wait()
            if code != 0:
                unclean.append(f"{service.name}: {code}")
        return unclean


@dataclass
class BrokerKill:
    node: int
    role: str  # "leader" (of the most event-log partitions) or "controller" (the active one)
    down_s: float
    answered_s: float  # from its restart until it answered a metadata request
    in_sync_s: float  # from its restart until it was in the ISR of every partition it replicates


class BrokerKiller:
    """SIGKILLs a broker of the run's own cluster now and then, keeps it down, starts it again and
    waits until it caught up (back in the ISR of every partition it replicates)."""

    def __init__(self, cluster: LocalCluster, settings: Settings, mode: str, down_s: float) -> None:
        self.cluster = cluster
        self.settings = settings
        self.mode = mode
        self.down_s = down_s
        self.kills: list[BrokerKill] = []

    async def kill_one(self) -> BrokerKill:
        role = self.mode if self.mode != "alternate" else ("leader", "controller")[len(self.kills) % 2]
        names = TopicNames(self.settings.namespace, load_specs(self.settings.topics_dir))
        controller = await asyncio.to_thread(self.cluster.active_controller, 300)  # a JVM tool: slow on a busy machine
        node = controller if role == "controller" else (await busiest_leader(self.settings, names.events,
                                                                             besides=controller))[0]
        await asyncio.to_thread(self.cluster.kill, node)
        killed = time.monotonic()
        say(f"SIGKILL broker {node} ({'the active controller' if role == 'controller' else 'leader of event-log partitions'}); "
            f"down for {self.down_s:g} s")
        await asyncio.sleep(self.down_s)
        restarted = time.monotonic()
        await asyncio.to_thread(self.cluster.restart, node)
        answered = time.monotonic() - restarted
        topics = [name for name, _ in names.planned(["default"])] + list(INTERNAL_TOPICS)
        in_sync = answered + await wait_in_sync(self.settings, node, topics, timeout_s=300)
        kill = BrokerKill(node, role, restarted - killed, answered, in_sync)
        self.kills.append(kill)
        say(f"broker {node} is back: answered {answered:.1f} s after its restart, in the ISR of every partition it "
            f"replicates after {in_sync:.1f} s")
        return kill


# -- the load --------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Every job to enqueue, with how it must end."""

    events: list[JobEvent] = field(default_factory=list)  # in enqueue order, duplicates included
    expected: dict[str, tuple[JobStatus, int]] = field(default_factory=dict)  # job id -> (status, attempt)
    duplicates: int = 0
    delayed: int = 0
    dependents: dict[str, tuple[list[str], str]] = field(default_factory=dict)  # job id -> (dependencies, mode)


def plan_jobs(jobs: int, namespace: str, seed: int, dependents: float = 0.0) -> Plan:
    app = build_app(namespace)
    rng = random.Random(seed)
    plan = Plan()
    later: list[tuple[int, int, JobEvent]] = []  # a heap of duplicates, enqueued a little later
    placed: list[tuple[int, str]] = []  # (position in plan.events, job id) of the jobs planned so far
    for i in range(jobs):
        # a dependent names only jobs appended (and acknowledged) in an earlier chunk: each exists then
        earlier = [job_id for position, job_id in placed[-3 * CHUNK:] if position < len(plan.events) // CHUNK * CHUNK]
        if earlier and rng.random() < dependents:
            _plan_dependent(app, plan, rng, i, rng.sample(earlier, min(len(earlier), rng.randint(1, 3))))
            placed.append((len(plan.events) - 1, plan.events[-1].job_id))
            continue
        args: dict[str, object] = {"i": i}
        options: dict[str, object] = {}
        status, attempt = JobStatus.COMPLETED, 0
        roll = rng.random()
        if roll < 0.01:
            args["always_fail"] = True
            status, attempt = JobStatus.DEAD_LETTERED, 2
        elif roll < 0.11:
            args["fail_times"] = 1
            attempt = 1
        if rng.random() < 0.05:
            options["delay"] = rng.uniform(1, 20)
            plan.delayed += 1
        if rng.random() < 0.05:
            args["sleep"] = round(rng.uniform(0.2, 2.0), 2)
        duplicate = rng.random() < 0.02
        if duplicate:
            options["idempotency_key"] = f"soak-{seed}-{i}"
        event = app._build_enqueue("work", args, **options)
        plan.events.append(event)
        placed.append((len(plan.events) - 1, event.job_id))
        plan.expected[event.job_id] = (status, attempt)
        if duplicate:
            again = app._build_enqueue("work", {**args, "again": True}, **options)
            heapq.heappush(later, (i + rng.randint(50, 2000), i, again))
            plan.duplicates += 1
        while later and later[0][0] <= i:
            plan.events.append(heapq.heappop(later)[2])
    plan.events.extend(event for _, _, event in sorted(later))
    return plan


def _plan_dependent(app: App, plan: Plan, rng: random.Random, i: int, dependencies: list[str]) -> None:
    """A `merge` job waiting for `dependencies`: it completes, unless it is cancelled by one that
    does not complete (half of them; the other half runs whatever became of them)."""
    mode = "run" if rng.random() < 0.5 else "cancel"
    event = app._build_enqueue("merge", {"i": i}, depends_on=dependencies, on_dependency_failure=mode)
    plan.events.append(event)
    failing = any(plan.expected[d][0] is not JobStatus.COMPLETED for d in dependencies)
    plan.expected[event.job_id] = (JobStatus.CANCELLED if mode == "cancel" and failing else JobStatus.COMPLETED, 0)
    plan.dependents[event.job_id] = (dependencies, mode)


class Finished:
    """Follows the job-state changelog: which jobs are in a terminal state now."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.terminal: set[bytes] = set()
        self.scheduled: set[bytes] = set()  # jobs of the soak's schedules
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        topic = TopicNames(self.settings.namespace, load_specs(self.settings.topics_dir)).job_state
        reader = consumer(self.settings, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
        await reader.start()
        try:
            reader.assign(await partitions_of(self.settings, topic))
            while True:
                batch = await reader.getmany(timeout_ms=500, max_records=20_000)
                for records in batch.values():
                    for record in records:
                        if record.key is None:
                            continue
                        if record.value is not None and SCHEDULED_MARK in record.value:
                            self.scheduled.add(record.key)
                        if record.value is not None and any(t in record.value for t in TERMINAL):
                            self.terminal.add(record.key)
                        else:
                            self.terminal.discard(record.key)
        finally:
            await reader.stop()


# -- the checks ------------------------------------------------------------------------------------


@dataclass
class LogFacts:
    records: int = 0
    undecodable: int = 0
    states: dict[str, JobState] = field(default_factory=dict)
    transitions: Counter[tuple[str, str, int | None]] = field(default_factory=Counter)
    derived_ids: Counter[str] = field(default_factory=Counter)
    metric_counts: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)
    leases_lost: Counter[str] = field(default_factory=Counter)  # job id -> accepted lease_expired events
    ticks: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (schedule, tick) -> jobs it created


async def read_log(settings: Settings) -> LogFacts:
    """Fold the whole event log (committed records), keeping only what the checks need."""
    facts = LogFacts()
    seen: set[str] = set()
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    async for record in read_to_end(settings, await partitions_of(settings, names.events), stall_timeout_s=600):
        facts.records += 1
        try:
            event = decode(record.value)
        except EventDecodeError:
            facts.undecodable += 1
            continue
        facts.types[event.type] += 1
        if event.type in DERIVED_TYPES:
            facts.derived_ids[event.event_id] += 1
            if event.type != "duplicate_rejected":
                facts.transitions[(event.job_id, event.type, getattr(event, "attempt", None))] += 1
        decision = apply(facts.states.get(event.job_id), event)
        if decision.accepted and event.type == "lease_expired":
            facts.leases_lost[event.job_id] += 1
        key = getattr(event, "idempotency_key", None)
        if decision.accepted and event.type == "enqueued" and key and key.startswith(SCHEDULE_PREFIX):
            schedule_id, _, tick = key.partition("@")
            facts.ticks.setdefault((schedule_id, tick), []).append(event.job_id)
        if decision.state is not None:
            facts.states[event.job_id] = decision.state
        elif decision.rejected is None:
            facts.states.pop(event.job_id, None)
        first = event.event_id not in seen
        seen.add(event.event_id)
        if decision.accepted or (decision.duplicate and event.type in DERIVED_TYPES and first):
            if event.type in METRICS:
                facts.metric_counts[METRICS[event.type]] += 1
    return facts


async def project_into_chdb(settings: Settings, directory: Path) -> ChdbBackend:
    """Run the projector into a fresh chdb directory up to the current end of the log."""
    backend = ChdbBackend(directory, settings.namespace, role="soak")
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    reader = consumer(settings, group_id=None)
    await reader.start()
    try:
        partitions = await partitions_of(settings, names.events)
        ends = {tp.partition: offset for tp, offset in (await reader.end_offsets(partitions)).items()}
    finally:
        await reader.stop()
    projector = Projector(backend, settings, control=False, stop_at=ends,
                          options=ProjectorOptions(batch_max_events=20_000, batch_max_wait_s=0.2))
    await projector.run(asyncio.Event())
    return backend


def projection_differences(backend: ChdbBackend, facts: LogFacts) -> list[str]:
    problems = []
    rows = backend.query("SELECT job_id, status, attempt, attempts_started FROM jobs FINAL").rows
    projected = {r[0]: (r[1], r[2], r[3]) for r in rows}
    folded = {j: (s.status.value, s.attempt, s.attempts_started) for j, s in facts.states.items()}
    if projected != folded:
        differing = [j for j in folded.keys() | projected.keys() if folded.get(j) != projected.get(j)]
        problems.append(f"jobs: {len(differing)} job(s) differ from the fold, e.g. "
                        f"{[(j, folded.get(j), projected.get(j)) for j in differing[:3]]}")
    count, unique = backend.query("SELECT count(), uniqExact(log_partition, log_offset) FROM job_events").rows[0]
    if (count, unique) != (facts.records, facts.records):
        problems.append(f"job_events: {count} rows, {unique} distinct positions, log has {facts.records} records")
    dead = {r[0] for r in backend.query("SELECT job_id FROM dead_letters FINAL WHERE deleted = 0").rows}
    folded_dead = {j for j, s in facts.states.items() if s.status is JobStatus.DEAD_LETTERED}
    if dead != folded_dead:
        problems.append(f"dead_letters: {len(dead ^ folded_dead)} job(s) differ from the fold")
    columns = sorted(set(METRICS.values()))
    row = backend.query(f"SELECT {', '.join(f'countIfMerge({c})' for c in columns)} FROM job_metrics_1m").rows[0]
    metrics = Counter({c: v for c, v in zip(columns, row) if v})
    if metrics != facts.metric_counts:
        problems.append(f"job_metrics_1m: {dict(metrics)} != the fold's {dict(facts.metric_counts)}")
    return problems


async def wait_for_ticks(settings: Settings, finished: Finished, deadline: float) -> None:
    """After the schedules were deleted: wait until every job their ticks made has ended (a tick
    fired just before the deletion may still be on its way: a quiet spell of 10 s ends the wait)."""
    quiet_since, seen = time.monotonic(), -1
    while time.monotonic() < deadline:
        if len(finished.scheduled) != seen:
            quiet_since, seen = time.monotonic(), len(finished.scheduled)
        if finished.scheduled <= finished.terminal and time.monotonic() - quiet_since > 10:
            return
        await asyncio.sleep(0.5)
    say(f"{len(finished.scheduled - finished.terminal)} scheduled job(s) did not end before the deadline")


def schedule_problems(facts: LogFacts, every_s: float) -> tuple[int, list[str]]:
    """(ticks fired, problems): per schedule, every tick from its first fired to its last must
    have made exactly one job, and each of those jobs must have completed."""
    problems: list[str] = []
    by_schedule: dict[str, list[tuple[datetime, list[str]]]] = {}
    for (schedule_id, tick), jobs in facts.ticks.items():
        by_schedule.setdefault(schedule_id, []).append((datetime.fromisoformat(tick.replace("Z", "+00:00")), jobs))
    for schedule_id, ticks in sorted(by_schedule.items()):
        ticks.sort()
        span = (ticks[-1][0] - ticks[0][0]).total_seconds()
        missing = round(span / every_s) + 1 - len(ticks)
        if missing:
            problems.append(f"{schedule_id}: {missing} tick(s) missing between {ticks[0][0]} and {ticks[-1][0]}")
        for tick, jobs in ticks:
            if len(jobs) != 1:
                problems.append(f"{schedule_id}@{tick}: {len(jobs)} jobs")
            problems += [f"{schedule_id}@{tick}: job {j} is {facts.states[j].status.value if j in facts.states else 'gone'}"
                         for j in jobs if j not in facts.states or facts.states[j].status is not JobStatus.COMPLETED]
    return len(facts.ticks), problems


# -- the run ---------------------------------------------------------------------------------------


async def soak(options: argparse.Namespace, bootstrap: str, run_dir: Path, cluster: LocalCluster | None = None) -> int:
    started = time.monotonic()
    rng = random.Random(options.seed)
    settings = Settings(kafka_bootstrap=bootstrap, namespace=f"soak{uuid.uuid4().hex[:8]}")
    await apply_topics(settings, ["default"])
    say(f"namespace {settings.namespace}; planning {options.jobs:,} jobs")
    plan = plan_jobs(options.jobs, settings.namespace, options.seed, options.dependents)
    app = build_app(settings.namespace, kafka_bootstrap=bootstrap)
    fleet = Fleet(settings, run_dir, options.workers, options.processors, rng)
    fleet.start_all()
    schedule_ids = [await app.schedule("work", {"tick_of": k}, every=f"{options.schedule_every:g}s", catch_up="all",
                                       schedule_id=f"{SCHEDULE_PREFIX}{k}") for k in range(options.schedules)]
    finished = Finished(settings)
    follower = asyncio.create_task(finished.run())
    enqueued = 0
    stop_killing = asyncio.Event()

    broker_killer = (BrokerKiller(cluster, settings, options.kill_broker, options.broker_down)
                     if cluster is not None and options.kill_broker else None)

    async def kill_brokers() -> None:
        assert broker_killer is not None
        while True:
            try:
                await asyncio.wait_for(stop_killing.wait(), options.broker_kill_every)
                return
            except TimeoutError:
                pass
            await broker_killer.kill_one()  # finished (broker back in sync) even when the jobs ended meanwhile

    async def killer() -> None:
        if options.kill_every <= 0:
            return
        await asyncio.sleep(options.kill_every)
        while not stop_killing.is_set():
            service = fleet.kill_one()
            say(f"SIGKILL {service.name} (start {service.starts}); {enqueued:,} enqueued, "
                f"{len(finished.terminal):,} ended")
            try:
                await asyncio.wait_for(stop_killing.wait(), options.kill_every * rng.uniform(0.5, 1.5))
            except TimeoutError:
                pass

    async def watchdog() -> None:
        while not stop_killing.is_set():
            fleet.restart_exited()
            if broker_killing is not None and broker_killing.done():  # it ends only when told to, or failing
                say(f"the broker killer failed: {broker_killing.exception()!r}")
                broker_killing.result()
            await asyncio.sleep(1)

    broker_killing = asyncio.create_task(kill_brokers()) if broker_killer is not None else None
    killing = asyncio.create_task(killer())
    watching = asyncio.create_task(watchdog())
    deadline = started + options.deadline
    expected_ids = {job_id.encode() for job_id in plan.expected}
    try:
        chunk = CHUNK
        for start in range(0, len(plan.events), chunk):
            while enqueued - len(finished.terminal & expected_ids) > options.in_flight:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
                if watching.done():  # the broker killer failed: the run stops with its error
                    watching.result()
            await app.writer.append(plan.events[start:start + chunk])  # raises if not acknowledged: the run stops
            enqueued = min(len(plan.events), start + chunk)
        say(f"all {len(plan.events):,} enqueue events acknowledged ({len(plan.expected):,} jobs)")
        last_report = time.monotonic()
        while len(finished.terminal & expected_ids) < len(expected_ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            if watching.done():
                watching.result()
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                say(f"{len(finished.terminal & expected_ids):,} of {len(expected_ids):,} jobs ended")
        for schedule_id in schedule_ids:  # no tick after this; the jobs of the ticks fired still run
            await app.unschedule(schedule_id, "the soak's load has ended")
        if schedule_ids:
            await wait_for_ticks(settings, finished, deadline)
        ended_s = time.monotonic() - started
    finally:
        stop_killing.set()
        await asyncio.gather(killing, watching, return_exceptions=True)
        if broker_killing is not None:
            await asyncio.gather(broker_killing, return_exceptions=True)  # a kill under way ends with the broker in sync
        say("stopping the services (SIGTERM)")
        unclean = await asyncio.to_thread(fleet.stop_all)
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await app.close()

    say("checking: fold of the log, changelog, executions, projections")
    facts = await read_log(settings)
    ticks_fired, tick_problems = schedule_problems(facts, options.schedule_every)
    comparison = await compare_state(settings)
    runs = read_executions(fleet.executions)
    backend = await project_into_chdb(settings, run_dir / "chdb")
    try:
        projection_problems = projection_differences(backend, facts)
    finally:
        backend.close()

    # lost: not ended (or unknown to the log); wrong: ended otherwise than planned (a job may need
    # more attempts than planned, when a worker killed mid-job lets its lease expire, never fewer)
    ended = (JobStatus.COMPLETED, JobStatus.DEAD_LETTERED, JobStatus.CANCELLED)
    lost = {j: facts.states[j].status.value if j in facts.states else None for j in plan.expected
            if j not in facts.states or facts.states[j].status not in ended}
    # A job planned to complete may end dead-lettered when worker kills cost it attempts (each
    # expired lease is a failed attempt): then every attempt of its budget failed, and at least
    # one of them by a lost lease.
    exhausted_by_kills = {j for j, (status, attempt) in plan.expected.items()
                          if j in facts.states and status is JobStatus.COMPLETED
                          and facts.states[j].status is JobStatus.DEAD_LETTERED and facts.leases_lost[j] > 0
                          and facts.states[j].attempts_started >= facts.states[j].max_attempts}
    # a dependent cancelled by a dependency: as planned, or because kills used up a dependency's attempts
    cancelled_by_kills = {j for j, (dependencies, mode) in plan.dependents.items()
                          if mode == "cancel" and plan.expected[j][0] is JobStatus.COMPLETED and j in facts.states and facts.states[j].status is JobStatus.CANCELLED
                          and any(d in facts.states and facts.states[d].status is not JobStatus.COMPLETED
                                  for d in dependencies)}
    wrong = {j: (facts.states[j].status.value, facts.states[j].attempt) for j, (status, attempt) in plan.expected.items()
             if j in facts.states and j not in lost and j not in exhausted_by_kills | cancelled_by_kills
             and (facts.states[j].status is not status or facts.states[j].attempt < attempt)}
    more_attempts = sum(1 for j, (_, attempt) in plan.expected.items()
                        if j in facts.states and facts.states[j].attempt > attempt)
    duplicated = [key for key, n in facts.transitions.items() if n > 1]
    duplicated += [f"event {event_id}" for event_id, n in facts.derived_ids.items() if n > 1]
    tick_jobs = {j for jobs in facts.ticks.values() for j in jobs}  # their handler runs are in `runs` too
    attempts_started = sum(facts.states[j].attempts_started for j in plan.expected.keys() | tick_jobs if j in facts.states)
    executions = sum(runs.values())
    repeated_attempts = sum(1 for n in runs.values() if n > 1)
    ran = {job_id for job_id, _ in runs}
    never_ran = sum(1 for j in plan.expected if j in facts.states and j not in lost and j not in ran
                    and facts.states[j].status is not JobStatus.CANCELLED)
    started_not_run = sum(1 for j in plan.expected if j in facts.states
                          for a in range(facts.states[j].attempts_started) if runs[(j, a)] == 0)
    kills = sum(fleet.kills.values())
    checks = {
        "lost jobs (not ended, or unknown to the log)": len(lost),
        "jobs in a wrong state (not as planned)": len(wrong),
        "state transitions duplicated": len(duplicated),
        "changelog differences from the fold of the log": len(comparison.differences),
        "projection differences from the fold of the log": len(projection_problems),
        "ended jobs whose handler never ran": never_ran,
        "schedule tick problems (gaps, repeats, jobs not completed)": len(tick_problems),
        "undecodable records in the log": facts.undecodable,
    }
    wall = time.monotonic() - started
    print()
    print(f"command:      {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}")
    print(f"jobs:         {len(plan.expected):,} ({plan.duplicates:,} enqueued twice with one idempotency key, "
          f"{plan.delayed:,} delayed); completed {sum(s == JobStatus.COMPLETED for s, _ in plan.expected.values()):,}"
          f", dead-lettered {sum(s == JobStatus.DEAD_LETTERED for s, _ in plan.expected.values()):,} expected")
    dependents = Counter((mode, plan.expected[j][0].value) for j, (_, mode) in plan.dependents.items())
    print(f"workflows:    {len(plan.dependents):,} dependents ({', '.join(f'{m} -> {s} {n:,}' for (m, s), n in sorted(dependents.items()))}"
          f"; {len(cancelled_by_kills):,} cancelled because kills dead-lettered a dependency); {len(schedule_ids)} "
          f"schedules every {options.schedule_every:g} s: {ticks_fired:,} ticks fired")
    print(f"events:       {facts.records:,} records in the log "
          f"({', '.join(f'{t} {n:,}' for t, n in facts.types.most_common(6))}, ...)")
    print(f"kills:        {kills} SIGKILLs ({fleet.kills['processor']} processor, {fleet.kills['worker']} worker), "
          f"every {options.kill_every:g} s +-50 %; services that exited by themselves: {len(fleet.unexpected_exits)}; "
          f"unclean stops at the end: {unclean or 'none'}")
    if broker_killer is not None:
        kills_ = broker_killer.kills
        print(f"brokers:      a cluster of {len(cluster.nodes)} (replication factor 3, min ISR 2); "  # type: ignore[union-attr]
              f"{len(kills_)} broker SIGKILLs ({sum(k.role == 'leader' for k in kills_)} event-log leader, "
              f"{sum(k.role == 'controller' for k in kills_)} active controller), each down {options.broker_down:g} s, "
              f"every {options.broker_kill_every:g} s; back in the ISR of every partition after "
              f"{', '.join(f'{k.in_sync_s:.1f}' for k in kills_) or '-'} s (answering after "
              f"{', '.join(f'{k.answered_s:.1f}' for k in kills_) or '-'} s)")
    print(f"executions:   {executions:,} handler runs for {attempts_started:,} started attempts: "
          f"{executions - attempts_started:,} extra executions (at least once), "
          f"{repeated_attempts:,} attempts run more than once; {more_attempts:,} jobs needed an attempt more "
          f"than planned (lease expired after a worker kill); {len(exhausted_by_kills):,} jobs planned to complete "
          f"dead-lettered because kills used up their attempts; {started_not_run:,} started attempts never reached the "
          f"handler (worker killed in between)")
    for name, value in checks.items():
        print(f"{name + ':':<52} {value}  {'ok' if value == 0 else 'FAILED'}")
    print(f"wall time:    {wall:.0f} s ({ended_s:.0f} s until every job ended, {wall - ended_s:.0f} s of checks); "
          f"{len(plan.expected) / ended_s:.0f} jobs/s under kills")
    print(f"run dir:      {run_dir}")
    failures = [name for name, value in checks.items() if value]
    if lost:
        print(f"  lost, e.g.: {list(lost.items())[:5]}")
    if wrong:
        print(f"  wrong, e.g.: {list(wrong.items())[:5]}")
    if duplicated:
        print(f"  duplicated, e.g.: {duplicated[:5]}")
    for difference in comparison.differences[:5]:
        print(f"  changelog: {difference.job_id} {difference.kind} {difference.fields}")
    for problem in projection_problems:
        print(f"  projection: {problem}")
    for problem in tick_problems[:5]:
        print(f"  schedule: {problem}")
    print("RESULT:", "all invariants hold" if not failures else f"FAILED: {', '.join(failures)}")
    return 1 if failures else 0


def main() -> int:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # reconnects while a broker is down; the run reports
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs to run (default 100,000)")
    parser.add_argument("--kill-every", type=float, default=8.0,
                        help="seconds between two SIGKILLs of a random service, jittered +-50 %% (default 8)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=5000, help="most unfinished jobs enqueued at a time")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds until the run gives up waiting for the jobs (default: 600 + 0.05 s per job)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dependents", type=float, default=0.04,
                        help="share of the jobs that are dependents of one to three earlier jobs (default 0.04)")
    parser.add_argument("--schedules", type=int, default=4, help="schedules firing while the load runs (default 4)")
    parser.add_argument("--schedule-every", type=float, default=2.0, help="their period in seconds (default 2)")
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=1,
                        help="1: KAFKA_BOOTSTRAP_SERVERS or a local broker; 3: a local three-broker cluster of the run's own")
    parser.add_argument("--kill-broker", choices=("leader", "controller", "alternate"), default=None,
                        help="with --brokers 3: SIGKILL the event log's busiest leader, the active controller, or each in turn")
    parser.add_argument("--broker-down", type=float, default=20.0, help="seconds a killed broker stays down (default 20)")
    parser.add_argument("--broker-kill-every", type=float, default=60.0,
                        help="seconds between the end of one broker kill (broker back in sync) and the next (default 60)")
    options = parser.parse_args()
    if options.kill_broker and options.brokers < 3:
        parser.error("--kill-broker needs --brokers 3 (a single broker killed is the broker restart test's fault)")
    if options.deadline is None:
        options.deadline = 600 + 0.05 * options.jobs
    run_dir = Path(tempfile.mkdtemp(prefix="eventjobs-soak-"))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker: LocalKafka | LocalCluster | None = None
    cluster = None
    if options.brokers > 1:
        if bootstrap:
            parser.error("--brokers 3 starts and kills brokers of its own cluster: unset KAFKA_BOOTSTRAP_SERVERS")
        broker = cluster = LocalCluster(run_dir / "kafka", free_ports(options.brokers), heap="512m")
        cluster.up()
        bootstrap = cluster.bootstrap
    elif not bootstrap:
        single = LocalKafka(home=run_dir / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
        broker = single
        bootstrap = single.up().bootstrap
    say(f"broker {bootstrap}; logs and side channel in {run_dir}")
    try:
        return asyncio.run(soak(options, bootstrap, run_dir, cluster))
    finally:
        if broker is not None:
            broker.down()


if __name__ == "__main__":
    sys.exit(main())
