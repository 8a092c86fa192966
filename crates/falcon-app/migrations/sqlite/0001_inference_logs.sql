-- The embedded default: the same table as in Postgres, in SQLite types.
CREATE TABLE IF NOT EXISTS inference_logs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id         TEXT    NOT NULL,
    worker_id          TEXT    NOT NULL,
    text_hash          TEXT,
    text_length        INTEGER,
    prediction         TEXT,
    confidence         REAL,
    probabilities      TEXT,
    cache_hit          INTEGER NOT NULL DEFAULT 0,
    idempotency_hit    INTEGER NOT NULL DEFAULT 0,
    success            INTEGER NOT NULL,
    processing_time_ms REAL    NOT NULL,
    inference_time_ms  REAL,
    error_type         TEXT,
    error_message      TEXT,
    idempotency_key    TEXT,
    client_ip          TEXT,
    model_version      TEXT    NOT NULL,
    created_at         TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE UNIQUE INDEX IF NOT EXISTS inference_logs_request_id_key ON inference_logs (request_id);
CREATE INDEX IF NOT EXISTS inference_logs_created_at_idx ON inference_logs (created_at);
CREATE INDEX IF NOT EXISTS inference_logs_worker_id_created_at_idx ON inference_logs (worker_id, created_at);
