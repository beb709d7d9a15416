-- The analysis of a case (crate analyst/): calls between services aggregated over five
-- minutes (the seed's `service_call_5m`, with service names in place of resource ids), and the
-- findings of each analysis run. Times are RFC 3339 UTC text, so text order is time order.

CREATE TABLE service_call_5m (
    tenant   TEXT NOT NULL,
    bucket   TEXT NOT NULL,
    src      TEXT NOT NULL,
    dst      TEXT NOT NULL,
    rps      REAL,
    err_rate REAL,
    p50_ms   REAL,
    p95_ms   REAL,
    PRIMARY KEY (tenant, src, dst, bucket)
) WITHOUT ROWID;

-- One row per finding of one run (the run is the command's id, so a redelivered command
-- stores its findings once); `detail` and `evidence` are JSON text.
CREATE TABLE analysis_finding (
    run_id     TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    case_id    TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    title      TEXT NOT NULL,
    score      REAL NOT NULL,
    detail     TEXT NOT NULL,
    evidence   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE INDEX analysis_finding_case ON analysis_finding (case_id, created_at);

-- Change events (deploys, configuration changes) are read by service and time.
CREATE INDEX event_envelope_change ON event_envelope (tenant, kind, received_at);
