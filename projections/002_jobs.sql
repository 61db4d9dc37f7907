-- Current state per job: one row per (job, projector batch), the newest version wins.
-- version = offset of the last event folded into the row (a job's events share one partition,
-- so offsets grow with the job's life); query with FINAL. state_json, ready_at and pending_echo
-- let the projector resume folding after a restart.
CREATE TABLE IF NOT EXISTS jobs
(
    job_id            String,
    queue             LowCardinality(String),
    name              LowCardinality(String),
    status            LowCardinality(String),
    priority          LowCardinality(String),
    attempt           UInt32,
    attempts_started  UInt32,
    max_attempts      UInt32,
    enqueued_at       DateTime64(3, 'UTC'),
    run_at            Nullable(DateTime64(3, 'UTC')),
    started_at        Nullable(DateTime64(3, 'UTC')),
    finished_at       Nullable(DateTime64(3, 'UTC')),
    updated_at        DateTime64(3, 'UTC'),
    next_due_at       Nullable(DateTime64(3, 'UTC')),
    worker_id         String,
    result            String,
    error_type        String,
    error_message     String,
    error_traceback   String,
    reason            String,
    progress_percent  Nullable(Float64),
    progress_message  String,
    idempotency_key   String,
    parent_job_id     String,
    args              String,
    state_json        String CODEC(ZSTD(3)),
    ready_at          Nullable(DateTime64(3, 'UTC')),
    pending_echo      Array(String),
    log_partition     UInt16,
    version           UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY job_id;
