-- projector_lag: how far the live projector is behind the event log, per partition, as it last
-- reported (every PROJECTOR_END_OFFSETS_EVERY_S, eventjobs/core/limits.py): the next offset it
-- projects, the log's end offset, the records between them, the log time of the last record it
-- projected and its lag in seconds (0 when caught up; readside/lag.py has the rule). The dashboard
-- reads it to show the lag per partition, and recomputes it against the log's end offsets when it
-- can ask Kafka itself, so a stopped projector is seen falling behind. The newest row per partition
-- wins; a restarted projector starts its lag from last_projected_at.
CREATE TABLE IF NOT EXISTS projector_lag
(
    log_partition     UInt16,
    next_offset       UInt64,
    end_offset        UInt64,
    records_behind    UInt64,
    last_projected_at Nullable(DateTime64(3, 'UTC')),
    lag_s             Float64,
    updated_at        DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY log_partition;
