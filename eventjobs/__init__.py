"""eventjobs: event-sourced background jobs over Apache Kafka.

    from eventjobs import App, JobContext, Retry, Cancel, Snooze

What a user writes, receives and catches is importable from here: the app and its handlers'
context and outcomes, the job options' backoff policies and priorities, the states and statuses
`App.wait` / `App.state` / the operator calls return, and every error they raise.
"""

from eventjobs.app import (
    App,
    Batch,
    BatchIncomplete,
    EnqueueRefused,
    InvalidJobArguments,
    NotInDeadLetters,
    PayloadTooLarge,
    ScheduleNotFound,
    UnknownDependency,
    UnknownQueue,
)
from eventjobs.context import JobContext, JobsNotCompleted
from eventjobs.core.control import QueueStatus, WorkerStatus
from eventjobs.core.options import (
    CallableBackoff,
    ConstantBackoff,
    ExponentialBackoff,
    InvalidJobOptions,
    Limit,
    LinearBackoff,
    NoBackoff,
    Priority,
)
from eventjobs.core.outcome import Cancel, Retry, Snooze
from eventjobs.core.records import DeadLetterRecord
from eventjobs.core.schedules import InvalidSchedule, ScheduleStatus
from eventjobs.core.state import ErrorInfo, JobState, JobStatus
from eventjobs.hooks import AttemptInfo, AttemptOutcome, Hook, InvalidHook, Quarantined, WorkerInfo
from eventjobs.kafka.admin import KafkaUnavailable, TopicLayoutError
from eventjobs.registry import JobDefinition, UnknownJob

__all__ = [
    # the app, what a handler gets and how it ends an attempt
    "App",
    "JobContext",
    "Retry",
    "Cancel",
    "Snooze",
    # job options
    "ExponentialBackoff",
    "LinearBackoff",
    "ConstantBackoff",
    "NoBackoff",
    "CallableBackoff",
    "Priority",
    "Limit",
    # what the app's calls return
    "Batch",
    "JobDefinition",
    "JobState",
    "JobStatus",
    "ErrorInfo",
    "DeadLetterRecord",
    "ScheduleStatus",
    "WorkerStatus",
    "QueueStatus",
    # hooks
    "Hook",
    "AttemptInfo",
    "AttemptOutcome",
    "Quarantined",
    "WorkerInfo",
    # errors
    "BatchIncomplete",
    "EnqueueRefused",
    "InvalidHook",
    "InvalidJobArguments",
    "InvalidJobOptions",
    "InvalidSchedule",
    "JobsNotCompleted",
    "KafkaUnavailable",
    "NotInDeadLetters",
    "PayloadTooLarge",
    "ScheduleNotFound",
    "TopicLayoutError",
    "UnknownDependency",
    "UnknownJob",
    "UnknownQueue",
]
