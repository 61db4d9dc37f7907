"""Settings from the environment (prefix `EVENTJOBS_`), with units in their names.

Secrets (SASL password, SSL key password, the ClickHouse URL which may carry credentials) are
`SecretStr`, so a settings object printed in a log or a traceback shows `**********`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from eventjobs.core.durations import parse_duration
from eventjobs.core.housekeeping import (
    DEFAULT_DEAD_LETTER_RETENTION_S,
    DEFAULT_RETAIN_COMPLETED_S,
    READY_REPUBLISH_FIRST_S,
)
from eventjobs.core.control import WORKER_HEARTBEAT_S

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_WAIT_CACHE_JOBS = 50_000  # job states `App.wait` keeps in memory, about 1-2 KB each
_SOURCE_TOPICS_DIR = Path(__file__).resolve().parent.parent / "topics"


def default_topics_dir() -> Path:
    """`topics/` of the source checkout, else of the working directory."""
    return _SOURCE_TOPICS_DIR if _SOURCE_TOPICS_DIR.is_dir() else Path.cwd() / "topics"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EVENTJOBS_", extra="ignore", frozen=True, populate_by_name=True
    )

    kafka_bootstrap: str = Field(
        DEFAULT_BOOTSTRAP,
        validation_alias=AliasChoices("EVENTJOBS_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Comma-separated host:port list of Kafka brokers.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_request_timeout_s: float = 30.0

    namespace: str = Field("eventjobs", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,48}$")
    topics_dir: Path = Field(default_factory=default_topics_dir)
    max_event_bytes: int = Field(
        1_048_576, ge=262_144,  # eventjobs.core.limits.MIN_MAX_EVENT_BYTES: the size budgets need that much
        description="Largest event (and job state) written or read; args, results and errors get budgets of it.",
    )
    wait_cache_jobs: int = Field(
        DEFAULT_WAIT_CACHE_JOBS, gt=0,
        description="Latest job states `App.wait` keeps in memory; older ones are looked up in the changelog.",
    )

    worker_heartbeat_s: float = Field(
        WORKER_HEARTBEAT_S, gt=0, validation_alias=AliasChoices("EVENTJOBS_WORKER_HEARTBEAT", "worker_heartbeat_s"),
        description="How often a worker announces itself on the worker registry; it counts as gone after 3 missed.",
    )

    retain_completed_s: float = Field(
        DEFAULT_RETAIN_COMPLETED_S, gt=0, validation_alias=AliasChoices("EVENTJOBS_RETAIN_COMPLETED", "retain_completed_s"),
        description="How long the processor keeps a completed, cancelled or discarded job (and its idempotency key).",
    )
    dead_letter_retention_s: float = Field(
        DEFAULT_DEAD_LETTER_RETENTION_S, gt=0,
        validation_alias=AliasChoices("EVENTJOBS_DEAD_LETTER_RETENTION", "dead_letter_retention_s"),
        description="How long a dead-lettered job waits for a retry before it is discarded (a job option overrides it).",
    )

    republish_after_s: float = Field(
        READY_REPUBLISH_FIRST_S, gt=0, validation_alias=AliasChoices("EVENTJOBS_REPUBLISH_AFTER", "republish_after_s"),
        description="How long a pending job's ready record waits before the processor asks whether it is lost (and "
                    "publishes it again if so); then twice as long after each re-publish, at most a day.",
    )

    @field_validator("retain_completed_s", "dead_letter_retention_s", "worker_heartbeat_s", "republish_after_s",
                     mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        """'24h', '7d', '90s' or a number of seconds."""
        if isinstance(value, str):
            try:
                return parse_duration(value.strip(), default_unit="s").total_seconds()
            except ValueError:
                raise ValueError(f"{value!r} is not a duration; use e.g. 24h, 7d, 90s or a number of seconds") from None
        return value

    metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="Port of a service's Prometheus /metrics endpoint (`--metrics-port`); unset: no metrics served.",
    )
    metrics_host: str = Field("127.0.0.1", description="Address the /metrics endpoint binds (`--metrics-host`).")

    clickhouse_url: SecretStr | None = None
    state_dir: Path = Path(".eventjobs")
    read_api_token: SecretStr | None = Field(
        None, description="Token of the projector's read API (chdb); unset: a fresh random one at every start, "
                          "handed to local commands in the owner record. Never printed.",
    )

    dashboard_host: str = Field("127.0.0.1", description="Address `eventjobs dashboard` binds (`--host`).")
    dashboard_port: int = Field(8080, ge=0, le=65535, description="Port of `eventjobs dashboard` (`--port`).")
    dashboard_token: SecretStr | None = Field(
        None, description="When set, every dashboard request must carry this token (`--token`); required when "
                          "the dashboard binds beyond loopback; never printed.",
    )
    dashboard_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Host names the dashboard answers besides its bound address, localhost, 127.0.0.1 and [::1] "
                        "(comma-separated; `--allowed-host`).",
    )

    @field_validator("dashboard_allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        """'dash.example.com, 10.0.0.5' from the environment, or a list."""
        if isinstance(value, str):
            return tuple(host.strip() for host in value.split(",") if host.strip())
        return value

    @field_validator("read_api_token", mode="after")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty or blank (leave it unset instead)")
        return value


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI options) taking precedence."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**given)  # type: ignore[arg-type]  # pydantic validates each override
