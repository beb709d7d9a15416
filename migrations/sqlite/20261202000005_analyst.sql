-- The analyst's live state (crate analyst/): each (rule, series)'s detector state, the last
-- bucket it judged (buckets at or before it are never judged again), and when the alarm that
-- went to a case fired. The state is serde JSON kept as text, so floats come back bit for bit.
CREATE TABLE analyst_series (
    rule        TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    metric      TEXT NOT NULL,
    stat        TEXT NOT NULL,
    state       TEXT NOT NULL,
    last_bucket TEXT,
    reported    TEXT,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (rule, tenant, resource, metric, stat)
);
CREATE INDEX analyst_series_reported ON analyst_series (rule) WHERE reported IS NOT NULL;
