-- One row per POST /infer: success, error, cache hit or idempotent replay. The raw text is
-- never stored, only its SHA-256 and length.
CREATE TABLE IF NOT EXISTS inference_logs (
    id                 BIGSERIAL PRIMARY KEY,
    request_id         TEXT             NOT NULL,
    worker_id          TEXT             NOT NULL,
    text_hash          TEXT,
    text_length        INTEGER,
    prediction         TEXT,
    confidence         DOUBLE PRECISION,
    probabilities      JSONB,
    cache_hit          BOOLEAN          NOT NULL DEFAULT FALSE,
    idempotency_hit    BOOLEAN          NOT NULL DEFAULT FALSE,
    success            BOOLEAN          NOT NULL,
    processing_time_ms DOUBLE PRECISION NOT NULL,
    inference_time_ms  DOUBLE PRECISION,
    error_type         TEXT,
    error_message      TEXT,
    idempotency_key    TEXT,
    client_ip          TEXT,
    model_version      TEXT             NOT NULL,
    created_at         TIMESTAMPTZ      NOT NULL DEFAULT NOW()
);

-- A retried batch (or a request nginx retried on another worker) never makes two rows.
CREATE UNIQUE INDEX IF NOT EXISTS inference_logs_request_id_key ON inference_logs (request_id);
CREATE INDEX IF NOT EXISTS inference_logs_created_at_idx ON inference_logs (created_at);
CREATE INDEX IF NOT EXISTS inference_logs_worker_id_created_at_idx ON inference_logs (worker_id, created_at);
