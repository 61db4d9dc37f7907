"""Topic specs from `topics/*.yaml`, and the one place that knows every Kafka name.

Topics are data: partitions, cleanup policy and retention live in YAML files that a reviewer
can read, and `eventjobs topics apply` makes the cluster match them. Code never spells a topic
name, a consumer group or a transactional id; it asks `TopicNames`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eventjobs.core.durations import UNITS, parse_duration
from eventjobs.core.options import Priority

#: Ready topics per queue, most urgent first (the order a worker drains them in).
PRIORITIES: tuple[str, ...] = tuple(priority.value for priority in Priority)
PLACEHOLDERS = frozenset({"namespace", "queue", "priority"})
_NAME_CHARS = re.compile(r"^[A-Za-z0-9._{}-]+$")


class TopicSpecError(ValueError):
    """A topic spec file is malformed; the message names the file and the field."""


def retention_ms(value: str | int) -> int:
    """'30d' / '12h' / '15m' / '90s' / '500ms' / 'forever' / a number of ms -> retention.ms."""
    if isinstance(value, int):
        if value < -1:
            raise ValueError(f"must be -1 (forever) or >= 0 ms, got {value}")
        return value
    text = value.strip().lower()
    if text in ("forever", "infinite", "-1"):
        return -1
    try:
        duration = parse_duration(text)
    except ValueError:
        raise ValueError(
            f"'{value}' is not a duration; use a number with ms/s/m/h/d (e.g. '30d'), or 'forever'"
        ) from None
    milliseconds, rest = divmod(duration, UNITS["ms"])
    if rest:
        raise ValueError(f"'{value}' is not a whole number of milliseconds")
    return milliseconds


class TopicSpec(BaseModel):
    """One topic, or one family of topics when the name has {queue} / {priority} placeholders."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    purpose: str = Field(min_length=1)
    partitions: int = Field(gt=0, le=10_000)
    replication_factor: int = Field(gt=0, le=32)
    cleanup_policy: Literal["delete", "compact", "compact,delete"]
    retention: str | int = "7d"
    configs: dict[str, str | int | float] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_placeholders(cls, name: str) -> str:
        if not _NAME_CHARS.match(name):
            raise ValueError(f"'{name}' may only contain letters, digits, '.', '_', '-' and placeholders")
        found = {field for _, field, _, _ in string.Formatter().parse(name) if field}
        unknown = found - PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)} in '{name}' (allowed: {sorted(PLACEHOLDERS)})"
            )
        if "namespace" not in found:
            raise ValueError(f"'{name}' must start with '{{namespace}}' so apps do not collide")
        return name

    @field_validator("retention")
    @classmethod
    def _valid_retention(cls, value: str | int) -> str | int:
        retention_ms(value)
        return value

    @field_validator("configs")
    @classmethod
    def _no_shadowed_keys(cls, configs: dict[str, str | int | float]) -> dict[str, str | int | float]:
        for key in ("cleanup.policy", "retention.ms"):
            if key in configs:
                raise ValueError(f"set '{key}' with the top-level field instead of under configs")
        return configs

    @property
    def family(self) -> bool:
        return "{queue}" in self.name or "{priority}" in self.name

    def topic_configs(self) -> dict[str, str]:
        """The broker-level configs this spec asks for, as strings (how the broker reports them)."""
        configs = {key: _config_text(value) for key, value in self.configs.items()}
        configs["cleanup.policy"] = self.cleanup_policy
        configs["retention.ms"] = str(retention_ms(self.retention))
        return configs

    def render(self, namespace: str, queue: str | None = None, priority: str | None = None) -> str:
        return self.name.format(namespace=namespace, queue=queue, priority=priority)


def _config_text(value: str | float) -> str:
    if isinstance(value, float) and value.is_integer() is False:
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class SpecFile:
    path: Path
    spec: TopicSpec

    @property
    def key(self) -> str:
        """The spec's short name: the file name without `.yaml` (events, ready, timers ...)."""
        return self.path.stem


