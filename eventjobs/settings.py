"""Settings from the environment (prefix `EVENTJOBS_`), with units in their names.

Secrets (SASL password, SSL key password, the ClickHouse URL which may carry credentials) are
`SecretStr`, so a settings object printed in a log or a traceback shows `**********`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
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
    max_event_bytes: int = Field(1_048_576, gt=0)

    clickhouse_url: SecretStr | None = None
    state_dir: Path = Path(".eventjobs")


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI options) taking precedence."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**given)  # type: ignore[arg-type]
