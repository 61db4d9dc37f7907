"""eventjobs: event-sourced background jobs over Apache Kafka.

    from eventjobs import App, JobContext, Retry, Cancel, Snooze
"""

from eventjobs.app import App, Batch, BatchIncomplete, EnqueueRefused, InvalidJobArguments, NotInDeadLetters, PayloadTooLarge, UnknownDependency
from eventjobs.context import JobContext, JobsNotCompleted
from eventjobs.core.options import InvalidJobOptions
from eventjobs.core.outcome import Cancel, Retry, Snooze
from eventjobs.registry import UnknownJob

__all__ = [
    "App",
    "Batch",
    "BatchIncomplete",
    "Cancel",
    "EnqueueRefused",
    "InvalidJobArguments",
    "InvalidJobOptions",
    "JobContext",
    "JobsNotCompleted",
    "NotInDeadLetters",
    "PayloadTooLarge",
    "Retry",
    "Snooze",
    "UnknownDependency",
    "UnknownJob",
]
