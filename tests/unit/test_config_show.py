"""`eventjobs config show`: the resolved settings, and never a secret given in the environment."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import run_cli

SECRETS = {
    "EVENTJOBS_KAFKA_SASL_PASSWORD": "hunter2-sasl-pw",
    "EVENTJOBS_KAFKA_SSL_KEY_PASSWORD": "ssl-key-pw-42",
    "EVENTJOBS_CLICKHOUSE_URL": "https://alice:ch-pw-9f3@ch.example.com:8443/db?password=qs-pw-77&x=1",
}


@pytest.mark.parametrize("as_json", [False, True])
def test_config_show_masks_every_secret_from_the_environment(as_json: bool) -> None:
    env = {**SECRETS, "EVENTJOBS_NAMESPACE": "shop", "EVENTJOBS_KAFKA_SASL_USERNAME": "alice"}
    result = run_cli("config", "show", *(["--json"] if as_json else []), env=env, timeout=60)

    assert result.returncode == 0, result.stderr
    for secret in ("hunter2-sasl-pw", "ssl-key-pw-42", "ch-pw-9f3", "qs-pw-77"):
        assert secret not in result.stdout and secret not in result.stderr
    assert "shop" in result.stdout
    assert "ch.example.com" in result.stdout
    if as_json:
        shown = json.loads(result.stdout)
        assert shown["namespace"] == "shop"
        assert shown["kafka_sasl_password"] == "**********"
        assert shown["kafka_sasl_username"] == "alice"
        assert shown["clickhouse_url"].startswith("https://alice:***@ch.example.com:8443/db")
        assert shown["retain_completed_s"] == 86400


def test_config_show_masks_a_url_token_without_password() -> None:
    result = run_cli("config", "show", "--json", env={"EVENTJOBS_CLICKHOUSE_URL": "https://tok-abc123@ch.example.com"},
                     timeout=60)
    assert result.returncode == 0, result.stderr
    assert "tok-abc123" not in result.stdout
    assert json.loads(result.stdout)["clickhouse_url"] == "https://***@ch.example.com"
