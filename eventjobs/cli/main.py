"""The `eventjobs` command: every command in one place, and what an error looks like to the user.

The commands live in one module per group; this module puts them together, configures logging,
and turns the errors a user can act on into one line on stderr and an exit code.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from pydantic import ValidationError

from eventjobs.app import (
    InvalidJobArguments, NotInDeadLetters, PayloadTooLarge, ScheduleNotFound, UnknownDependency, UnknownQueue,
)
from eventjobs.cli import config, dashboard, deadletters, dev, jobs, projections, replay, services, topics
from eventjobs.cli import limits, partitions, queues, schedules, workers
from eventjobs.cli.options import AppLoadError
from eventjobs.cli.output import err
from eventjobs.clickhouse.errors import ClickHouseError
from eventjobs.core.options import InvalidJobOptions
from eventjobs.core.schedules import InvalidSchedule
from eventjobs.core.validation import issues
from eventjobs.dev.broker import DevStackError
from eventjobs.kafka.admin import KafkaUnavailable, TopicLayoutError
from eventjobs.kafka.topics import TopicSpecError
from eventjobs.readside.projector import ProjectorError
from eventjobs.registry import UnknownJob
from eventjobs.runtime.grow import GrowRefused
from eventjobs.runtime.processor import ProcessorFenced
from eventjobs.runtime.state_check import ProcessorRunning

app = typer.Typer(
    help="Event-sourced background jobs over Apache Kafka.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.command("processor")(services.processor)
app.command("worker")(services.worker)
app.command("enqueue")(jobs.enqueue)
app.command("cancel")(jobs.cancel)
app.command("project")(services.projector)
app.command("replay")(replay.replay)
app.command("history")(jobs.history)
app.command("stats")(jobs.stats)
app.command("dead-letters")(deadletters.dead_letters)
app.command("demo")(dev.demo)
app.command("dashboard")(dashboard.dashboard)
app.add_typer(dev.dev_app, name="dev")
app.add_typer(topics.topics_app, name="topics")
app.add_typer(deadletters.dlq_app, name="dlq")
app.add_typer(projections.projections_app, name="projections")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(config.config_app, name="config")
app.add_typer(schedules.schedules_app, name="schedules")
app.command("workers")(workers.workers)
app.add_typer(queues.queues_app, name="queues")
app.add_typer(limits.limits_app, name="limits")
app.add_typer(partitions.partitions_app, name="partitions")

# Errors the user can act on: printed as one clear message, no traceback, exit code 1.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DevStackError, KafkaUnavailable, TopicSpecError, TopicLayoutError, ValidationError, AppLoadError, UnknownJob,
    InvalidJobOptions, InvalidJobArguments, PayloadTooLarge, NotInDeadLetters, ProcessorFenced, ProcessorRunning,
    ClickHouseError, ProjectorError, UnknownQueue, InvalidSchedule, UnknownDependency, ScheduleNotFound, GrowRefused,
)


def _configure_logging() -> None:
    """Our own messages say what went wrong; aiokafka's reconnect chatter only at EVENTJOBS_LOG_LEVEL=DEBUG."""
    level = os.environ.get("EVENTJOBS_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


_SECRET_FIELDS = ("password", "secret", "token", "url", "key")  # their values are never echoed


def _one_line(error: BaseException) -> str:
    """A pydantic error (settings from options or the environment) as one line naming each field,
    with the value given, except for fields that may hold credentials."""
    if not isinstance(error, ValidationError):
        return str(error)
    problems = []
    for issue in issues(error):
        where = issue.where or "(root)"
        secret = any(word in where.lower() for word in _SECRET_FIELDS)
        problems.append(f"{where}: {issue.message}" + ("" if secret else f" (got {issue.given!r})"))
    return f"invalid {error.title}: " + "; ".join(problems)


def main() -> None:
    _configure_logging()
    try:
        result = app(standalone_mode=False)
        # click returns the code of a `typer.Exit` instead of raising it in this mode
        sys.exit(result if isinstance(result, int) else 0)
    except USER_ERRORS as error:
        err.print(f"[red]error:[/] {_one_line(error)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as error:
        # usage errors (bad option values, missing arguments) from typer's bundled click
        code = getattr(error, "exit_code", None)
        if hasattr(error, "show") and isinstance(code, int):
            error.show()
            sys.exit(code)
        raise
