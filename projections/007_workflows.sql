-- Workflows: what a job depends on, what it still waits for (status waiting), which jobs wait
-- for it, and how often it snoozed; parent_job_id (002) names the job that enqueued it, so a
-- parent's children are `WHERE parent_job_id = ...`, helped by a bloom filter index.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS depends_on Array(String) DEFAULT [];
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS waiting_for Array(String) DEFAULT [];
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS dependents Array(String) DEFAULT [];
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS snoozes UInt32 DEFAULT 0;
ALTER TABLE jobs ADD INDEX IF NOT EXISTS parent_job_id_bloom parent_job_id TYPE bloom_filter GRANULARITY 4;
