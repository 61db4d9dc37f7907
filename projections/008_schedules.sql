-- Periodic schedules as the schedules topic (<ns>.schedules) says: one row per schedule, the
-- newest version wins (version grows with every change: the sum of its definition's stamp and
-- its last tick and trigger in ms). Deleted schedules get deleted = 1, which FINAL drops; query:
-- SELECT ... FROM schedules FINAL. next_tick is the next tick owed after last_tick (or after the
-- definition took effect), NULL while paused; one in the past means no schedule service ran.
CREATE TABLE IF NOT EXISTS schedules
(
    schedule_id     String,
    job             LowCardinality(String),
    rule            String,
    args            String,
    queue           LowCardinality(String),
    catch_up        LowCardinality(String),
    paused          UInt8,
    declared        UInt8,
    last_tick       Nullable(DateTime64(3, 'UTC')),
    last_job_id     String,
    next_tick       Nullable(DateTime64(3, 'UTC')),
    last_triggered  Nullable(DateTime64(3, 'UTC')),
    updated_at      Nullable(DateTime64(3, 'UTC')),
    deleted         UInt8,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version, deleted)
ORDER BY schedule_id;
