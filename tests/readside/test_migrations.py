"""`projections/` applied in order, once; changed or malformed files give clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventjobs.clickhouse import Backend
from eventjobs.readside.migrations import (
    ProjectionError,
    apply_migrations,
    default_projections_dir,
    load_migrations,
    migration_status,
    split_statements,
)

EXPECTED_TABLES = {"job_events", "jobs", "dead_letters", "job_metrics_1m", "job_metrics_1m_mv",
                   "projector_progress", "projector_control", "projector_lag", "schema_migrations"}


def test_split_statements_ignores_semicolons_in_strings_names_and_comments() -> None:
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE a (x String DEFAULT 'a;b') ENGINE = Memory;
    /* block; comment */ SELECT `we;ird`, "q;" FROM a;;
    SELECT 'it''s; fine', 'esc\\'; still'
    """
    assert split_statements(sql) == [
        "CREATE TABLE a (x String DEFAULT 'a;b') ENGINE = Memory",
        'SELECT `we;ird`, "q;" FROM a',
        "SELECT 'it''s; fine', 'esc\\'; still'",
    ]


def test_projection_files_apply_in_order_and_a_second_apply_changes_nothing(backend: Backend) -> None:
    first = apply_migrations(backend, default_projections_dir())
    second = apply_migrations(backend, default_projections_dir())
    assert [r.action for r in first] == ["applied"] * len(first)
    assert [r.action for r in second] == ["skipped"] * len(first)
    tables = {row[0] for row in backend.query("SHOW TABLES").rows}
    assert EXPECTED_TABLES <= tables
    assert backend.query("SELECT count() FROM schema_migrations").scalar() == len(first)
    status = migration_status(backend, default_projections_dir())
    assert all(s.applied_at is not None and not s.changed for s in status)


def test_a_changed_applied_file_is_refused(backend: Backend, tmp_path: Path) -> None:
    (tmp_path / "001_t.sql").write_text("CREATE TABLE IF NOT EXISTS t (x UInt8) ENGINE = MergeTree ORDER BY x;")
    apply_migrations(backend, tmp_path)
    (tmp_path / "001_t.sql").write_text("CREATE TABLE IF NOT EXISTS t (x UInt16) ENGINE = MergeTree ORDER BY x;")
    with pytest.raises(ProjectionError, match=r"001_t\.sql: this file changed after it was applied"):
        apply_migrations(backend, tmp_path)
    assert migration_status(backend, tmp_path)[0].changed


def test_a_malformed_file_names_the_file_the_statement_and_clickhouses_message(backend: Backend,
                                                                               tmp_path: Path) -> None:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE IF NOT EXISTS ok (x UInt8) ENGINE = MergeTree ORDER BY x;")
    (tmp_path / "002_bad.sql").write_text(
        "CREATE TABLE IF NOT EXISTS b1 (x UInt8) ENGINE = MergeTree ORDER BY x;\n"
        "CREATE TABLE b2 (x UInt8 ENGINE = MergeTree ORDER BY x;\n"
    )
    with pytest.raises(ProjectionError) as error:
        apply_migrations(backend, tmp_path)
    message = str(error.value)
    assert "002_bad.sql" in message and "statement 2 of 2" in message and "Syntax error" in message
    # the good file is recorded, the bad one is not: fixing it and applying again works
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE IF NOT EXISTS b2 (x UInt8) ENGINE = MergeTree ORDER BY x;")
    assert [r.action for r in apply_migrations(backend, tmp_path)] == ["skipped", "applied"]


def test_badly_named_or_duplicate_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1-first.sql").write_text("SELECT 1")
    with pytest.raises(ProjectionError, match="NNN_name.sql"):
        load_migrations(tmp_path)
    (tmp_path / "1-first.sql").unlink()
    (tmp_path / "001_a.sql").write_text("SELECT 1")
    (tmp_path / "001_b.sql").write_text("SELECT 2")
    with pytest.raises(ProjectionError, match="version 1 is also used"):
        load_migrations(tmp_path)
