-- Core tables of the orchestrator (embedded SQLite). Ids are hyphenated UUID text (v7 for
-- cases, so text order is creation order); timestamps are RFC 3339 text; JSON is text.

CREATE TABLE ops_case (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    title           TEXT NOT NULL,
    severity        TEXT NOT NULL,
    labels          TEXT NOT NULL DEFAULT '{}',
    automation      TEXT NOT NULL DEFAULT 'manual',
    evidence        TEXT NOT NULL DEFAULT '[]',
    status          TEXT NOT NULL,
    version         INTEGER NOT NULL,
    resolution      TEXT,
    current_plan_id TEXT,
    created_by      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX ops_case_tenant ON ops_case (tenant, id);
CREATE INDEX ops_case_status ON ops_case (status, id);

CREATE TABLE case_timeline (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id        TEXT NOT NULL REFERENCES ops_case (id),
    version        INTEGER NOT NULL,
    event          TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    from_status    TEXT,
    to_status      TEXT,
    actor          TEXT NOT NULL,
    reason         TEXT,
    correlation_id TEXT,
    request_id     TEXT,
    meta           TEXT NOT NULL DEFAULT '{}',
    created_at     TEXT NOT NULL
);
CREATE INDEX case_timeline_case ON case_timeline (case_id, id);

CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    key          TEXT NOT NULL,
    payload      TEXT NOT NULL,
    headers      TEXT NOT NULL DEFAULT '{}',
    created_at   TEXT NOT NULL,
    published_at TEXT
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE idempotency (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response    TEXT NOT NULL,
    headers     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE inbox (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE plan_proposed (
    id           TEXT PRIMARY KEY,
    case_id      TEXT NOT NULL REFERENCES ops_case (id),
    plan         TEXT NOT NULL,
    digest       TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX plan_proposed_case ON plan_proposed (case_id, created_at);

CREATE TABLE plan_decision (
    id         TEXT PRIMARY KEY,
    case_id    TEXT NOT NULL REFERENCES ops_case (id),
    plan_id    TEXT NOT NULL REFERENCES plan_proposed (id),
    decision   TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),
    decided_by TEXT NOT NULL,
    reason     TEXT,
    policy_rev TEXT,
    inputs     TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);
CREATE INDEX plan_decision_case ON plan_decision (case_id, created_at);
