-- The projector's own bookkeeping.
-- projector_progress: per partition, the offset up to which the jobs / dead_letters rows are
-- written (job_events has its own position: max(log_offset)). After a crash between the two,
-- the projector folds again from here (folding an applied event again changes nothing).
CREATE TABLE IF NOT EXISTS projector_progress
(
    log_partition UInt16,
    state_offset  UInt64
)
ENGINE = ReplacingMergeTree(state_offset)
ORDER BY log_partition;

-- projector_control: small key/value facts: the live projector's heartbeat, and the pause /
-- generation handshake `eventjobs replay --projections` uses to swap rebuilt tables in.
CREATE TABLE IF NOT EXISTS projector_control
(
    key        String,
    value      String,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY key;
