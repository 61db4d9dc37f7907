"""docs/prometheus/alerts.yml (loaded by docker-compose.yml's Prometheus) is valid, and its three
alerts fire when they should: `promtool check rules` and `promtool test rules`.

promtool comes from Debian's `prometheus` package: a test that needs it is skipped where it is
missing, and fails under `.ci/run`, which installs it (`tests/support/tools.py`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from eventjobs import metrics
from tests.support.tools import PROMTOOL, require_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "prometheus" / "alerts.yml"
CONFIG = ROOT / "docs" / "prometheus" / "prometheus.yml"


def _run(*args: str) -> str:
    done = subprocess.run([require_tool("promtool", PROMTOOL), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_alert_rules_pass_promtool_check() -> None:
    out = _run("check", "rules", str(RULES))
    assert "SUCCESS: 3 rules found" in out


def test_the_compose_prometheus_config_is_valid_and_loads_the_rules() -> None:
    _run("check", "config", str(CONFIG))
    assert yaml.safe_load(CONFIG.read_text())["rule_files"] == ["alerts.yml"]


def test_the_rules_use_the_metric_names_the_services_export() -> None:
    text = RULES.read_text()
    assert metrics.QUEUE_DEPTH in text and metrics.JOBS_FAILED in text
    assert metrics.PROJECTOR_LAG in text and metrics.PROJECTOR_RECORDS_BEHIND in text


def test_the_alerts_fire_on_their_examples(tmp_path: Path) -> None:
    """Queue depth over 1,000 for 5 minutes; more than 10 failed attempts in 5 minutes."""
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # two workers share the queue's partitions: 600 + 500 > 1000
                    {"series": 'eventjobs_queue_depth{queue="emails",priority="normal",instance="w1"}',
                     "values": "600x10"},
                    {"series": 'eventjobs_queue_depth{queue="emails",priority="normal",instance="w2"}',
                     "values": "500x10"},
                    {"series": 'eventjobs_queue_depth{queue="default",priority="normal",instance="w1"}',
                     "values": "999x10"},
                    # 3 failures a minute in one job; 1 a minute in another
                    {"series": 'eventjobs_jobs_failed_total{name="send",queue="emails",instance="p1"}',
                     "values": "0+3x10"},
                    {"series": 'eventjobs_jobs_failed_total{name="add",queue="default",instance="p1"}',
                     "values": "0+1x10"},
                ],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "EventjobsQueueDepthHigh", "exp_alerts": []},
                    {"eval_time": "6m", "alertname": "EventjobsQueueDepthHigh",
                     "exp_alerts": [{"exp_labels": {"severity": "warning", "queue": "emails"},
                                     "exp_annotations": {
                                         "summary": "Queue emails has 1100 ready jobs waiting",
                                         "description": "More than 1,000 ready jobs have been waiting in queue emails "
                                                        "for 5 minutes: add workers or look for slow handlers."}}]},
                    {"eval_time": "8m", "alertname": "EventjobsJobFailures",
                     "exp_alerts": [{"exp_labels": {"severity": "warning", "queue": "emails", "name": "send"},
                                     "exp_annotations": {
                                         "summary": "Job send in queue emails failed 15 times in 5 minutes",
                                         "description": "More than 10 failed attempts of send in the last 5 minutes; "
                                                        "see its errors with `eventjobs jobs` / the dead-letter queue."}}]},
                ],
            }
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests))
    _run("test", "rules", str(path))


def test_the_stalled_projector_alert_fires_on_a_partition_that_stays_behind(tmp_path: Path) -> None:
    """Lag over 2 minutes for 5 minutes, per partition; a short catch-up after a restart does not fire."""
    lag, behind = metrics.PROJECTOR_LAG, metrics.PROJECTOR_RECORDS_BEHIND
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # partition 0 stalls after a minute: its lag grows by 60 s a minute, records pile up
                    {"series": f'{lag}{{partition="0",instance="p1"}}', "values": "0 0 60+60x10"},
                    {"series": f'{behind}{{partition="0",instance="p1"}}', "values": "0 0 40+40x10"},
                    # partition 1 catches up a backlog within 3 minutes: over the threshold, not for 5m
                    {"series": f'{lag}{{partition="1",instance="p1"}}', "values": "900 600 300 0x9"},
                    {"series": f'{behind}{{partition="1",instance="p1"}}', "values": "9000 6000 3000 0x9"},
                ],
                "alert_rule_test": [
                    {"eval_time": "8m", "alertname": "EventjobsProjectorStalled", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "EventjobsProjectorStalled",
                     "exp_alerts": [{"exp_labels": {"severity": "warning", "partition": "0", "instance": "p1"},
                                     "exp_annotations": {
                                         "summary": "Projector behind the event log on partition 0 for 9m 0s",
                                         "description": "The read side (CLI, dashboard) has not caught up with "
                                                        "partition 0 for more than 2 minutes, for 5 minutes now "
                                                        "(360 records behind): see the projector's log for "
                                                        "ClickHouse errors."}}]},
                ],
            }
        ],
    }
    path = tmp_path / "projector_alert_test.yml"
    path.write_text(yaml.safe_dump(tests))
    _run("test", "rules", str(path))
