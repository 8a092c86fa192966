-- One row per request, not per request id: a client may reuse an X-Request-ID, and two
-- different requests must never collapse into one row. Each record gets its own log_id;
-- only the same record written twice (a retried batch, a replayed spool) is deduplicated.
ALTER TABLE inference_logs ADD COLUMN IF NOT EXISTS log_id TEXT;
UPDATE inference_logs SET log_id = request_id WHERE log_id IS NULL;
ALTER TABLE inference_logs ALTER COLUMN log_id SET NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS inference_logs_log_id_key ON inference_logs (log_id);
DROP INDEX IF EXISTS inference_logs_request_id_key;
CREATE INDEX IF NOT EXISTS inference_logs_request_id_idx ON inference_logs (request_id);
