-- One-minute metric aggregates (the seed's `metric_1m`), read by the verifier's `metric_1m`
-- source. `bucket` is the start of the minute as RFC 3339 UTC text without fractional seconds
-- (sqlx's chrono encoding, as elsewhere), so text order is time order; `labels` is JSON text.
-- Writers upsert on the primary key, so re-ingesting a minute is idempotent.

CREATE TABLE metric_1m (
    tenant   TEXT NOT NULL,
    resource TEXT NOT NULL,
    metric   TEXT NOT NULL,
    bucket   TEXT NOT NULL,
    avg_val  REAL,
    max_val  REAL,
    p95_val  REAL,
    count    INTEGER,
    labels   TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant, resource, metric, bucket),
    CHECK (avg_val IS NOT NULL OR max_val IS NOT NULL OR p95_val IS NOT NULL)
) WITHOUT ROWID;
