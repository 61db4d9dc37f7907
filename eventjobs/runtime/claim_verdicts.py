"""Claims that wait for their verdict before the handler runs: a worker's claims of re-published ready records.

A re-published ready record (`core.records.REPUBLISHED_HEADER`) may be a second copy of an attempt
another worker process already claimed, and a refused claim's worker cannot tell from its own
writes. So for such a record the worker claims asking for the verdict (the lane writes the job's
state again if it refuses the claim) and waits until the job-state changelog, which it already
follows for cancels, shows a state that decides (`core.records.claim_verdict`). `ClaimVerdicts`
holds those waits; the changelog follower hands it the states of the jobs it waits for.
"""

from __future__ import annotations

import asyncio

from eventjobs.core.records import ReadyRecord, claim_verdict
from eventjobs.core.state import JobState


class ClaimVerdicts:
    """The claims of this worker waiting for their verdict, by job id (as changelog key bytes)."""

    def __init__(self) -> None:
        self._waits: dict[bytes, list[tuple[ReadyRecord, str, asyncio.Future[bool]]]] = {}

    def __len__(self) -> int:
        return sum(len(waits) for waits in self._waits.values())

    def __contains__(self, key: object) -> bool:
        return key in self._waits

    def expect(self, ready: ReadyRecord, claim_id: str) -> asyncio.Future[bool]:
        """A future set to True when the claim `claim_id` of `ready`'s attempt is accepted, False when
        it is refused or superseded. Register it before the claim is sent: the follower only sees
        states written after it began."""
        verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waits.setdefault(ready.job_id.encode(), []).append((ready, claim_id, verdict))
        return verdict

    def seen(self, key: bytes, state: JobState | None) -> None:
        """A new state of the job (None: a tombstone, the job forgotten) on the changelog."""
        waits = self._waits.get(key)
        if not waits:
            return
        for wait in list(waits):
            ready, claim_id, verdict = wait
            decided = claim_verdict(state, ready, claim_id)
            if decided != "undecided":
                if not verdict.done():
                    verdict.set_result(decided == "accepted")
                waits.remove(wait)
        if not waits:
            del self._waits[key]

    def forget(self, ready: ReadyRecord, verdict: asyncio.Future[bool]) -> None:
        """Stop waiting (decided, timed out or cancelled)."""
        key = ready.job_id.encode()
        waits = [wait for wait in self._waits.get(key, []) if wait[2] is not verdict]
        if waits:
            self._waits[key] = waits
        else:
            self._waits.pop(key, None)
