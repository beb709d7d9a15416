-- API keys, and the authenticated principal next to every client-supplied actor.

CREATE TABLE api_key (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    roles       TEXT NOT NULL,
    tenant      TEXT,
    secret_hash TEXT NOT NULL UNIQUE,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked_at  TEXT
);

ALTER TABLE case_timeline ADD COLUMN principal_id TEXT;
ALTER TABLE case_timeline ADD COLUMN principal_name TEXT;
ALTER TABLE plan_proposed ADD COLUMN requested_by_key TEXT;
ALTER TABLE plan_decision ADD COLUMN decided_by_key TEXT;
