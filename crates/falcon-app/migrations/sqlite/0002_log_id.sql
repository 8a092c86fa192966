-- One row per request, not per request id (see the Postgres migration of the same name).
ALTER TABLE inference_logs ADD COLUMN log_id TEXT;
UPDATE inference_logs SET log_id = request_id WHERE log_id IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS inference_logs_log_id_key ON inference_logs (log_id);
DROP INDEX IF EXISTS inference_logs_request_id_key;
CREATE INDEX IF NOT EXISTS inference_logs_request_id_idx ON inference_logs (request_id);
