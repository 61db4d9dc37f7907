"""Dependencies end to end: a job waits for others, across partitions and processes.

The jobs of these tests live in `build_workflow_app`; worker subprocesses load it as
`--app tests.e2e.test_dependencies:app` with EVENTJOBS_NAMESPACE set.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from eventjobs import App, Cancel, JobContext, Snooze, UnknownDependency
from eventjobs.core.codec import decode
from eventjobs.core.events import JobEvent
from eventjobs.core.ids import job_id_for_key
from eventjobs.kafka.clients import partitions_of, producer, read_to_end
from eventjobs.core.options import NoBackoff
from eventjobs.core.partitioning import job_partition
from eventjobs.core.state import JobStatus
from eventjobs.clickhouse import ServerBackend
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside import queries as query
from eventjobs.readside.projector import Projector, ProjectorOptions
from eventjobs.settings import Settings
from tests.e2e.conftest import Runtime, built_app, job_events, processor_runtime, spawn, wait_for_status
from tests.readside.conftest import chdb_path, server_url  # noqa: F401 - fixtures
from tests.readside.tables import cli_env, run_cli
from tests.support.event_log import end_offsets

APP = "tests.e2e.test_dependencies:app"


def build_workflow_app(namespace: str, **settings: Any) -> App:
    app = App(namespace, **settings)

    @app.job(queue="default")
    async def step(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """Returns its name and the results of its dependencies."""
        return {"name": args["name"], "saw": ctx.dependency_results}

    @app.job(queue="default", max_attempts=1)
    async def broken(args: dict[str, Any], ctx: JobContext) -> Any:
        return Cancel("this step always fails")

    @app.job(queue="default")
    async def square(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        return {"square": args["n"] * args["n"]}

    @app.job(queue="default")
    async def combine(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """Fan-in by dependencies: sums the squares of the children that completed."""
        return {"total": sum(r["square"] for r in ctx.dependency_results.values()),
                "count": len(ctx.dependency_results)}

    @app.job(queue="default", timeout=120)
    async def fan_out(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """Fan-out to `n` children, fan-in with a `combine` job that depends on them."""
        children = [await ctx.enqueue("square", {"n": n}) for n in range(args["n"])]
        combined = await ctx.enqueue("combine", {}, depends_on=children)
        return {"children": children, "combine": combined}

    @app.job(queue="default", timeout=120)
    async def fan_out_and_wait(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """Fan-out, then fan-in inside the handler (holds its slot while waiting)."""
        children = [await ctx.enqueue("square", {"n": n}) for n in range(args["n"])]
        results = await ctx.wait_for_jobs(children, timeout=60)
        return {"total": sum(results[c]["square"] for c in children)}

    @app.job(queue="default", max_attempts=1, timeout=60)
    async def wait_for_a_failure(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """Waits for a child that fails: `wait_for_jobs` raises, naming it."""
        children = [await ctx.enqueue("square", {"n": 2}), await ctx.enqueue("broken", {})]
        return await ctx.wait_for_jobs(children, timeout=30)

    @app.job(queue="default")
    async def summarize(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """A batch callback: counts the outcomes of the batch."""
        statuses = [d["status"] for d in ctx.dependencies.values()]
        return {"completed": statuses.count("completed"), "failed": len(statuses) - statuses.count("completed")}

    @app.job(queue="default", max_attempts=2, backoff=NoBackoff(), max_snoozes=5)
    async def snoozy(args: dict[str, Any], ctx: JobContext) -> Any:
        """Snoozes `snoozes` times (each moves to the next attempt number), then fails once (if
        asked), then succeeds."""
        if ctx.attempt < args["snoozes"]:
            return Snooze(args.get("delay", 0.2))
        if args.get("fail_once") and ctx.attempt == args["snoozes"]:
            raise ConnectionError("one failure after the snoozes")
        return {"attempt": ctx.attempt}

    @app.job(queue="default", max_attempts=1, max_snoozes=1)
    async def sleepless(args: dict[str, Any], ctx: JobContext) -> Any:
        return Snooze(0.1)

    @app.job(queue="default", max_attempts=1)
    async def fails_first(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """Its first attempt fails (one attempt allowed: dead-lettered); a retry from the dead-letter queue completes."""
        if ctx.attempt == 0:
            raise RuntimeError("the first attempt fails")
        return {"attempt": ctx.attempt}

    return app


app = build_workflow_app(os.environ.get("EVENTJOBS_NAMESPACE", "testworkflows"))


@pytest.fixture
async def wf_app(settings: Settings) -> AsyncIterator[App]:
    async with built_app(settings, build_workflow_app, ["default"]) as application:
        yield application


@pytest.fixture
async def wf_runtime(wf_app: App) -> AsyncIterator[Runtime]:
    async with processor_runtime(wf_app) as rt:
        yield rt


def keys_on_distinct_partitions(name: str, count: int, partitions: int = 6) -> list[str]:
    """Idempotency keys whose job ids (of job `name`) lie on `count` different partitions."""
    keys: dict[int, str] = {}
    for n in range(1000):
        key = f"{os.urandom(4).hex()}-{n}"
        keys.setdefault(job_partition(job_id_for_key(name, key), partitions), key)
        if len(keys) == count:
            return list(keys.values())
    raise AssertionError("no keys found")


async def events_with_completions(settings: Settings, jobs: set[str], timeout: float = 30) -> list[JobEvent]:
    """The namespace's log once it holds a `completed` event for each of `jobs`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        events = await job_events(settings)
        if jobs <= {e.job_id for e in events if e.type == "completed"}:
            return events
        assert asyncio.get_running_loop().time() < deadline, "a completion never reached the committed log"
        await asyncio.sleep(0.2)


