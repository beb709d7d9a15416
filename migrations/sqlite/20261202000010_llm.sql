-- Every call opscase makes to a model (crate llm/): what for, for which case, with which
-- model, the digests and the redacted text (capped) of the prompt and the answer, tokens,
-- latency and outcome. Times are RFC 3339 UTC text.

CREATE TABLE llm_call (
    id                TEXT PRIMARY KEY,
    case_id           TEXT,
    purpose           TEXT NOT NULL,
    model             TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    prompt_digest     TEXT NOT NULL,
    response_digest   TEXT,
    prompt            TEXT NOT NULL,
    response          TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    latency_ms        INTEGER NOT NULL,
    outcome           TEXT NOT NULL,
    error             TEXT,
    created_at        TEXT NOT NULL
);
CREATE INDEX llm_call_case ON llm_call (case_id, created_at);
