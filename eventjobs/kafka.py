"""The one place where aiokafka clients are configured (security, acks, idempotence, timeouts)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from eventjobs.settings import Settings


def connection_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap and security options shared by every client; secrets are unwrapped only here."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": int(settings.kafka_request_timeout_s * 1000),
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            password=(
                settings.kafka_ssl_key_password.get_secret_value()
                if settings.kafka_ssl_key_password
                else None
            ),
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return options


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    options = connection_options(settings)
    options.pop("request_timeout_ms")
    return AIOKafkaAdminClient(
        **options, request_timeout_ms=int(settings.kafka_request_timeout_s * 1000)
    )


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """Durable by default: acks=all and the idempotent producer, so no acknowledged write is lost."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 1,
        "max_request_size": max(settings.max_event_bytes * 2, 1_048_576),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """read_committed by default: aborted transactions of a crashed processor are never seen."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)
