"""eventjobs: event-sourced background jobs over Apache Kafka.

    from eventjobs import App, JobContext, Retry, Cancel
"""

from eventjobs.app import App, InvalidJobArguments, NotInDeadLetters, PayloadTooLarge
from eventjobs.context import JobContext
from eventjobs.core.options import InvalidJobOptions
from eventjobs.core.outcome import Cancel, Retry
from eventjobs.registry import UnknownJob

__all__ = [
    "App",
    "Cancel",
    "InvalidJobArguments",
    "InvalidJobOptions",
    "JobContext",
    "NotInDeadLetters",
    "PayloadTooLarge",
    "Retry",
    "UnknownJob",
]