def load_spec(path: Path) -> SpecFile:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise TopicSpecError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise TopicSpecError(f"{path}: expected a mapping of fields (name, partitions, ...), got {type(raw).__name__}")
    try:
        return SpecFile(path=path, spec=TopicSpec.model_validate(raw))
    except ValidationError as error:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in issue['loc']) or '(root)'}': {issue['msg']}"
            + (f" (got {issue['input']!r})" if issue["type"] != "missing" else "")
            for issue in error.errors()
        )
        raise TopicSpecError(f"{path}: {problems}") from None


def load_specs(topics_dir: Path) -> dict[str, SpecFile]:
    """Every `*.yaml` in `topics_dir`, keyed by file stem; errors name the file and field."""
    if not topics_dir.is_dir():
        raise TopicSpecError(f"topic spec directory {topics_dir} does not exist (set EVENTJOBS_TOPICS_DIR)")
    specs = {path.stem: load_spec(path) for path in sorted(topics_dir.glob("*.yaml"))}
    missing = set(REQUIRED_SPECS) - specs.keys()
    if missing:
        raise TopicSpecError(f"{topics_dir}: missing spec file(s) {sorted(f'{m}.yaml' for m in missing)}")
    return specs


REQUIRED_SPECS = ("events", "job-state", "limit-state", "ready", "timers", "dead-letters", "quarantine", "workers",
                  "queue-control", "schedules")


@dataclass(frozen=True)
class TopicNames:
    """Concrete topic names of one namespace (one app); the only source of topic names in code."""

    namespace: str
    specs: dict[str, SpecFile]

    def _single(self, key: str) -> str:
        return self.specs[key].spec.render(self.namespace)

    @property
    def events(self) -> str:
        return self._single("events")

    @property
    def job_state(self) -> str:
        return self._single("job-state")

    @property
    def limit_state(self) -> str:
        """Changelog of the concurrency limits' slot tables (compacted, keyed by owner id; see core/slots.py)."""
        return self._single("limit-state")

    @property
    def timers(self) -> str:
        return self._single("timers")

    @property
    def dead_letters(self) -> str:
        return self._single("dead-letters")

    @property
    def quarantine(self) -> str:
        return self._single("quarantine")

    @property
    def workers(self) -> str:
        """The worker registry (compacted, keyed by worker id)."""
        return self._single("workers")

    @property
    def queue_control(self) -> str:
        """Queue pauses (compacted, keyed by queue name)."""
        return self._single("queue-control")

    @property
    def schedules(self) -> str:
        """Periodic schedules (compacted, keyed by schedule id; see core/schedules.py)."""
        return self._single("schedules")

    @property
    def schedules_group(self) -> str:
        """The schedule services' consumer group on the schedules topic."""
        return f"{self.namespace}.schedules"

    def ready(self, queue: str, priority: str) -> str:
        return self.specs["ready"].spec.render(self.namespace, queue=queue, priority=priority)

    @property
    def processor_group(self) -> str:
        """The lifecycle processors' consumer group on the events topic."""
        return f"{self.namespace}.processor"

    def processor_transactional_id(self, partition: int) -> str:
        """One transactional id per events partition: its next owner fences the last (see architecture.md)."""
        return f"{self.namespace}.processor.{partition}"

    @property
    def grow_transactional_id(self) -> str:
        """The transactional id `eventjobs partitions grow` writes this (new) namespace with."""
        return f"{self.namespace}.grow"

    @property
    def timers_group(self) -> str:
        """The timer services' consumer group on the timer topic."""
        return f"{self.namespace}.timers"

    def worker_group(self, queue: str) -> str:
        """The workers' consumer group on one queue's ready topics."""
        return f"{self.namespace}.workers.{queue}"

    def planned(self, queues: list[str] | tuple[str, ...]) -> list[tuple[str, TopicSpec]]:
        """Every concrete topic for these queues: singles once, families per queue x priority."""
        planned: list[tuple[str, TopicSpec]] = []
        for spec_file in self.specs.values():
            spec = spec_file.spec
            if not spec.family:
                planned.append((spec.render(self.namespace), spec))
                continue
            for queue in queues:
                for priority in PRIORITIES if "{priority}" in spec.name else (None,):
                    planned.append((spec.render(self.namespace, queue=queue, priority=priority), spec))
        return planned
