-- A model's summary of one analysis run's findings (crate analyst/), beside the findings:
-- validated (every cited evidence id is the case's), never a state change. `evidence_ids` is
-- JSON text; times are RFC 3339 UTC text.

CREATE TABLE analysis_summary (
    run_id          TEXT PRIMARY KEY,
    case_id         TEXT NOT NULL,
    headline        TEXT NOT NULL,
    suspected_cause TEXT NOT NULL,
    confidence      REAL NOT NULL,
    evidence_ids    TEXT NOT NULL,
    model           TEXT NOT NULL,
    call_id         TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX analysis_summary_case ON analysis_summary (case_id, created_at);
