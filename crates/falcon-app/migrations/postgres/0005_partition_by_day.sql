-- The request log partitioned by day (UTC) on created_at, so that retention drops whole
-- partitions (instant, no dead rows, no VACUUM) instead of deleting rows one by one.
--
-- An existing unpartitioned table is kept as it is, without copying a row: it becomes the
-- partition `inference_logs_legacy`, covering everything before tomorrow (UTC), and is
-- dropped as a whole once its newest day is past retention. Rows it holds from tomorrow on
-- (a skewed clock) move to the default partition first. Attaching it builds the new unique
-- index (log_id, created_at) and checks its range: one pass over the old table, during
-- which writers wait and their records wait in the spool. A table with no rows is dropped.
--
-- The partition key must be part of every unique index, so the duplicate check is on
-- (log_id, created_at): a record written twice (a retried batch, a replayed spool) is the
-- same log_id with the same created_at, and stays one row. The default partition takes a
-- row whose day has no partition (a replayed spool from long ago, a clock far ahead), never
-- an error. The worker creates the coming days' partitions and drops the expired ones
-- (`REQUEST_LOG_RETENTION_DAYS`); `falcon log prune` does the same by hand.
DO $migration$
DECLARE
    upper_bound timestamptz := date_trunc('day', now(), 'UTC') + interval '1 day';
BEGIN
    IF EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'inference_logs'::regclass) THEN
        RETURN;
    END IF;

    ALTER TABLE inference_logs RENAME TO inference_logs_legacy;
    ALTER INDEX IF EXISTS inference_logs_pkey RENAME TO inference_logs_legacy_pkey;
    ALTER INDEX IF EXISTS inference_logs_log_id_key RENAME TO inference_logs_legacy_log_id_key;
    ALTER INDEX IF EXISTS inference_logs_request_id_idx RENAME TO inference_logs_legacy_request_id_idx;
    ALTER INDEX IF EXISTS inference_logs_created_at_brin RENAME TO inference_logs_legacy_created_at_brin;

    CREATE TABLE inference_logs (LIKE inference_logs_legacy INCLUDING DEFAULTS) PARTITION BY RANGE (created_at);
    -- The id sequence outlives the old table (dropped one day by retention).
    EXECUTE format('ALTER SEQUENCE %s OWNED BY inference_logs.id',
                   pg_get_serial_sequence('inference_logs_legacy', 'id'));
    CREATE UNIQUE INDEX inference_logs_log_id_key ON inference_logs (log_id, created_at);
    CREATE INDEX inference_logs_request_id_idx ON inference_logs (request_id);
    CREATE INDEX inference_logs_created_at_brin ON inference_logs USING brin (created_at);
    CREATE TABLE inference_logs_default PARTITION OF inference_logs DEFAULT;

    IF NOT EXISTS (SELECT 1 FROM inference_logs_legacy) THEN
        DROP TABLE inference_logs_legacy;
        RETURN;
    END IF;
    WITH ahead AS (
        DELETE FROM inference_logs_legacy WHERE created_at >= upper_bound RETURNING *
    )
    INSERT INTO inference_logs_default SELECT * FROM ahead;
    EXECUTE format('ALTER TABLE inference_logs ATTACH PARTITION inference_logs_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                   upper_bound);
END
$migration$;
