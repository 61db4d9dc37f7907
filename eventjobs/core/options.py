"""Job options, priorities and retry backoff.

Why this module exists: options are what users configure per job type and override per enqueue,
and they must be checked once, at the boundary, with a message that says what to change
(``InvalidJobOptions``). What the processor needs to decide later travels inside the
``enqueued`` event as a serializable ``JobOptionsSpec``, so a replay in another process makes
the same decisions without importing user code.

Backoff policies are pure: ``backoff_delay_s(spec, attempt, job_id)`` returns seconds for the
0-based attempt that just failed. Jitter is replay-safe: the "random" fraction is a hash of
(seed, job id, attempt), so the processor computes the same delay every time; the seed only
chooses which sequence. A callable backoff is user code, so only the worker can evaluate it
(it puts the result in ``attempt_failed.retry_delay_s``); when no worker was involved (a lease
or timeout detected by a timer) the spec's serializable ``fallback`` is used.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eventjobs.core.clock import add_seconds, utc_ms
from eventjobs.core.durations import parse_duration
from eventjobs.core.limits import MAX_DEPENDENCIES, MAX_WINDOW_S, MIN_WINDOW_S
from eventjobs.core.validation import issues

__all__ = [
    "ConcurrencySpec",
    "Limit",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_SNOOZES",
    "DependencyFailure",
    "DEFAULT_QUEUE",
    "MAX_DELAY_S",
    "QUEUE_NAME_RE",
    "DEFAULT_TIMEOUT_S",
    "BackoffSpec",
    "CallableBackoff",
    "ConstantBackoff",
    "ExponentialBackoff",
    "InvalidJobOptions",
    "JobOptions",
    "JobOptionsSpec",
    "LinearBackoff",
    "NoBackoff",
    "Priority",
    "backoff_delay_s",
    "check_depends_on",
    "exception_type_name",
    "matches_retry_on",
    "window_seconds",
]

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 20
DEFAULT_TIMEOUT_S = 30.0
#: How often one job may return ``Snooze`` before the attempt fails like an error (option ``max_snoozes``).
DEFAULT_MAX_SNOOZES = 100
#: What a job with ``depends_on`` does when a dependency ends otherwise than completed: ``cancel``
#: (the job is cancelled, naming that dependency) or ``run`` (it runs with what completed).
DependencyFailure = Literal["cancel", "run"]
DEPENDENCY_FAILURE_CHOICES: tuple[str, ...] = get_args(DependencyFailure)
QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
CAPABILITY_RE = re.compile(r"[A-Za-z0-9._:-]{1,100}")
MAX_DELAY_S = 366 * 24 * 3600.0  # a year: anything longer is a mistake, not a backoff


class InvalidJobOptions(ValueError):
    """Job options that cannot work; the message says which option and what is allowed."""


class Priority(str, enum.Enum):
    """How urgently a job should run: critical > high > normal > low."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for critical ... 3 for low: sort ascending to take the most urgent first."""
        return _PRIORITY_RANK[self]

    @classmethod
    def parse(cls, value: Priority | str) -> Priority:
        """Accept a member or its name; reject anything else with the allowed values."""
        if isinstance(value, Priority):
            return value
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(p.value for p in cls)
            raise InvalidJobOptions(f"unknown priority {value!r} (allowed: {allowed})") from None

    def __str__(self) -> str:
        return self.value


_PRIORITY_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.NORMAL: 2, Priority.LOW: 3}


# --------------------------------------------------------------------------------------------
# Backoff policies (serializable: they travel inside the enqueued event)
# --------------------------------------------------------------------------------------------

