-- The model a request named, by its name in the model repository (MODEL_REPOSITORY; the
-- default model when it named none). NULL when the request failed before its model was
-- known, and in rows written before model repositories, which were all the one model's.
-- On the partitioned table, the column is added to every partition (a catalog change: no
-- row is rewritten).
ALTER TABLE inference_logs ADD COLUMN IF NOT EXISTS model_name TEXT;
