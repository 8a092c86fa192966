-- SQLite has no BRIN: created_at keeps its B-tree (rows arrive in time order, so it grows at
-- its right edge); the per-worker index goes, as in Postgres (0003 there).
DROP INDEX IF EXISTS inference_logs_worker_id_created_at_idx;
