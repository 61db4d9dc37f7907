-- Where the read side has got to, per partition of the log: the newest offset and event time of
-- job_events, kept pre-aggregated in each part (a projection), so `queries.freshness` (every
-- dashboard page and CLI read) and `as_of.check_as_of` read a few rows instead of scanning every
-- event row (10 million rows: about 100 ms scanned, 5 ms from the projection; benchmarks/bench_queries.py).
-- ClickHouse answers `SELECT log_partition, max(log_offset), max(occurred_at) ... GROUP BY
-- log_partition` from it by itself (optimize_use_projections, on by default).
ALTER TABLE job_events ADD PROJECTION IF NOT EXISTS positions
    (SELECT log_partition, max(log_offset), max(occurred_at) GROUP BY log_partition);
ALTER TABLE job_events MATERIALIZE PROJECTION positions SETTINGS mutations_sync = 2;
