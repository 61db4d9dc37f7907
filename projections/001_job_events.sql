-- Every event of the log, in full: the history of every job.
-- One row per Kafka record of the events topic, with its (log_partition, log_offset): the
-- projector resumes each partition from max(log_offset) + 1, so this insert is its commit point.
-- `outcome` is what the fold made of the event (applied / derived / duplicate / rejected /
-- unknown_job); `counted` says whether it feeds the metrics (applied events and the first echo of
-- a derived event). wait_s / duration_s are computed by the projector from the job's state.
CREATE TABLE IF NOT EXISTS job_events
(
    event_id      String,
    job_id        String,
    type          LowCardinality(String),
    occurred_at   DateTime64(3, 'UTC'),
    queue         LowCardinality(String),
    name          LowCardinality(String),
    attempt       Int32,
    actor         String,
    causation_id  String,
    outcome       LowCardinality(String),
    counted       UInt8,
    reject_reason String,
    status_after  LowCardinality(String),
    has_wait      UInt8,
    wait_s        Float64,
    has_duration  UInt8,
    duration_s    Float64,
    payload       String CODEC(ZSTD(3)),
    log_partition UInt16,
    log_offset    UInt64,
    INDEX occurred_at_minmax occurred_at TYPE minmax GRANULARITY 1,
    INDEX type_set type TYPE set(64) GRANULARITY 4
)
ENGINE = MergeTree
ORDER BY (job_id, occurred_at, log_partition, log_offset);
