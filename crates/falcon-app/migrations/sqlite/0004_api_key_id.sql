-- The API key a request was made with, by id (never the key itself); NULL when the API is
-- open or for rows written before API keys existed.
ALTER TABLE inference_logs ADD COLUMN api_key_id TEXT;
