-- The sensor's tables (crate sensor/): every alert or event received, the groups that decide
-- which case a signal feeds, and the evidence of cases with its log/metric locators. Ids are
-- kept as text on both backends.

-- One row per alert state received (a repeated delivery of the same state writes none).
CREATE TABLE event_envelope (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    source        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    title         TEXT NOT NULL,
    summary       TEXT,
    labels        JSONB NOT NULL,
    annotations   JSONB NOT NULL,
    fingerprint   TEXT NOT NULL,
    state_key     TEXT NOT NULL,
    status        TEXT NOT NULL,
    starts_at     TIMESTAMPTZ,
    ends_at       TIMESTAMPTZ,
    generator_url TEXT,
    route         TEXT NOT NULL,
    group_key     TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    case_id       TEXT,
    received_at   TIMESTAMPTZ NOT NULL,
    raw           JSONB NOT NULL
);
CREATE INDEX event_envelope_alert ON event_envelope (tenant, source, fingerprint, id);
CREATE INDEX event_envelope_case ON event_envelope (case_id, id);

-- A route's group of signals and the case it feeds; its row is the lock that makes racing
-- deliveries of a new group open one case.
CREATE TABLE signal_group (
    group_key  TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    route      TEXT NOT NULL,
    labels     JSONB NOT NULL,
    case_id    TEXT,
    firing     JSONB NOT NULL,
    touched_at TIMESTAMPTZ
);

-- Where to find logs, metrics or traces: the seed's oo_locator.
CREATE TABLE oo_locator (
    id         TEXT PRIMARY KEY,
    system     TEXT NOT NULL,
    dataset    TEXT,
    query      TEXT NOT NULL,
    from_ts    TIMESTAMPTZ,
    to_ts      TIMESTAMPTZ,
    org        TEXT,
    attributes JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- What justifies a case: a locator, a row opscase holds, or a URL (the seed's evidence_link).
CREATE TABLE evidence_link (
    id           TEXT PRIMARY KEY,
    case_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    title        TEXT NOT NULL,
    note         TEXT,
    locator_id   TEXT REFERENCES oo_locator (id),
    ref          JSONB,
    url          TEXT,
    content_hash TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (case_id, content_hash)
);
CREATE INDEX evidence_link_case ON evidence_link (case_id, created_at);
