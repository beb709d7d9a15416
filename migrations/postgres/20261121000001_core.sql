-- Core tables of the orchestrator (PostgreSQL).

CREATE TABLE ops_case (
    id              UUID PRIMARY KEY,
    tenant          TEXT NOT NULL,
    title           TEXT NOT NULL,
    severity        TEXT NOT NULL,
    labels          JSONB NOT NULL DEFAULT '{}',
    automation      TEXT NOT NULL DEFAULT 'manual',
    evidence        JSONB NOT NULL DEFAULT '[]',
    status          TEXT NOT NULL,
    version         BIGINT NOT NULL,
    resolution      TEXT,
    current_plan_id UUID,
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX ops_case_tenant ON ops_case (tenant, id);
CREATE INDEX ops_case_status ON ops_case (status, id);

CREATE TABLE case_timeline (
    id             BIGSERIAL PRIMARY KEY,
    case_id        UUID NOT NULL REFERENCES ops_case (id),
    version        BIGINT NOT NULL,
    event          TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    from_status    TEXT,
    to_status      TEXT,
    actor          TEXT NOT NULL,
    reason         TEXT,
    correlation_id TEXT,
    request_id     TEXT,
    meta           JSONB NOT NULL DEFAULT '{}',
    created_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX case_timeline_case ON case_timeline (case_id, id);

CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    message_id   UUID NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    key          TEXT NOT NULL,
    payload      JSONB NOT NULL,
    headers      JSONB NOT NULL DEFAULT '{}',
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE idempotency (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response    JSONB NOT NULL,
    headers     JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE inbox (
    consumer    TEXT NOT NULL,
    message_id  UUID NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE plan_proposed (
    id           UUID PRIMARY KEY,
    case_id      UUID NOT NULL REFERENCES ops_case (id),
    plan         JSONB NOT NULL,
    digest       TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX plan_proposed_case ON plan_proposed (case_id, created_at);

CREATE TABLE plan_decision (
    id         UUID PRIMARY KEY,
    case_id    UUID NOT NULL REFERENCES ops_case (id),
    plan_id    UUID NOT NULL REFERENCES plan_proposed (id),
    decision   TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),
    decided_by TEXT NOT NULL,
    reason     TEXT,
    policy_rev TEXT,
    inputs     JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX plan_decision_case ON plan_decision (case_id, created_at);