_Seconds = Annotated[float, Field(ge=0, le=MAX_DELAY_S, allow_inf_nan=False)]
_Jitter = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Backoff(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: str  # each policy pins it to a literal; declared here so it comes first in JSON
    jitter: _Jitter = Field(
        0.0,
        description="Fraction in [0, 1]: the delay is scaled by (1 - jitter * u), u in [0, 1) hashed "
        "from (seed, job id, attempt), so it is spread but replay-deterministic.",
    )
    seed: int | None = Field(None, description="Chooses the jitter sequence (tests pin it).")

    def base_seconds(self, attempt: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def seconds(self, attempt: int, job_id: str = "") -> float:
        """Seconds to wait after the 0-based ``attempt`` failed, jitter included."""
        delay = self.base_seconds(attempt)
        if self.jitter and delay:
            delay *= 1.0 - self.jitter * _jitter_unit(self.seed, job_id, attempt)
        return delay


def _jitter_unit(seed: int | None, job_id: str, attempt: int) -> float:
    """A number in [0, 1) that is a pure function of (seed, job id, attempt)."""
    digest = hashlib.blake2b(f"{seed}\x1f{job_id}\x1f{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class ExponentialBackoff(_Backoff):
    """``min(base_s * 2**attempt, cap_s)``: 1 s, 2 s, 4 s ... capped at 300 s by default."""

    kind: Literal["exponential"] = "exponential"
    base_s: Annotated[float, Field(gt=0, le=MAX_DELAY_S, allow_inf_nan=False)] = Field(
        1.0, description="Delay after attempt 0, doubled for each further attempt."
    )
    cap_s: _Seconds = Field(300.0, description="Upper bound of the delay.")

    def base_seconds(self, attempt: int) -> float:
        if attempt >= 64:
            return self.cap_s
        return min(self.base_s * (1 << max(attempt, 0)), self.cap_s)


class LinearBackoff(_Backoff):
    """``step_s * (attempt + 1)``, optionally capped at ``cap_s``."""

    kind: Literal["linear"] = "linear"
    step_s: _Seconds = Field(description="Added for each further attempt.")
    cap_s: _Seconds | None = Field(None, description="Upper bound of the delay, if any.")

    def base_seconds(self, attempt: int) -> float:
        delay = self.step_s * (max(attempt, 0) + 1)
        return min(delay, self.cap_s) if self.cap_s is not None else min(delay, MAX_DELAY_S)


class ConstantBackoff(_Backoff):
    """The same ``delay_s`` after every attempt."""

    kind: Literal["constant"] = "constant"
    delay_s: _Seconds = Field(description="The delay, every time.")

    def base_seconds(self, attempt: int) -> float:
        return self.delay_s


class NoBackoff(_Backoff):
    """Retry immediately (the retry still goes through the timer, with a zero delay)."""

    kind: Literal["none"] = "none"

    def base_seconds(self, attempt: int) -> float:
        return 0.0


class CallableBackoff(_Backoff):
    """Placeholder for a user callable: only the worker can run it (see module docstring)."""

    kind: Literal["callable"] = "callable"
    name: str = Field(description="The callable's qualified name, for display only.")
    fallback: ExponentialBackoff = Field(
        default_factory=ExponentialBackoff,
        description="Used when no worker evaluated the callable (lease expired, timeout seen by a timer).",
    )

    def base_seconds(self, attempt: int) -> float:
        return self.fallback.base_seconds(attempt)

    def seconds(self, attempt: int, job_id: str = "") -> float:
        return self.fallback.seconds(attempt, job_id)


BackoffSpec = Annotated[
    ExponentialBackoff | LinearBackoff | ConstantBackoff | NoBackoff | CallableBackoff,
    Field(discriminator="kind"),
]
BackoffPolicy = ExponentialBackoff | LinearBackoff | ConstantBackoff | NoBackoff | CallableBackoff


def backoff_delay_s(spec: BackoffPolicy, attempt: int, job_id: str) -> float:
    """Seconds to wait before retrying after the 0-based ``attempt`` failed (pure, replay-safe)."""
    return spec.seconds(attempt, job_id)


# --------------------------------------------------------------------------------------------
# retry_on: exception type names
# --------------------------------------------------------------------------------------------


def exception_type_name(exc_type: type[BaseException]) -> str:
    """``ValueError`` for builtins, ``package.module.QualName`` for everything else."""
    module = exc_type.__module__
    if module == "builtins":
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"


def matches_retry_on(exc_type: type[BaseException], retry_on: Sequence[str]) -> bool:
    """Whether ``exc_type`` or one of its base classes is named in ``retry_on``.

    Names match either fully qualified (``myapp.errors.Transient``) or by bare class name
    (``Transient``), so the default ``("Exception",)`` retries every ordinary exception.
    """
    names = set(retry_on)
    return any(klass.__qualname__ in names or exception_type_name(klass) in names for klass in exc_type.__mro__)


# --------------------------------------------------------------------------------------------
# The serializable spec (inside `enqueued`) and the user-facing options
# --------------------------------------------------------------------------------------------


#: A status a ``unique_for`` window's job may refuse later enqueues in (``unique_states``), and those
#: it must (a job not ended yet cannot run again; a dead-lettered one waits for an operator).
UniqueState = Literal["waiting", "pending", "scheduled", "claimed", "running", "retrying", "dead_lettered", "completed",
                      "cancelled", "discarded"]
UNIQUE_STATES_REQUIRED = ("waiting", "pending", "scheduled", "claimed", "running", "retrying", "dead_lettered")

#: What a concurrency limit does with a job that asks for a slot while all are taken.
ConcurrencyStrategy = Literal["queue", "cancel_newest", "cancel_in_progress"]
#: Longest concurrency key and limit name (characters): the key is part of every slot event.
MAX_CONCURRENCY_KEY_CHARS = 200
#: Largest max of a limit: its slot table (holders and queue) must fit one changelog record.
MAX_CONCURRENCY = 1_000
#: Largest burst of a rate limit (starts let through at once beyond the rate).
MAX_RATE_BURST = 10_000
#: The key of a limit given no key: every job of the limit shares one owner.
WHOLE_LIMIT_KEY = "*"
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_PERIOD_MS = {"s": 1_000, "sec": 1_000, "second": 1_000, "m": 60_000, "min": 60_000, "minute": 60_000,
                   "h": 3_600_000, "hour": 3_600_000}


def rate_interval_ms(rate: str) -> int:
    """The spacing of a rate's starts in whole milliseconds, rounded up (so never faster than the
    rate): ``"20/s"`` is 50, ``"3/s"`` 334, ``"100/m"`` 600. ``ValueError`` names what is allowed."""
    match = _RATE.match(rate) if isinstance(rate, str) else None
    if match is None:
        raise ValueError(f"rate must be a count per second, minute or hour such as '20/s', '100/m' or '5000/h', "
                         f"got {rate!r}")
    count, period_ms = int(match.group(1)), _RATE_PERIOD_MS[match.group(2)]
    if not 1 <= count <= period_ms:
        raise ValueError(f"rate {rate!r}: the count must be from 1 to {period_ms:,} per {match.group(2)} "
                         f"(at most one start per millisecond)")
    return -(-period_ms // count)


def _canonical_rate(rate: str) -> str:
    match = _RATE.match(rate)
    assert match is not None
    return f"{int(match.group(1))}/{match.group(2)[0]}"


class ConcurrencySpec(BaseModel):
    """A concurrency limit as a job carries it: the key already resolved (docs/flow-control.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    limit: Annotated[str, Field(min_length=1, max_length=MAX_CONCURRENCY_KEY_CHARS)] = Field(
        description="The limit's name (the job name unless given): keys of different limits never share slots."
    )
    key: Annotated[str, Field(min_length=1, max_length=MAX_CONCURRENCY_KEY_CHARS)] = Field(
        description="The key whose jobs share max slots."
    )
    max: Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)] | None = Field(
        None, description="Jobs of the key claimed or running at once (None: no cap, only a rate)."
    )
    strategy: ConcurrencyStrategy = Field(
        "queue", description="When every slot is taken: queue (wait in order), cancel_newest (the asking job is "
        "cancelled), cancel_in_progress (the oldest holder is cancelled, the asking job runs after it)."
    )
    rate: Annotated[str, Field(pattern=r"^[0-9]+/[smh]$", max_length=20)] | None = Field(
        None, description="Starts of the key per second, minute or hour ('20/s'), spaced evenly by event time."
    )
    burst: Annotated[int, Field(ge=1, le=MAX_RATE_BURST)] = Field(
        1, description="Starts let through at once beyond the rate's spacing (1: none)."
    )

    @model_validator(mode="after")
    def _check_spec(self) -> ConcurrencySpec:
        if self.max is None and self.rate is None:
            raise ValueError("a limit needs a max, a rate or both")
        if self.rate is not None:
            rate_interval_ms(self.rate)
        if self.max is None and self.strategy != "queue":
            raise ValueError(f"strategy {self.strategy} needs a max (slots to take); a rate alone only queues")
        return self


class JobOptionsSpec(BaseModel):
    """The part of a job's options the processor needs, in serializable form."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    max_attempts: Annotated[int, Field(ge=1)] = Field(DEFAULT_MAX_ATTEMPTS, description="Attempt budget (>= 1).")
    backoff: BackoffSpec = Field(default_factory=ExponentialBackoff, description="Delay before each retry.")
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        DEFAULT_TIMEOUT_S, description="Seconds one attempt may run."
    )
    ttl_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="Seconds the job may wait before it starts; then it expires."
    )
    dead_letter_retention_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="Seconds a dead-lettered job stays retryable before it is discarded (None: the processor's default)."
    )
    retry_on: tuple[str, ...] = Field(
        ("Exception",), description="Exception type names that retry; anything else fails at once."
    )
    capabilities: tuple[str, ...] = Field((), description="Capabilities a worker must have to run the job.")
    max_snoozes: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        DEFAULT_MAX_SNOOZES, description="How often the job may return Snooze; one more fails the attempt like an error."
    )
    unique_for_s: Annotated[float, Field(ge=MIN_WINDOW_S, le=MAX_WINDOW_S, allow_inf_nan=False)] | None = Field(
        None, description="Uniqueness window (seconds of event time): one job per idempotency key per window, later "
        "enqueues in it are refused (docs/flow-control.md)."
    )
    unique_states: tuple[UniqueState, ...] | None = Field(
        None, description="With unique_for: the statuses in which the window's job refuses a later enqueue (None: "
        "all). An enqueue of the window after the job ended in a status left out runs the job again, under the "
        "same id (docs/flow-control.md)."
    )
    debounce_s: Annotated[float, Field(ge=MIN_WINDOW_S, le=MAX_WINDOW_S, allow_inf_nan=False)] | None = Field(
        None, description="Debounce window (seconds of event time): a later enqueue with the same key in the window "
        "replaces the waiting job's args and starts it this long after itself (docs/flow-control.md)."
    )
    concurrency: ConcurrencySpec | None = Field(
        None, description="Concurrency limit: at most max jobs of its key claimed or running at once, across every "
        "worker and partition (docs/flow-control.md)."
    )


