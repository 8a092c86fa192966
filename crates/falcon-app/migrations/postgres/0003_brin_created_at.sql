-- The request log is append-only and read by time. A BRIN index on created_at (a few pages
-- for the whole table, next to nothing per row) serves the runbook's queries: rows in the
-- last minute, the per-worker summary over a time range, and the 30-day retention DELETE.
-- It replaces the two B-trees on time, which cost a random-page update per row each.
-- log_id (unique) and request_id stay B-trees; both are time-ordered UUIDs (v7), so rows
-- land on the right-most leaf.
CREATE INDEX IF NOT EXISTS inference_logs_created_at_brin ON inference_logs USING brin (created_at);
DROP INDEX IF EXISTS inference_logs_created_at_idx;
DROP INDEX IF EXISTS inference_logs_worker_id_created_at_idx;
