-- What is in the dead-letter queue now. A job leaving it (retried, discarded) gets a row with
-- deleted = 1, which FINAL drops; query: SELECT ... FROM dead_letters FINAL.
CREATE TABLE IF NOT EXISTS dead_letters
(
    job_id               String,
    queue                LowCardinality(String),
    name                 LowCardinality(String),
    reason               String,
    error_type           String,
    error_message        String,
    error_traceback      String,
    attempts             UInt32,
    dead_lettered_at     DateTime64(3, 'UTC'),
    dead_letter_event_id String,
    deleted              UInt8,
    version              UInt64
)
ENGINE = ReplacingMergeTree(version, deleted)
ORDER BY job_id;
