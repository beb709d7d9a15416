-- The analysis of a case (crate analyst/): calls between services aggregated over five
-- minutes (the seed's `service_call_5m`, with service names in place of resource ids), and the
-- findings of each analysis run. Times are timestamptz.

CREATE TABLE service_call_5m (
    tenant   TEXT NOT NULL,
    bucket   TIMESTAMPTZ NOT NULL,
    src      TEXT NOT NULL,
    dst      TEXT NOT NULL,
    rps      DOUBLE PRECISION,
    err_rate DOUBLE PRECISION,
    p50_ms   DOUBLE PRECISION,
    p95_ms   DOUBLE PRECISION,
    PRIMARY KEY (tenant, src, dst, bucket)
);

-- One row per finding of one run (the run is the command's id, so a redelivered command
-- stores its findings once); `detail` and `evidence` are JSON.
CREATE TABLE analysis_finding (
    run_id     TEXT NOT NULL,
    idx        BIGINT NOT NULL,
    case_id    TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    title      TEXT NOT NULL,
    score      DOUBLE PRECISION NOT NULL,
    detail     JSONB NOT NULL,
    evidence   JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE INDEX analysis_finding_case ON analysis_finding (case_id, created_at);

-- Change events (deploys, configuration changes) are read by service and time.
CREATE INDEX event_envelope_change ON event_envelope (tenant, kind, received_at);
