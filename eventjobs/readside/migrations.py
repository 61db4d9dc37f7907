"""Projection SQL as data: `projections/NNN_name.sql`, applied in order, each once.

A migration log table (`schema_migrations`) records `(version, name, checksum, applied_at)` of
every file that ran. Applying again skips recorded files; a recorded file whose content changed
is refused (the tables were built from the old text: add a new numbered file instead). A file
ClickHouse rejects stops the run with the file, the statement number and ClickHouse's message;
statements use IF NOT EXISTS, so fixing the file and applying again is safe.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import Literal

from eventjobs.clickhouse.backend import Backend, quote_identifier
from eventjobs.clickhouse.errors import ClickHouseError, ClickHouseQueryError

_FILE_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
_SOURCE_PROJECTIONS_DIR = Path(__file__).resolve().parent.parent.parent / "projections"
MIGRATION_TABLE = "schema_migrations"


class ProjectionError(ClickHouseError):
    """A projection file is malformed, changed after it was applied, or rejected by ClickHouse."""


def default_projections_dir() -> Path:
    """`projections/` of the source checkout, else of the working directory."""
    return _SOURCE_PROJECTIONS_DIR if _SOURCE_PROJECTIONS_DIR.is_dir() else Path.cwd() / "projections"


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        return split_statements(self.sql)


@dataclass(frozen=True)
class MigrationReport:
    version: int
    name: str
    action: Literal["applied", "skipped"]
    statements: int


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None
    changed: bool


def split_statements(sql: str) -> list[str]:
    """Statements separated by `;`, ignoring `;` inside strings, quoted names and comments.

    Comments are dropped, so a statement that is only a comment does not count.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char in ("'", '"', "`"):
            end = _quoted_end(sql, i)
            current.append(sql[i:end])
            i = end
        elif sql.startswith("--", i) or char == "#":
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = n if close < 0 else close + 2
            current.append(" ")
        elif char == ";":
            _flush(current, statements)
            i += 1
        else:
            current.append(char)
            i += 1
    _flush(current, statements)
    return statements


def _quoted_end(sql: str, start: int) -> int:
    quote = sql[start]
    i = start + 1
    while i < len(sql):
        if sql[i] == "\\":
            i += 2
            continue
        if sql[i] == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return len(sql)  # unterminated: ClickHouse will say so, naming the statement


def _flush(current: list[str], statements: list[str]) -> None:
    text = "".join(current).strip()
    if text:
        statements.append(text)
    current.clear()


_VIEW = re.compile(r"^CREATE\s+MATERIALIZED\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<view>\w+)\s+TO\s+(?P<table>\w+)"
                   r"\s+AS\s+(?P<select>SELECT\b.*)$", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class ViewDefinition:
    """A materialized view a projection file creates: the table it writes to and its SELECT,
    as the file states them (the one place that SELECT is written)."""

    view: str
    table: str
    select: str


def view_definitions(directory: Path) -> dict[str, ViewDefinition]:
    """Every `CREATE MATERIALIZED VIEW <view> TO <table> AS SELECT ...` of the projection files, by view."""
    views: dict[str, ViewDefinition] = {}
    for migration in load_migrations(directory):
        for statement in migration.statements():
            match = _VIEW.match(statement)
            if match is not None:
                views[match["view"]] = ViewDefinition(match["view"], match["table"], match["select"])
    return views


def load_migrations(directory: Path) -> list[Migration]:
    """The numbered SQL files of `directory`, in order; refuses odd names and duplicate numbers."""
    if not directory.is_dir():
        raise ProjectionError(f"projections directory {directory} does not exist")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ProjectionError(
                f"{path}: projection files are named NNN_name.sql (digits, underscore, lowercase name), "
                f"e.g. 006_queue_depth.sql"
            )
        version = int(match.group(1))
        if version in migrations:
            raise ProjectionError(f"{path}: version {version} is also used by {migrations[version].path.name}")
        migrations[version] = Migration(version, match.group(2), path, path.read_text())
    return [migrations[v] for v in sorted(migrations)]


def ensure_database(backend: Backend, database: str) -> None:
    """Create the database and the migration log table if they do not exist."""
    backend.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}", database="")
    backend.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATION_TABLE} (version UInt32, name String, checksum String, "
        f"applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version",
        database=database,
    )


def applied_migrations(backend: Backend, database: str) -> dict[int, tuple[str, str, datetime]]:
    """version -> (name, checksum, applied_at) of what the log says ran."""
    rows = backend.query(f"SELECT version, name, checksum, applied_at FROM {MIGRATION_TABLE} ORDER BY version",
                         database=database).rows
    return {int(version): (name, checksum, applied_at) for version, name, checksum, applied_at in rows}


def apply_migrations(backend: Backend, directory: Path, database: str | None = None) -> list[MigrationReport]:
    """Apply the files not yet applied, in order; idempotent."""
    target = database or backend.database
    migrations = load_migrations(directory)
    ensure_database(backend, target)
    applied = applied_migrations(backend, target)
    reports: list[MigrationReport] = []
    for migration in migrations:
        statements = migration.statements()
        if migration.version in applied:
            _check_unchanged(migration, applied[migration.version])
            reports.append(MigrationReport(migration.version, migration.name, "skipped", len(statements)))
            continue
        _run_file(backend, migration, statements, target)
        backend.insert(MIGRATION_TABLE, ["version", "name", "checksum", "applied_at"],
                       [[migration.version], [migration.name], [migration.checksum],
                        [datetime.now(UTC)]], database=target)
        reports.append(MigrationReport(migration.version, migration.name, "applied", len(statements)))
    return reports


def _check_unchanged(migration: Migration, recorded: tuple[str, str, datetime]) -> None:
    _name, checksum, applied_at = recorded
    if checksum != migration.checksum:
        raise ProjectionError(
            f"{migration.path}: this file changed after it was applied on {applied_at:%Y-%m-%d %H:%M:%S} UTC "
            f"(checksum {checksum[:12]} then, {migration.checksum[:12]} now); applied projection files are "
            f"immutable: restore it and add a new numbered file with the change"
        )


def _run_file(backend: Backend, migration: Migration, statements: list[str], database: str) -> None:
    if not statements:
        raise ProjectionError(f"{migration.path}: no SQL statements found")
    for number, statement in enumerate(statements, start=1):
        try:
            backend.command(statement, database=database)
        except ClickHouseQueryError as error:
            first_line = statement.splitlines()[0][:80]
            raise ProjectionError(
                f"{migration.path}: statement {number} of {len(statements)} ({first_line!r}) failed: {error}"
            ) from None


def migration_status(backend: Backend, directory: Path, database: str | None = None) -> list[MigrationStatus]:
    """Each file with when it was applied (None: pending) and whether it changed since."""
    target = database or backend.database
    ensure_database(backend, target)
    applied = applied_migrations(backend, target)
    return [
        MigrationStatus(
            m.version, m.name, applied[m.version][2] if m.version in applied else None,
            m.version in applied and applied[m.version][1] != m.checksum,
        )
        for m in load_migrations(directory)
    ]
