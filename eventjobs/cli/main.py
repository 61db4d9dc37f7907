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

from eventjobs.app import InvalidJobArguments, NotInDeadLetters, PayloadTooLarge
from eventjobs.cli import config, deadletters, dev, jobs, projections, replay, services, topics
from eventjobs.cli.options import AppLoadError
from eventjobs.cli.output import err
from eventjobs.clickhouse.errors import ClickHouseError
from eventjobs.core.options import InvalidJobOptions
from eventjobs.dev.broker import DevStackError
from eventjobs.kafka.admin import KafkaUnavailable, TopicLayoutError
from eventjobs.kafka.topics import TopicSpecError
from eventjobs.readside.projector import ProjectorError
from eventjobs.registry import UnknownJob
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
app.add_typer(dev.dev_app, name="dev")
app.add_typer(topics.topics_app, name="topics")
app.add_typer(deadletters.dlq_app, name="dlq")
app.add_typer(projections.projections_app, name="projections")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(config.config_app, name="config")

# Errors the user can act on: printed as one clear message, no traceback, exit code 1.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DevStackError, KafkaUnavailable, TopicSpecError, TopicLayoutError, ValidationError, AppLoadError, UnknownJob,
    InvalidJobOptions, InvalidJobArguments, PayloadTooLarge, NotInDeadLetters, ProcessorFenced, ProcessorRunning,
    ClickHouseError, ProjectorError,
)


def _configure_logging() -> None:
    """Our own messages say what went wrong; aiokafka's reconnect chatter only at EVENTJOBS_LOG_LEVEL=DEBUG."""
    level = os.environ.get("EVENTJOBS_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def main() -> None:
    _configure_logging()
    try:
        result = app(standalone_mode=False)
        # click returns the code of a `typer.Exit` instead of raising it in this mode
        sys.exit(result if isinstance(result, int) else 0)
    except USER_ERRORS as error:
        err.print(f"[red]error:[/] {error}", highlight=False)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as error:
        # usage errors (bad option values, missing arguments) from typer's bundled click
        if hasattr(error, "show") and isinstance(getattr(error, "exit_code", None), int):
            error.show()
            sys.exit(error.exit_code)
        raise
