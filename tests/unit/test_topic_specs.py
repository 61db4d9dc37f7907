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


def test_every_topic_spec_asks_for_a_replicated_cluster() -> None:
    """What a production cluster should use: three replicas and writes acknowledged by two, so a
    lost broker loses no acknowledged write (a smaller cluster gets min(spec, brokers))."""
    for key, spec_file in load_specs(ROOT / "topics").items():
        assert spec_file.spec.replication_factor == 3, key
        assert spec_file.spec.configs.get("min.insync.replicas") == 2, key


def test_replication_below_the_spec_and_the_cluster_is_drift() -> None:
    from eventjobs.kafka.admin import LiveTopic, drift, effective_configs, min_insync_drift, replication_drift

    spec = load_specs(ROOT / "topics")["events"].spec
    made_on_one_broker = LiveTopic("shop.events", spec.partitions, 1, effective_configs(spec, 1))
    assert replication_drift(spec, made_on_one_broker, brokers=1) == []  # all one broker can hold
    [note] = replication_drift(spec, made_on_one_broker, brokers=3)  # the cluster grew, the topic did not
    assert note.startswith("has 1 replica(s), spec wants 3 and the cluster has 3 broker(s)")
    assert "kafka-reassign-partitions" in note
    assert replication_drift(spec, made_on_one_broker, brokers=2)  # min(3, 2) = 2 replicas possible
    notes = drift(spec, made_on_one_broker, 3, brokers=3)
    assert notes[0] == note and "min.insync.replicas is '1' on the broker, spec says '2'" in notes
    replicated = LiveTopic("shop.events", spec.partitions, 3, effective_configs(spec, 3))
    assert drift(spec, replicated, 3, brokers=3) == [] and min_insync_drift(replicated) == []
    acked_by_one = LiveTopic("shop.events", spec.partitions, 3, {**effective_configs(spec, 3), "min.insync.replicas": "1"})
    assert min_insync_drift(acked_by_one) == [
        "has min.insync.replicas 1 with 3 replicas: an acknowledged write may live on one broker only "
        "(set it to 2, as topics/*.yaml do)"]
    assert min_insync_drift(made_on_one_broker) == []  # one replica: nothing else to wait for
