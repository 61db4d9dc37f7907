"""The session ClickHouse fixture is a real engine (chdb on disk, or the configured server)."""

from tests.support.clickhouse import ClickHouseTarget


def test_clickhouse_engine_runs_real_sql(clickhouse: ClickHouseTarget) -> None:
    rows = clickhouse.query("SELECT number * 2, toTypeName(number) FROM numbers(3) ORDER BY number")
    assert rows == [(0, "UInt64"), (2, "UInt64"), (4, "UInt64")]
    version = clickhouse.query("SELECT version()")[0][0]
    assert version.split(".")[0].isdigit()
