-- One-minute metric aggregates (the seed's `metric_1m`), read by the verifier's `metric_1m`
-- source. `bucket` is the start of the minute. Writers upsert on the primary key, so
-- re-ingesting a minute is idempotent.

CREATE TABLE metric_1m (
    tenant   TEXT NOT NULL,
    resource TEXT NOT NULL,
    metric   TEXT NOT NULL,
    bucket   TIMESTAMPTZ NOT NULL,
    avg_val  DOUBLE PRECISION,
    max_val  DOUBLE PRECISION,
    p95_val  DOUBLE PRECISION,
    count    BIGINT,
    labels   JSONB NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant, resource, metric, bucket),
    CHECK (avg_val IS NOT NULL OR max_val IS NOT NULL OR p95_val IS NOT NULL)
);
