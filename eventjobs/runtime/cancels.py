"""The worker's cancel watcher: cancel requests and claim verdicts for the jobs running here.

Why this module exists: a cancel of a running job reaches the worker only through the job-state
changelog, and so does the verdict on the claim of a re-published ready record
(`runtime.claim_verdicts`). One follower tails the changelog for both, from its end, comparing
keys as bytes with the jobs running now before decoding anything. It owns the cancels seen
(`cancel_seen`, which the attempt runner reads at each heartbeat) and `watching`, set once it is
positioned: a claim waiting for its verdict must be written after that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from eventjobs.app import App
from eventjobs.core.state import StateDecodeError, decode_state
from eventjobs.kafka.clients import consumer, partitions_of
from eventjobs.log.bad_records import BadRecords, origin
from eventjobs.runtime.claim_verdicts import ClaimVerdicts

log = logging.getLogger("eventjobs.runtime.worker")  # the worker's parts log as the worker (docs/operations.md)


class CancelWatcher:
    """Follows `<ns>.job-state` for the jobs `running()` names (key bytes -> job id)."""

    def __init__(self, app: App, verdicts: ClaimVerdicts, running: Callable[[], dict[bytes, str]]) -> None:
        self.app = app
        self.verdicts = verdicts
        self._running = running
        self.cancel_seen: set[str] = set()  # jobs running here whose cancel was requested
        self.watching = asyncio.Event()  # positioned: states written from now on are read
        # changelog records skipped (counted by kind, each kind logged once); see docs/architecture.md, "Bad input"
        self.bad_changelog = BadRecords(log, "worker (cancel watcher)")

    def forget(self, job_id: str) -> None:
        """The job stopped running here: only jobs running here are watched for cancels."""
        self.cancel_seen.discard(job_id)

    async def watch(self, stop: asyncio.Event) -> None:
        """Tail the state changelog for cancel requests on jobs running here, and for the verdicts
        of claims waiting for one (keys checked first)."""
        settings = self.app.settings
        topic = self.app.names.job_state
        partitions = await partitions_of(settings, topic)
        reader = consumer(settings, group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=500)
        await reader.start()
        try:
            reader.assign(partitions)
            await reader.seek_to_end()
            for tp in partitions:  # resolved now: states written from here on are read
                await reader.position(tp)
            self.watching.set()
            verdicts = self.verdicts
            while not stop.is_set():
                batch = await reader.getmany(timeout_ms=200)
                running = self._running()
                for records in batch.values():
                    for record in records:
                        key = record.key
                        job_id = running.get(key) if key is not None else None
                        if job_id is None:  # keys compared as bytes: no decoding
                            continue
                        if record.value is None:
                            if key in verdicts:
                                verdicts.seen(key, None)  # the job is forgotten
                            continue
                        try:
                            state = decode_state(record.value)
                        except StateDecodeError as error:  # skipped: a later state of the job still counts
                            self.bad_changelog.report("undecodable state", f"{origin(record)} (job {job_id})",
                                                      str(error))
                            continue
                        if key in verdicts:
                            verdicts.seen(key, state)
                        if state.cancel_requested:
                            self.cancel_seen.add(job_id)
        finally:
            await reader.stop()
