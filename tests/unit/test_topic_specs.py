"""Topic specs are data: malformed files get an error naming the file and the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eventjobs.kafka.topics import PRIORITIES, TopicNames, TopicSpecError, load_spec, load_specs, retention_ms

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_specs_load_and_name_every_topic() -> None:
    names = TopicNames("shop", load_specs(ROOT / "topics"))
    assert names.events == "shop.events"
    assert names.job_state == "shop.job-state"
    assert names.timers == "shop.timers"
    assert names.dead_letters == "shop.dead-letters"
    assert names.quarantine == "shop.quarantine"
    assert names.ready("emails", "critical") == "shop.ready.emails.critical"
    assert names.workers == "shop.workers"
    assert names.queue_control == "shop.queue-control"
    planned = [name for name, _ in names.planned(["emails"])]
    singles = sum(not spec_file.spec.family for spec_file in names.specs.values())
    assert singles >= 7  # events, job-state, timers, dead-letters, quarantine, workers, queue-control, ...
    assert len(planned) == singles + len(PRIORITIES)
    assert len(set(planned)) == len(planned)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", 2_592_000_000), ("12h", 43_200_000), ("15m", 900_000), ("90s", 90_000), ("500ms", 500),
     ("forever", -1), (1234, 1234)],
)
def test_retention_units(text: str | int, expected: int) -> None:
    assert retention_ms(text) == expected


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "events.yaml"
    path.write_text(body)
    return path


GOOD = """name: "{namespace}.events"
purpose: test
partitions: 3
replication_factor: 1
cleanup_policy: delete
retention: 7d
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("partitions: 3", "partitions: 0"), "field 'partitions': Input should be greater than 0 (got 0)"),
        (("partitions: 3", "partitions: many"), "field 'partitions': Input should be a valid integer"),
        (("cleanup_policy: delete", "cleanup_policy: shred"), "field 'cleanup_policy'"),
        (("retention: 7d", "retention: 7 weeks"), "field 'retention': Value error, '7 weeks' is not a duration"),
        (('"{namespace}.events"', '"{namespace}.{tenant}"'), "unknown placeholder(s) ['tenant']"),
        (("purpose: test\n", ""), "field 'purpose': Field required"),
        (("retention: 7d", "retention: 7d\ncolour: red"), "field 'colour': Extra inputs are not permitted"),
    ],
)
def test_malformed_spec_names_file_and_field(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(TopicSpecError) as error:
        load_spec(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_invalid_yaml_and_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(TopicSpecError, match="not valid YAML"):
        load_spec(_write(tmp_path, "name: [unclosed"))
    with pytest.raises(TopicSpecError, match="expected a mapping of fields"):
        load_spec(_write(tmp_path, "- just\n- a list\n"))


def test_cli_reports_bad_spec_without_traceback(tmp_path: Path) -> None:
    for source in (ROOT / "topics").glob("*.yaml"):
        (tmp_path / source.name).write_text(source.read_text())
    (tmp_path / "timers.yaml").write_text(GOOD.replace("partitions: 3", "partitions: -2"))
    result = subprocess.run(
        [sys.executable, "-m", "eventjobs.cli", "topics", "apply"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "EVENTJOBS_TOPICS_DIR": str(tmp_path), "COLUMNS": "300"},
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'timers.yaml'}: field 'partitions'" in result.stderr
    assert "Traceback" not in result.stderr


#: What Kafka adds around one record value in a batch (batch header 61 bytes, record header,
#: the key, the quarantine headers of at most 4,000 + 200 bytes): 64 KiB covers it with room.
ENVELOPE_HEADROOM = 65_536


def test_every_topic_accepts_the_largest_record_the_code_may_write() -> None:
    """Every record is at most `max_event_bytes` (events, states, ready records, timers, dead
    letters: `eventjobs.core.limits`); the quarantine copies a whole record of another topic plus
    its reason and origin headers, so it must take the largest of the others and more."""
    from eventjobs.core.limits import DEFAULT_MAX_EVENT_BYTES
    from eventjobs.settings import Settings

    assert Settings.model_fields["max_event_bytes"].default == DEFAULT_MAX_EVENT_BYTES
    specs = load_specs(ROOT / "topics")
    limits = {key: int(file.spec.configs.get("max.message.bytes", 1_048_588)) for key, file in specs.items()}
    for key in ("events", "job-state", "ready", "timers", "dead-letters"):
        assert limits[key] >= DEFAULT_MAX_EVENT_BYTES + ENVELOPE_HEADROOM, (key, limits[key])
    others = max(size for key, size in limits.items() if key != "quarantine")
    assert limits["quarantine"] >= others + ENVELOPE_HEADROOM
