-- A job the processor forgot: its `finished` retention passed (`retention_passed`, scope
-- "finished"), so the processor dropped its state and the next `enqueued` with its id (same
-- idempotency key) creates a new job. Its `jobs` row keeps showing its final state, with
-- forgotten = 1; the projector folds the next event of that id from no state, as the processor
-- does, and a new job with the id replaces the row (forgotten = 0).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS forgotten UInt8 DEFAULT 0;
