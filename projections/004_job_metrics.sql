-- Per-minute metrics per queue and job name, fed by job_events (counted rows only).
-- Counts are count states; wait (ready -> attempt start) and run duration (attempt start ->
-- outcome) are quantilesDeterministic states sampled by a hash of the event id, so a rebuild
-- merges to exactly the same numbers as the live table whatever the order of merges.
CREATE TABLE IF NOT EXISTS job_metrics_1m
(
    minute              DateTime('UTC'),
    queue               LowCardinality(String),
    name                LowCardinality(String),
    enqueued            AggregateFunction(countIf, UInt8),
    started             AggregateFunction(countIf, UInt8),
    succeeded_attempts  AggregateFunction(countIf, UInt8),
    failed_attempts     AggregateFunction(countIf, UInt8),
    completed           AggregateFunction(countIf, UInt8),
    failed              AggregateFunction(countIf, UInt8),
    retried             AggregateFunction(countIf, UInt8),
    dead_lettered       AggregateFunction(countIf, UInt8),
    cancelled           AggregateFunction(countIf, UInt8),
    expired             AggregateFunction(countIf, UInt8),
    duplicates_rejected AggregateFunction(countIf, UInt8),
    wait_quantiles      AggregateFunction(quantilesDeterministicIf(0.5, 0.95, 0.99), Float64, UInt64, UInt8),
    duration_quantiles  AggregateFunction(quantilesDeterministicIf(0.5, 0.95, 0.99), Float64, UInt64, UInt8),
    duration_sum        AggregateFunction(sumIf, Float64, UInt8)
)
ENGINE = AggregatingMergeTree
ORDER BY (queue, name, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS job_metrics_1m_mv TO job_metrics_1m AS
SELECT
    toStartOfMinute(occurred_at) AS minute,
    queue,
    name,
    countStateIf(type = 'enqueued') AS enqueued,
    countStateIf(type = 'attempt_started') AS started,
    countStateIf(type = 'attempt_succeeded') AS succeeded_attempts,
    countStateIf(type IN ('attempt_failed', 'attempt_timed_out', 'lease_expired')) AS failed_attempts,
    countStateIf(type = 'completed') AS completed,
    countStateIf(type = 'failed') AS failed,
    countStateIf(type = 'retry_scheduled') AS retried,
    countStateIf(type = 'dead_lettered') AS dead_lettered,
    countStateIf(type = 'cancelled') AS cancelled,
    countStateIf(type = 'expired') AS expired,
    countStateIf(type = 'duplicate_rejected') AS duplicates_rejected,
    quantilesDeterministicStateIf(0.5, 0.95, 0.99)(wait_s, cityHash64(event_id), has_wait = 1) AS wait_quantiles,
    quantilesDeterministicStateIf(0.5, 0.95, 0.99)(duration_s, cityHash64(event_id), has_duration = 1) AS duration_quantiles,
    sumStateIf(duration_s, has_duration = 1) AS duration_sum
FROM job_events
WHERE counted = 1
GROUP BY minute, queue, name;
