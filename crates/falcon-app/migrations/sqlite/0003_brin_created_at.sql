-- The embedded log keeps only the indexes its writer and its time queries need: the
-- unique log_id (a replayed record is one row) and created_at (rows arrive in time order,
-- so it grows at its right edge; SQLite has no BRIN). The per-worker index and the
-- request_id index go: an embedded log has one worker, and finding one request id scans
-- the file (a second or so per million rows) rather than costing every insert.
DROP INDEX IF EXISTS inference_logs_worker_id_created_at_idx;
DROP INDEX IF EXISTS inference_logs_request_id_idx;
