"""eventjobs: event-sourced background jobs over Apache Kafka.

    from eventjobs import App, JobContext, Retry, Cancel, Snooze
"""

from eventjobs.app import App, Batch, BatchIncomplete, EnqueueRefused, InvalidJobArguments, NotInDeadLetters, PayloadTooLarge, UnknownDependency
from eventjobs.context import JobContext, JobsNotCompleted
from eventjobs.core.options import InvalidJobOptions
from eventjobs.core.outcome import Cancel, Retry, Snooze
from eventjobs.hooks import AttemptInfo, AttemptOutcome, Hook, InvalidHook, Quarantined, WorkerInfo
from eventjobs.registry import UnknownJob

__all__ = [
    "App",
    "AttemptInfo",
    "AttemptOutcome",
    "Batch",
    "BatchIncomplete",
    "Cancel",
    "EnqueueRefused",
    "Hook",
    "InvalidHook",
    "InvalidJobArguments",
    "InvalidJobOptions",
    "JobContext",
    "JobsNotCompleted",
    "NotInDeadLetters",
    "PayloadTooLarge",
    "Quarantined",
    "Retry",
    "Snooze",
    "UnknownDependency",
    "UnknownJob",
    "WorkerInfo",
]