async def test_a_diamond_runs_d_after_b_and_c_and_d_sees_both_results(
    wf_app: App, tmp_path: Path, processes: list[Any]
) -> None:
    # Given two processor processes and a worker process: A, B, C and D lie on four of the six
    # partitions, so once both processors joined the group (3 partitions each) the diamond's
    # lanes are in both processes, and requests and answers cross between them
    settings = wf_app.settings
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p1.log"))
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p2.log"))
    processes.append(spawn(["worker", "--app", APP], settings, tmp_path / "w.log"))
    # When A -> (B, C) -> D is enqueued, each job on its own partition (ids chosen by idempotency keys)
    ka, kb, kc, kd = keys_on_distinct_partitions("step", 4)
    a = await wf_app.enqueue("step", {"name": "A"}, idempotency_key=ka)
    b = await wf_app.enqueue("step", {"name": "B"}, depends_on=[a], idempotency_key=kb)
    c = await wf_app.enqueue("step", {"name": "C"}, depends_on=[a], idempotency_key=kc)
    d = await wf_app.enqueue("step", {"name": "D"}, depends_on=[b, c], idempotency_key=kd)
    assert len({job_partition(j, 6) for j in (a, b, c, d)}) == 4
    # Then D completes with B's and C's results, and each of those saw A's
    state = await wf_app.wait(d, timeout=60)
    assert state.status is JobStatus.COMPLETED, state
    saw = state.result["saw"]  # type: ignore[index]
    assert set(saw) == {b, c}
    assert saw[b] == {"name": "B", "saw": {a: {"name": "A", "saw": {}}}}
    assert saw[c]["name"] == "C" and set(saw[c]["saw"]) == {a}
    # And D started only after B and C had succeeded, and only after both answers were in its log.
    # (A lane's `completed` may be re-derived, with a later stamp, when a rebalance aborts the
    # transaction that first carried it, so the order is read from the answers and the workers'
    # `attempt_succeeded`; every `completed` is in the committed log in the end.)
    events = await events_with_completions(settings, {a, b, c, d})
    succeeded = {e.job_id: e.occurred_at for e in events if e.type == "attempt_succeeded"}
    d_started = [e.occurred_at for e in events if e.type == "attempt_started" and e.job_id == d]
    assert len(d_started) == 1 and d_started[0] >= max(succeeded[b], succeeded[c])
    b_started = min(e.occurred_at for e in events if e.type == "attempt_started" and e.job_id == b)
    assert b_started >= succeeded[a]
    for dependent, dependencies in ((b, {a}), (c, {a}), (d, {b, c})):
        own = [e for e in events if e.job_id == dependent]  # one partition, so in log order
        first_start = next(i for i, e in enumerate(own) if e.type == "attempt_started")
        answered = {e.dependency_id for e in own[:first_start] if e.type == "dependency_resolved"}
        assert answered == dependencies, (dependent, own)
    # The requests went to the dependencies' partitions, the answers to the dependents'
    requested = [e for e in events if e.type == "dependency_requested"]
    assert sorted((e.job_id, e.dependent_id) for e in requested) == sorted([(a, b), (a, c), (b, d), (c, d)])
    answers = [e for e in events if e.type == "dependency_resolved" and e.job_id == d]
    assert sorted(e.dependency_id for e in answers) == sorted([b, c]) and all(e.outcome == "completed" for e in answers)
    topic = f"{settings.namespace}.events"
    linked = [(decode(r.value), r.partition) async for r in read_to_end(settings, await partitions_of(settings, topic))]
    linked = [(e, p) for e, p in linked if e.type in ("dependency_requested", "dependency_resolved")]
    assert len(linked) == 8 and all(p == job_partition(e.job_id, 6) for e, p in linked)