def _seconds(name: str, value: float | timedelta | None, *, allow_zero: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"{name} must be a number of seconds or a timedelta, got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be a finite number of seconds, got {seconds}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value if not isinstance(value, timedelta) else seconds}")
    return seconds


class Limit(BaseModel):
    """A limit per key: ``@app.job(concurrency=Limit(key=lambda a: a["tenant"], max=2, rate="20/s"))``.

    ``max``: at most this many jobs with the same key are claimed or running at once, across every
    worker and partition. ``rate``: at most this many of them start per second, minute or hour
    (``"20/s"``, ``"100/m"``, ``"5000/h"``), spaced evenly by event time, with ``burst`` starts
    let through at once beyond the spacing (default 1: none); a job over the rate waits, it is not
    failed. Give ``max``, ``rate`` or both. ``key`` is a value or a function of the job's args
    (like ``idempotency_key``); without a key every job of the limit shares it (a limit per job
    type). ``strategy`` says what happens to a job that asks while every slot is taken:
    ``"queue"`` (it waits, in order), ``"cancel_newest"`` (it is cancelled),
    ``"cancel_in_progress"`` (the oldest running one is cancelled, and this one runs once it
    ended); the cancelling ones need a ``max``. ``name`` names the limit (default: the job's
    name); jobs of different types with the same ``name`` share its slots and rate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    key: str | Callable[[Mapping[str, Any]], str] | None = None
    max: int | None = None
    strategy: ConcurrencyStrategy = "queue"
    name: str | None = None
    rate: str | None = None
    burst: int | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidJobOptions(f"concurrency: {_describe_errors(exc)}") from None

    @field_validator("key", mode="before")
    @classmethod
    def _check_key(cls, value: Any) -> Any:
        if value is None or callable(value):
            return value
        if isinstance(value, str) and 0 < len(value) <= MAX_CONCURRENCY_KEY_CHARS:
            return value
        raise ValueError(f"concurrency key must be a non-empty string (<= {MAX_CONCURRENCY_KEY_CHARS} chars) or a "
                         f"callable of the args, got {value!r}")

    @field_validator("max", mode="before")
    @classmethod
    def _check_max(cls, value: Any) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency max must be an integer from 1 to {MAX_CONCURRENCY:,}, got {value!r}")
        return value

    @field_validator("strategy", mode="before")
    @classmethod
    def _check_strategy(cls, value: Any) -> str:
        if value not in get_args(ConcurrencyStrategy):
            raise ValueError(f"concurrency strategy must be one of {', '.join(get_args(ConcurrencyStrategy))}, "
                             f"got {value!r}")
        return value  # type: ignore[no-any-return]  # checked above

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and 0 < len(value) <= MAX_CONCURRENCY_KEY_CHARS):
            return value
        raise ValueError(f"concurrency name must be a non-empty string (<= {MAX_CONCURRENCY_KEY_CHARS} chars), "
                         f"got {value!r}")

    @field_validator("rate", mode="before")
    @classmethod
    def _check_rate(cls, value: Any) -> str | None:
        if value is None:
            return None
        rate_interval_ms(value)  # raises with what is allowed
        return _canonical_rate(value)

    @field_validator("burst", mode="before")
    @classmethod
    def _check_burst(cls, value: Any) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RATE_BURST:
            raise ValueError(f"concurrency burst must be an integer from 1 to {MAX_RATE_BURST:,}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_limit(self) -> Limit:
        if self.max is None and self.rate is None:
            raise ValueError("give max (jobs of a key at once), rate (starts per second, minute or hour) or both")
        if self.burst is not None and self.rate is None:
            raise ValueError("burst needs a rate")
        if self.max is None and self.strategy != "queue":
            raise ValueError(f"strategy {self.strategy!r} needs a max (slots to take); with a rate alone jobs "
                             f"only wait")
        return self

    def resolve(self, job_name: str, args: Mapping[str, Any]) -> ConcurrencySpec:
        """The limit as the job carries it, its key computed from ``args``."""
        key = self.key
        if key is None:
            key = WHOLE_LIMIT_KEY
        elif not isinstance(key, str):
            key = key(args)
            if not isinstance(key, str) or not key or len(key) > MAX_CONCURRENCY_KEY_CHARS:
                raise InvalidJobOptions(f"concurrency key function returned {key!r}; return a non-empty string "
                                        f"(<= {MAX_CONCURRENCY_KEY_CHARS} chars)")
        return ConcurrencySpec(limit=self.name or job_name, key=key, max=self.max, strategy=self.strategy,
                               rate=self.rate, burst=self.burst or 1)


class JobOptions(BaseModel):
    """Options of a job type, overridable per enqueue (``options.merged(priority="high")``).

    Durations are seconds (int/float) or ``timedelta``; they are stored as seconds. Anything
    invalid raises ``InvalidJobOptions`` naming the option and what is allowed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    queue: str = DEFAULT_QUEUE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: BackoffPolicy | Callable[[int], float] = Field(default_factory=ExponentialBackoff)
    retry_on: tuple[str, ...] = ("Exception",)
    timeout: float = DEFAULT_TIMEOUT_S
    priority: Priority = Priority.NORMAL
    ttl: float | None = None
    dead_letter_retention: float | None = None
    idempotency_key: str | Callable[[Mapping[str, Any]], str] | None = None
    run_at: datetime | None = None
    delay: float | None = None
    capabilities: tuple[str, ...] = ()
    max_snoozes: int = DEFAULT_MAX_SNOOZES
    on_dependency_failure: DependencyFailure = "cancel"
    unique_for: float | None = None
    unique_states: tuple[UniqueState, ...] | None = None
    debounce: float | None = None
    concurrency: Limit | None = None

    _KNOWN: ClassVar[tuple[str, ...]] = (
        "queue", "max_attempts", "backoff", "retry_on", "timeout", "priority", "ttl",
        "dead_letter_retention", "idempotency_key", "run_at", "delay", "capabilities",
        "max_snoozes", "on_dependency_failure", "unique_for", "unique_states", "debounce", "concurrency",
    )  # fmt: skip

    def __init__(self, **data: Any) -> None:
        unknown = sorted(set(data) - set(self._KNOWN))
        if unknown:
            raise InvalidJobOptions(
                f"unknown job option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(self._KNOWN)})"
            )
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidJobOptions(_describe_errors(exc)) from None

    @field_validator("queue", mode="before")
    @classmethod
    def _check_queue(cls, value: Any) -> str:
        if not isinstance(value, str) or not QUEUE_NAME_RE.fullmatch(value):
            raise ValueError(f"invalid queue name {value!r}: use 1-100 characters from A-Z a-z 0-9 . _ -")
        return value

    @field_validator("max_attempts", mode="before")
    @classmethod
    def _check_max_attempts(cls, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"max_attempts must be an integer >= 1, got {value!r}")
        if value < 1:
            raise ValueError(f"max_attempts must be >= 1, got {value}")
        return value

    @field_validator("backoff", mode="before")
    @classmethod
    def _check_backoff(cls, value: Any) -> Any:
        if isinstance(value, (ExponentialBackoff, LinearBackoff, ConstantBackoff, NoBackoff, CallableBackoff)):
            return value
        if value is None:
            return NoBackoff()
        if callable(value):
            return value
        raise ValueError(
            "backoff must be ExponentialBackoff, LinearBackoff, ConstantBackoff, NoBackoff or a "
            f"callable of the 0-based attempt returning seconds, got {type(value).__name__}"
        )

    @field_validator("retry_on", mode="before")
    @classmethod
    def _check_retry_on(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, (type, str)):
            value = (value,)
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ValueError(f"retry_on must be exception types or their names, got {type(value).__name__}")
        names: list[str] = []
        for item in value:
            if isinstance(item, type) and issubclass(item, BaseException):
                names.append(exception_type_name(item))
            elif isinstance(item, str) and item:
                names.append(item)
            else:
                raise ValueError(f"retry_on entries must be exception types or their names, got {item!r}")
        return tuple(dict.fromkeys(names))

    @field_validator("timeout", mode="before")
    @classmethod
    def _check_timeout(cls, value: Any) -> float:
        seconds = _seconds("timeout", value, allow_zero=False)
        if seconds is None:
            raise ValueError("timeout must be > 0 seconds, got None")
        return seconds

    @field_validator("ttl", mode="before")
    @classmethod
    def _check_ttl(cls, value: Any) -> float | None:
        return _seconds("ttl", value, allow_zero=False)

    @field_validator("dead_letter_retention", mode="before")
    @classmethod
    def _check_dead_letter_retention(cls, value: Any) -> float | None:
        return _seconds("dead_letter_retention", value, allow_zero=False)

    @field_validator("delay", mode="before")
    @classmethod
    def _check_delay(cls, value: Any) -> float | None:
        return _seconds("delay", value, allow_zero=True)

    @field_validator("priority", mode="before")
    @classmethod
    def _check_priority(cls, value: Any) -> Priority:
        try:
            return Priority.parse(value)
        except InvalidJobOptions as exc:
            raise ValueError(str(exc)) from None
        except TypeError:
            raise ValueError(f"unknown priority {value!r} (allowed: critical, high, normal, low)") from None

    @field_validator("run_at", mode="before")
    @classmethod
    def _check_run_at(cls, value: Any) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise ValueError(f"run_at must be a timezone-aware datetime, got {type(value).__name__}")
        if value.utcoffset() is None:
            raise ValueError(f"run_at must be timezone-aware, got naive {value.isoformat()}")
        return utc_ms(value)

    @field_validator("idempotency_key", mode="before")
    @classmethod
    def _check_key(cls, value: Any) -> Any:
        if value is None or callable(value):
            return value
        if isinstance(value, str) and 0 < len(value) <= 512:
            return value
        raise ValueError(f"idempotency_key must be a non-empty string (<= 512 chars) or a callable of the args, got {value!r}")

    @field_validator("capabilities", mode="before")
    @classmethod
    def _check_capabilities(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ValueError(f"capabilities must be a list of names, got {type(value).__name__}")
        for item in value:
            if not isinstance(item, str) or not CAPABILITY_RE.fullmatch(item):
                raise ValueError(f"invalid capability {item!r}: use 1-100 characters from A-Z a-z 0-9 . _ : -")
        return tuple(sorted(set(value)))

    @field_validator("max_snoozes", mode="before")
    @classmethod
    def _check_max_snoozes(cls, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
            raise ValueError(f"max_snoozes must be an integer from 0 to 1,000,000, got {value!r}")
        return value

    @field_validator("on_dependency_failure", mode="before")
    @classmethod
    def _check_on_dependency_failure(cls, value: Any) -> str:
        if value not in DEPENDENCY_FAILURE_CHOICES:
            raise ValueError(f"on_dependency_failure must be 'cancel' or 'run', got {value!r}")
        return value  # type: ignore[no-any-return]  # one of DEPENDENCY_FAILURE_CHOICES, checked above

    @field_validator("unique_for", "debounce", mode="before")
    @classmethod
    def _check_window(cls, value: Any, info: Any) -> float | None:
        return window_seconds(info.field_name, value)

    @field_validator("unique_states", mode="before")
    @classmethod
    def _check_unique_states(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        states = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else None
        known = get_args(UniqueState)
        if not states or any(state not in known for state in states):
            raise ValueError(f"unique_states must be statuses from {', '.join(known)}, got {value!r}")
        missing = [state for state in UNIQUE_STATES_REQUIRED if state not in states]
        if missing:
            raise ValueError(f"unique_states must include every status of a job not ended yet "
                             f"({', '.join(UNIQUE_STATES_REQUIRED)}): a job of the window can run again only once it "
                             f"ended; leave out completed, cancelled or discarded; missing {', '.join(missing)}")
        return tuple(state for state in known if state in states)

    @field_validator("concurrency", mode="before")
    @classmethod
    def _check_concurrency(cls, value: Any) -> Limit | None:
        if value is None or isinstance(value, Limit):
            return value
        if isinstance(value, dict):
            return Limit(**value)
        raise ValueError(f"concurrency must be a Limit(key=..., max=...), got {type(value).__name__}")

    @model_validator(mode="after")
    def _check_schedule(self) -> JobOptions:
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give run_at or delay, not both")
        if self.unique_states is not None and self.unique_for is None:
            raise ValueError("unique_states needs unique_for: they are the statuses in which the window's job refuses "
                             "a later enqueue")
        if self.unique_for is not None and self.debounce is not None:
            raise ValueError(
                "give unique_for or debounce, not both: unique_for keeps the first job of a window and refuses the "
                "later ones, debounce keeps one job and gives it the last args"
            )
        if self.debounce is not None and (self.run_at is not None or self.delay is not None):
            raise ValueError("debounce sets when the job starts (debounce after the last enqueue): give no run_at or delay")
        if self.concurrency is not None and self.debounce is not None:
            raise ValueError("a concurrency limit cannot be combined with debounce yet (a debounce may put a job back "
                             "after its slot was granted)")
        return self

    # ---- derived values ------------------------------------------------------------------

    def merged(self, **overrides: Any) -> JobOptions:
        """These options with ``overrides`` applied (validated again). ``run_at`` and ``delay`` replace each other."""
        data = {name: getattr(self, name) for name in self._KNOWN}
        if "run_at" in overrides:
            data["delay"] = None
        if "delay" in overrides:
            data["run_at"] = None
        data.update(overrides)
        return JobOptions(**data)

    def backoff_spec(self) -> BackoffPolicy:
        """The serializable backoff (a callable becomes ``CallableBackoff`` with its name)."""
        if isinstance(self.backoff, (ExponentialBackoff, LinearBackoff, ConstantBackoff, NoBackoff, CallableBackoff)):
            return self.backoff
        name = getattr(self.backoff, "__qualname__", None) or type(self.backoff).__qualname__
        module = getattr(self.backoff, "__module__", None)
        return CallableBackoff(name=f"{module}.{name}" if module else name)

    @property
    def callable_backoff(self) -> Callable[[int], float] | None:
        """The user's backoff callable, if the backoff is one (the worker evaluates it), else None."""
        if isinstance(self.backoff, BaseModel) or not callable(self.backoff):
            return None
        return self.backoff

    def to_spec(self, job_name: str | None = None, args: Mapping[str, Any] | None = None) -> JobOptionsSpec:
        """The serializable options carried by the ``enqueued`` event (a concurrency limit's key is
        computed from ``args``; its name defaults to ``job_name``)."""
        concurrency = None
        if self.concurrency is not None:
            concurrency = self.concurrency.resolve(job_name or "job", args or {})
        return JobOptionsSpec(
            max_attempts=self.max_attempts,
            backoff=self.backoff_spec(),
            timeout_s=self.timeout,
            ttl_s=self.ttl,
            dead_letter_retention_s=self.dead_letter_retention,
            retry_on=self.retry_on,
            capabilities=self.capabilities,
            max_snoozes=self.max_snoozes,
            unique_for_s=self.unique_for,
            unique_states=self.unique_states,
            debounce_s=self.debounce,
            concurrency=concurrency,
        )

    @classmethod
    def from_spec(cls, spec: JobOptionsSpec, **others: Any) -> JobOptions:
        """The options a spec was made from (the inverse of `to_spec`), with `others` (queue,
        priority, idempotency key ...) that the spec does not carry."""
        return cls(
            max_attempts=spec.max_attempts,
            backoff=spec.backoff,
            timeout=spec.timeout_s,
            ttl=spec.ttl_s,
            dead_letter_retention=spec.dead_letter_retention_s,
            retry_on=spec.retry_on,
            capabilities=spec.capabilities,
            max_snoozes=spec.max_snoozes,
            unique_for=spec.unique_for_s,
            unique_states=spec.unique_states,
            debounce=spec.debounce_s,
            concurrency=Limit(key=spec.concurrency.key, max=spec.concurrency.max, strategy=spec.concurrency.strategy,
                              name=spec.concurrency.limit, rate=spec.concurrency.rate,
                              burst=spec.concurrency.burst if spec.concurrency.rate else None)
            if spec.concurrency is not None else None,
            **others,
        )

    def resolve_run_at(self, now: datetime) -> datetime | None:
        """When the job should first run: ``run_at``, or ``now + delay``, or None (at once)."""
        if self.run_at is not None:
            return self.run_at
        if self.delay:
            return add_seconds(utc_ms(now), self.delay)
        return None

    def resolve_idempotency_key(self, args: Mapping[str, Any]) -> str | None:
        """The idempotency key for these args (calls the key function when one was given)."""
        key = self.idempotency_key
        if key is None or isinstance(key, str):
            return key
        value = key(args)
        if not isinstance(value, str) or not value or len(value) > 512:
            raise InvalidJobOptions(f"idempotency_key function returned {value!r}; return a non-empty string (<= 512 chars)")
        return value


def window_seconds(name: str, value: Any) -> float | None:
    """A flow-control window (``unique_for``, ``debounce``) in seconds: a number of seconds, a
    ``timedelta`` or text like ``"10m"`` (``durations.parse_duration``), from ``MIN_WINDOW_S``
    (1 ms) to ``MAX_WINDOW_S`` (30 days); None for none. ``ValueError`` names what is wrong."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{name} must be a duration like '10m', '30s' or '250ms', a timedelta or a number of "
                             f"seconds: {exc}") from None
    seconds = _seconds(name, value, allow_zero=False)
    assert seconds is not None
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise ValueError(f"{name} must be from {MIN_WINDOW_S:g} s (1 ms) to {MAX_WINDOW_S:g} s (30 days, "
                         f"MAX_WINDOW_S), got {seconds:g} s")
    return round(seconds, 3)


def _describe_errors(exc: ValidationError) -> str:
    """One line per problem, phrased as the validator phrased it (no pydantic boilerplate)."""
    return "; ".join(issue.message if issue.kind == "value_error" else f"{issue.where or 'options'}: {issue.message}"
                     for issue in issues(exc))


def check_depends_on(depends_on: Any, job_id: str | None = None) -> tuple[str, ...]:
    """``depends_on`` as a tuple of distinct job ids, or ``InvalidJobOptions`` saying what is wrong.

    Ids must be strings of 1-128 characters (the event schema's job id), at most
    ``limits.MAX_DEPENDENCIES`` of them, and not the job's own id (``job_id``, when known).
    Whether each one exists is the caller's check (``App.enqueue``), with the processor's
    ``missing`` answer as the backstop.
    """
    if isinstance(depends_on, str) or not isinstance(depends_on, (list, tuple, set, frozenset)):
        raise InvalidJobOptions(f"depends_on must be a list of job ids, got {type(depends_on).__name__}")
    ids = list(dict.fromkeys(depends_on))
    if len(ids) > MAX_DEPENDENCIES:
        raise InvalidJobOptions(f"depends_on names {len(ids)} jobs, over the limit of {MAX_DEPENDENCIES} (MAX_DEPENDENCIES)")
    for item in ids:
        if not isinstance(item, str) or not 1 <= len(item) <= 128:
            raise InvalidJobOptions(f"depends_on entries must be job ids (strings of 1-128 characters), got {item!r}")
        if item == job_id:
            raise InvalidJobOptions(f"job {job_id} cannot depend on itself")
    return tuple(ids)
