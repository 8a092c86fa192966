-- The model a request named, by its name in the model repository (MODEL_REPOSITORY; the
-- default model when it named none). NULL when the request failed before its model was
-- known, and in rows written before model repositories, which were all the one model's.
-- (The number matches the Postgres migration; SQLite has no 0005, the partitioning.)
ALTER TABLE inference_logs ADD COLUMN model_name TEXT;