async def test_a_failed_dependency_cancels_its_dependent(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker()
    app = wf_runtime.app
    failing = await app.enqueue("broken", {})
    fine = await app.enqueue("step", {"name": "fine"})
    dependent = await app.enqueue("step", {"name": "never"}, depends_on=[fine, failing])
    state = await app.wait(dependent, timeout=30)
    assert state.status is JobStatus.CANCELLED
    assert state.reason == f"dependency {failing} ended dead_lettered"
    assert state.attempts_started == 0
    # its own dependents are cancelled in turn, naming it
    later = await app.enqueue("step", {"name": "later"}, depends_on=[dependent])
    assert (await app.wait(later, timeout=30)).reason == f"dependency {dependent} ended cancelled"


async def test_run_anyway_sees_which_dependencies_failed(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker()
    app = wf_runtime.app
    failing = await app.enqueue("broken", {})
    fine = await app.enqueue("square", {"n": 3})
    summary = await app.enqueue("summarize", {}, depends_on=[failing, fine], on_dependency_failure="run")
    state = await app.wait(summary, timeout=30)
    assert state.status is JobStatus.COMPLETED and state.result == {"completed": 1, "failed": 1}


async def test_a_waiting_job_shows_what_it_waits_for_and_can_be_cancelled(wf_runtime: Runtime) -> None:
    app = wf_runtime.app  # no worker: the dependency stays pending
    first = await app.enqueue("step", {"name": "first"})
    waiting = await app.enqueue("step", {"name": "second"}, depends_on=[first])
    state = await wait_for_status(wf_runtime, waiting, JobStatus.WAITING)
    assert state.workflow is not None and state.workflow.unresolved == (first,)
    holder = await wait_for_status(wf_runtime, first, JobStatus.PENDING)
    for _ in range(100):  # the request reaches the dependency's lane after the dependent's enqueue
        if holder.workflow is not None and waiting in holder.workflow.dependents:
            break
        await asyncio.sleep(0.05)
        holder = await app.state(first)  # type: ignore[assignment]
    assert holder.workflow is not None and waiting in holder.workflow.dependents
    await app.cancel(waiting, "not needed")
    assert (await app.wait(waiting, timeout=30)).status is JobStatus.CANCELLED


async def test_an_unknown_dependency_is_refused_at_enqueue(wf_runtime: Runtime) -> None:
    app = wf_runtime.app
    with pytest.raises(UnknownDependency, match="depends_on names job 'no-such-job', which does not exist"):
        await app.enqueue("step", {"name": "x"}, depends_on=["no-such-job"])
    assert [e for e in await job_events(app.settings) if e.type == "enqueued"] == []  # nothing was sent


async def test_a_missing_dependency_that_slips_through_cancels_the_dependent(wf_runtime: Runtime) -> None:
    # A producer that skips the check (here: the event built and appended directly)
    app = wf_runtime.app
    event = app._build_enqueue("step", {"name": "orphan"}, depends_on=["never-enqueued"])
    await app.writer.append([event])
    state = await app.wait(event.job_id, timeout=30)
    assert state.status is JobStatus.CANCELLED
    assert state.reason is not None and state.reason.startswith("dependency never-enqueued does not exist")


async def test_the_read_side_shows_what_a_job_waits_for_and_a_parents_children(
    wf_runtime: Runtime, server_url: str
) -> None:
    # Given a finished fan-out (a parent, its children) and a job waiting for a scheduled one
    await wf_runtime.start_worker()
    app = wf_runtime.app
    parent = await app.enqueue("fan_out", {"n": 3})
    done = await app.wait(parent, timeout=30)
    children = [*done.result["children"], done.result["combine"]]  # type: ignore[index]
    await app.wait(children[-1], timeout=30)
    later = await app.enqueue("step", {"name": "later"}, delay=3600)
    waiting = await app.enqueue("step", {"name": "waits"}, depends_on=[later])
    await wait_for_status(wf_runtime, waiting, JobStatus.WAITING)
    await wait_for_status(wf_runtime, later, JobStatus.SCHEDULED)
    # When the log is projected into ClickHouse
    settings = app.settings.model_copy(update={"clickhouse_url": SecretStr(server_url)})
    backend = ServerBackend(server_url, settings.namespace)
    try:
        await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
        projector = Projector(backend, settings, control=False, stop_at=await end_offsets(settings),
                              options=ProjectorOptions(batch_max_events=1000, batch_max_wait_s=0.1))
        await asyncio.wait_for(projector.run(asyncio.Event()), 60)
        # Then `jobs show` names what the waiting job waits for, and the parent's children
        env = cli_env(settings)
        shown = await asyncio.to_thread(run_cli, ["jobs", "show", waiting], env)
        assert shown.returncode == 0, shown.stderr
        assert "waiting" in shown.stdout and f"waiting for  {later}" in shown.stdout
        assert f"depends on   {later}" in shown.stdout
        family = await asyncio.to_thread(run_cli, ["history", parent], env)
        assert f"children     4: {', '.join(children)}" in family.stdout
        # and `history` the same, with the events that tie them
        history = await asyncio.to_thread(run_cli, ["history", waiting, "--json"], env)
        assert history.returncode == 0, history.stderr
        data = json.loads(history.stdout)
        assert data["links"]["waiting_for"] == [later] and data["links"]["status"] == "waiting"
        assert [e["type"] for e in data["events"]] == ["enqueued"]
        # the projection itself (what the CLI reads)
        held = query.show_job(backend, later)
        assert held.dependents == [waiting] and held.status == "scheduled"
        assert query.show_job(backend, parent).children == children
        assert "dependency_requested" in [e.type for e in query.job_history(backend, later)]
    finally:
        backend.command(f"DROP DATABASE IF EXISTS `{settings.namespace}` SYNC", database="")
        backend.close()


async def test_the_cli_enqueues_with_depends_on_and_refuses_an_unknown_id(wf_runtime: Runtime) -> None:
    app = wf_runtime.app
    first = await app.enqueue("step", {"name": "first"}, delay=3600)
    await wait_for_status(wf_runtime, first, JobStatus.SCHEDULED)  # in the changelog: another process finds it
    env = {**cli_env(app.settings), "EVENTJOBS_NAMESPACE": app.settings.namespace}
    base = ["enqueue", "step", "--app", APP, "--args", '{"name": "second"}', "--depends-on"]
    refused = await asyncio.to_thread(run_cli, [*base, f"{first},nope"], env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "depends_on names job 'nope', which does not exist" in refused.stderr
    accepted = await asyncio.to_thread(run_cli, [*base, first], env)
    assert accepted.returncode == 0, accepted.stderr
    state = await wait_for_status(wf_runtime, accepted.stdout.strip(), JobStatus.WAITING)
    assert state.workflow is not None and state.workflow.depends_on == (first,)


# -- dead-letter retries and dependencies ------------------------------------------------------------


@pytest.mark.parametrize("retry", ["one", "all"])
async def test_a_waiting_job_that_expired_waits_again_when_retried_and_runs_after_its_dependency(
    wf_runtime: Runtime, retry: str
) -> None:
    """`App.retry_dead_letter`, and `App.retry_all_dead_letters`, which the dashboard's "Retry all" and
    `eventjobs dlq retry-all` call."""
    app = wf_runtime.app  # no worker yet: the dependency stays pending
    first = await app.enqueue("step", {"name": "first"})
    second = await app.enqueue("step", {"name": "second"}, depends_on=[first], ttl=1.0)
    # Given the waiting job expired (ttl 1 s) before its dependency ran: dead-lettered
    dead = await wait_for_status(wf_runtime, second, JobStatus.DEAD_LETTERED)
    assert dead.reason is not None and dead.reason.startswith("expired")
    # When it is retried from the dead-letter queue
    if retry == "one":
        await app.retry_dead_letter(second, "retried by the test")
    else:
        assert await app.retry_all_dead_letters("step", "retried from the dashboard") == [second]
    # Then it waits for its dependency again (not pending: it has not answered)
    waiting = await wait_for_status(wf_runtime, second, (JobStatus.WAITING, JobStatus.PENDING))
    assert waiting.status is JobStatus.WAITING, waiting
    assert waiting.workflow is not None and waiting.workflow.unresolved == (first,) and waiting.attempt == 1
    await asyncio.sleep(1.5)  # its ttl no longer applies: it does not expire again
    assert (await app.state(second)).status is JobStatus.WAITING  # type: ignore[union-attr]
    # and runs once the dependency completed, seeing its result
    await wf_runtime.start_worker()
    done = await app.wait(second, timeout=30)
    assert done.status is JobStatus.COMPLETED, done
    assert done.result == {"name": "second", "saw": {first: {"name": "first", "saw": {}}}}
    events = await job_events(app.settings)
    completed = next(e.occurred_at for e in events if e.type == "completed" and e.job_id == first)
    started = [e.occurred_at for e in events if e.type == "attempt_started" and e.job_id == second]
    assert len(started) == 1 and started[0] >= completed


async def test_a_retried_dependency_revives_the_dependents_its_failure_cancelled(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker()
    app = wf_runtime.app
    # Given a dependency that fails for good, and a chain of two jobs waiting for it
    dependency = await app.enqueue("fails_first", {})
    dependent = await app.enqueue("step", {"name": "dependent"}, depends_on=[dependency])
    later = await app.enqueue("step", {"name": "later"}, depends_on=[dependent])
    cancelled = await app.wait(dependent, timeout=30)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.reason == f"dependency {dependency} ended dead_lettered"
    assert (await app.wait(later, timeout=30)).reason == f"dependency {dependent} ended cancelled"
    # When the dependency is retried from the dead-letter queue (and completes)
    await wait_for_status(wf_runtime, dependency, JobStatus.DEAD_LETTERED)
    await app.retry_dead_letter(dependency, "fixed")
    # Then the dependent waits again and runs with its result, and so does the job after it
    done = await wait_for_status(wf_runtime, later, JobStatus.COMPLETED, timeout=60)
    # (the changelog is read partition by partition: the dependent's state may show a moment later)
    middle = await wait_for_status(wf_runtime, dependent, JobStatus.COMPLETED, timeout=30)
    assert middle.attempts_started == 1
    assert middle.result == {"name": "dependent", "saw": {dependency: {"attempt": 1}}}
    assert done.result == {"name": "later", "saw": {dependent: middle.result}}
    reopened = [(e.job_id, e.dependency_id) for e in await job_events(app.settings) if e.type == "dependency_reopened"]
    assert sorted(reopened) == sorted([(dependent, dependency), (later, dependent)])


# -- cycles from producers that skip the dependency check ------------------------------------------


async def raw_enqueue(settings: Settings, jobs: dict[str, list[str]]) -> None:
    """Write `enqueued` events as a producer that knows only the wire contract would (docs/events.md):
    hand-built JSON on the job's partition, `depends_on` unchecked. `jobs`: job id -> what it depends on."""
    topic = f"{settings.namespace}.events"
    partitions = len(await partitions_of(settings, topic))
    sender = producer(settings)
    await sender.start()
    try:
        for job_id, depends_on in jobs.items():
            now = datetime.now(timezone.utc)
            at = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
            event = {"event_id": str(uuid.uuid4()), "job_id": job_id, "type": "enqueued", "occurred_at": at,
                     "actor": "producer:raw", "name": "step", "queue": "default", "args": {"name": job_id},
                     "options": {"max_attempts": 3, "timeout_s": 30.0}, "depends_on": depends_on}
            await sender.send_and_wait(topic, json.dumps(event).encode(), key=job_id.encode(),
                                       partition=job_partition(job_id, partitions))
    finally:
        await sender.stop()


@pytest.mark.parametrize("size", [2, 3])
async def test_a_dependency_cycle_from_a_raw_producer_ends_every_job_in_it_naming_the_cycle(
    wf_runtime: Runtime, size: int
) -> None:
    await wf_runtime.start_worker()
    app = wf_runtime.app
    # Given A -> B (-> C) -> A, written by a producer that does not check that dependencies exist
    ring = [str(uuid.uuid4()) for _ in range(size)]
    await raw_enqueue(app.settings, {job: [ring[(n + 1) % size]] for n, job in enumerate(ring)})
    # Then every job of the cycle ends, cancelled, none having run
    ended = [await app.wait(job, timeout=30) for job in ring]
    assert all(s.status is JobStatus.CANCELLED and s.attempts_started == 0 for s in ended), ended
    # a job the cycle's probe came back to names the cycle; the others name the job whose cancel ended them
    rotations = {" → ".join([*ring[n:], *ring[:n], ring[n]]) for n in range(size)}
    reasons = {s.job_id: s.reason for s in ended}
    named = [r for r in reasons.values() if r is not None and r.startswith("dependency cycle: ")]
    assert named and all(r.removeprefix("dependency cycle: ") in rotations for r in named), reasons
    for n, job in enumerate(ring):
        assert reasons[job] in (f"dependency cycle: {' → '.join([*ring[n:], *ring[:n], job])}",
                                f"dependency {ring[(n + 1) % size]} ended cancelled"), reasons
