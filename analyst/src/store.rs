//! The analysis tables on both backends: `service_call_5m` (calls between services over five
//! minutes, ingested by `POST /v1/metrics/calls5m`) and `analysis_finding` (what each analysis
//! run found about a case).

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use orchestrator::{SqlPool, StoreError};

use crate::analysis::{CallBucket, CaseFinding};

/// One row of `service_call_5m`: calls from `src` to `dst` over five minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallPoint {
    pub tenant: String,
    /// Any instant in the five minutes (stored as their start: 12:07:30 is the 12:05 bucket).
    pub bucket: DateTime<Utc>,
    /// The calling service.
    pub src: String,
    /// The service called.
    pub dst: String,
    /// Calls per second.
    #[serde(default)]
    pub rps: Option<f64>,
    /// Share of calls that failed, 0 to 1.
    #[serde(default)]
    pub err_rate: Option<f64>,
    #[serde(default)]
    pub p50_ms: Option<f64>,
    #[serde(default)]
    pub p95_ms: Option<f64>,
}

impl CallPoint {
    /// `(field, message)` of the first problem: names 1 to 200 characters without control
    /// characters, at least one measure, every measure finite and not negative, `err_rate` at
    /// most 1.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, value) in [
            ("tenant", &self.tenant),
            ("src", &self.src),
            ("dst", &self.dst),
        ] {
            if value.trim().is_empty()
                || value.chars().count() > 200
                || value.chars().any(char::is_control)
            {
                return Err((
                    field,
                    "must be 1 to 200 characters without control characters".into(),
                ));
            }
        }
        let measures = [
            ("rps", self.rps),
            ("err_rate", self.err_rate),
            ("p50_ms", self.p50_ms),
            ("p95_ms", self.p95_ms),
        ];
        if measures.iter().all(|(_, value)| value.is_none()) {
            return Err((
                "rps",
                "at least one of rps, err_rate, p50_ms, p95_ms is required".into(),
            ));
        }
        for (field, value) in measures {
            if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err((field, "must be a finite number, not negative".into()));
            }
        }
        if self.err_rate.is_some_and(|rate| rate > 1.0) {
            return Err(("err_rate", "is a share of calls: at most 1".into()));
        }
        Ok(())
    }

    /// The bucket as stored: the start of its five minutes.
    pub fn five_minutes(&self) -> DateTime<Utc> {
        self.bucket
            .duration_trunc(TimeDelta::minutes(5))
            .unwrap_or(self.bucket)
    }
}

/// A model's summary of a run's findings, stored beside them (never a state change).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FindingsSummary {
    /// The analysis run summarised.
    pub run_id: String,
    pub case_id: Uuid,
    pub headline: String,
    pub suspected_cause: String,
    /// 0 to 1, as the model put it.
    pub confidence: f64,
    /// Evidence of the case (`GET /v1/cases/{id}/evidence`) the summary rests on; each one
    /// was checked to be the case's.
    pub evidence_ids: Vec<Uuid>,
    pub model: String,
    /// Its `llm_call`.
    pub call_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// A finding as stored and as `GET /v1/cases/{id}/findings` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StoredFinding {
    /// The analysis run (the id of its `cmd.analysis.run`).
    pub run_id: String,
    /// Its place in the run's findings, strongest first.
    pub index: i64,
    pub case_id: Uuid,
    pub tenant: String,
    /// `metric_deviation`, `dependency_degraded` or `recent_change`.
    pub kind: String,
    pub title: String,
    pub score: f64,
    #[schema(value_type = Object)]
    pub detail: Value,
    /// Each `{"kind", "title", "ref": {"table", "keys"}}`.
    #[schema(value_type = Vec<Object>)]
    pub evidence: Value,
    pub created_at: DateTime<Utc>,
}

/// Reads and writes the analysis tables.
#[derive(Debug, Clone)]
pub struct AnalysisStore {
    pool: SqlPool,
}

const UPSERT_CALL: &str = "INSERT INTO service_call_5m \
    (tenant, bucket, src, dst, rps, err_rate, p50_ms, p95_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
    ON CONFLICT (tenant, src, dst, bucket) DO UPDATE SET rps = excluded.rps, \
    err_rate = excluded.err_rate, p50_ms = excluded.p50_ms, p95_ms = excluded.p95_ms";

const SELECT_CALLS: &str = "SELECT bucket, dst, rps, err_rate, p95_ms FROM service_call_5m \
    WHERE tenant = $1 AND src = $2 AND bucket >= $3 AND bucket <= $4 ORDER BY bucket, dst";

const INSERT_FINDING: &str = "INSERT INTO analysis_finding \
    (run_id, idx, case_id, tenant, kind, title, score, detail, evidence, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (run_id, idx) DO NOTHING";

const SELECT_FINDINGS: &str = "SELECT run_id, idx, case_id, tenant, kind, title, score, detail, \
    evidence, created_at FROM analysis_finding WHERE case_id = $1 ORDER BY created_at, run_id, idx";

const INSERT_SUMMARY: &str = "INSERT INTO analysis_summary \
    (run_id, case_id, headline, suspected_cause, confidence, evidence_ids, model, call_id, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (run_id) DO NOTHING";

const SELECT_SUMMARIES: &str = "SELECT run_id, headline, suspected_cause, confidence, \
    evidence_ids, model, call_id, created_at FROM analysis_summary WHERE case_id = $1 \
    ORDER BY created_at, run_id";

/// Bind the same values on either backend's query (`$q` is the query).
macro_rules! on_pool {
    ($pool:expr, $sql:expr, $run:ident, |$q:ident| $bind:expr) => {
        match $pool {
            SqlPool::Sqlite(pool) => {
                let $q = sqlx::query($sql);
                $bind
                    .$run(pool)
                    .await?
                    .into_iter()
                    .map(|row| Rows::Sqlite(row))
                    .collect::<Vec<_>>()
            }
            SqlPool::Postgres(pool) => {
                let $q = sqlx::query($sql);
                $bind
                    .$run(pool)
                    .await?
                    .into_iter()
                    .map(|row| Rows::Postgres(row))
                    .collect::<Vec<_>>()
            }
        }
    };
}

enum Rows {
    Sqlite(sqlx::sqlite::SqliteRow),
    Postgres(sqlx::postgres::PgRow),
}

macro_rules! get {
    ($row:expr, $ty:ty, $column:expr) => {
        match $row {
            Rows::Sqlite(row) => row.try_get::<$ty, _>($column),
            Rows::Postgres(row) => row.try_get::<$ty, _>($column),
        }
    };
}

impl AnalysisStore {
    pub fn new(pool: SqlPool) -> Self {
        Self { pool }
    }

    /// Upsert `points` in one transaction (a row already there for the same tenant, src, dst
    /// and five minutes is replaced). Validate them first: see [`CallPoint::validate`].
    pub async fn insert_calls(&self, points: &[CallPoint]) -> Result<u64, StoreError> {
        let mut written = 0;
        macro_rules! write_all {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::from)?;
                for point in points {
                    written += sqlx::query(UPSERT_CALL)
                        .bind(&point.tenant)
                        .bind(point.five_minutes())
                        .bind(&point.src)
                        .bind(&point.dst)
                        .bind(point.rps)
                        .bind(point.err_rate)
                        .bind(point.p50_ms)
                        .bind(point.p95_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from)?
                        .rows_affected();
                }
                tx.commit().await.map_err(StoreError::from)?;
            }};
        }
        match &self.pool {
            SqlPool::Sqlite(pool) => write_all!(pool),
            SqlPool::Postgres(pool) => write_all!(pool),
        }
        Ok(written)
    }

    /// Calls from `src` in the buckets starting in `[from, to]`, oldest first.
    pub async fn calls_from(
        &self,
        tenant: &str,
        src: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<CallBucket>, StoreError> {
        let rows = on_pool!(&self.pool, SELECT_CALLS, fetch_all, |q| q
            .bind(tenant)
            .bind(src)
            .bind(from)
            .bind(to));
        rows.iter()
            .map(|row| {
                Ok(CallBucket {
                    bucket: get!(row, DateTime<Utc>, "bucket")?,
                    dst: get!(row, String, "dst")?,
                    rps: get!(row, Option<f64>, "rps")?,
                    err_rate: get!(row, Option<f64>, "err_rate")?,
                    p95_ms: get!(row, Option<f64>, "p95_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Store a run's findings (again: a redelivered run writes nothing new).
    pub async fn insert_findings(
        &self,
        run_id: &str,
        case_id: Uuid,
        tenant: &str,
        findings: &[CaseFinding],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        macro_rules! write_all {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::from)?;
                for (index, finding) in findings.iter().enumerate() {
                    sqlx::query(INSERT_FINDING)
                        .bind(run_id)
                        .bind(index as i64)
                        .bind(case_id.to_string())
                        .bind(tenant)
                        .bind(&finding.kind)
                        .bind(&finding.title)
                        .bind(finding.score)
                        .bind(Json(&finding.detail))
                        .bind(Json(&finding.evidence))
                        .bind(at)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                }
                tx.commit().await.map_err(StoreError::from)?;
            }};
        }
        match &self.pool {
            SqlPool::Sqlite(pool) => write_all!(pool),
            SqlPool::Postgres(pool) => write_all!(pool),
        }
        Ok(())
    }

    /// A case's findings, run by run, oldest first.
    /// Keep a model's summary of a run's findings (the first one kept: a redelivered command
    /// does not replace it).
    pub async fn insert_summary(&self, summary: &FindingsSummary) -> Result<(), StoreError> {
        macro_rules! insert {
            ($pool:expr) => {
                sqlx::query(INSERT_SUMMARY)
                    .bind(&summary.run_id)
                    .bind(summary.case_id.to_string())
                    .bind(&summary.headline)
                    .bind(&summary.suspected_cause)
                    .bind(summary.confidence)
                    .bind(Json(&summary.evidence_ids))
                    .bind(&summary.model)
                    .bind(summary.call_id.to_string())
                    .bind(summary.created_at)
                    .execute($pool)
                    .await?
                    .rows_affected()
            };
        }
        match &self.pool {
            SqlPool::Sqlite(pool) => insert!(pool),
            SqlPool::Postgres(pool) => insert!(pool),
        };
        Ok(())
    }

    /// The model's summaries of a case's analysis runs, oldest first.
    pub async fn summaries_of(&self, case_id: Uuid) -> Result<Vec<FindingsSummary>, StoreError> {
        let rows = on_pool!(&self.pool, SELECT_SUMMARIES, fetch_all, |q| q
            .bind(case_id.to_string()));
        rows.iter()
            .map(|row| {
                let call_id = get!(row, String, "call_id")?;
                Ok(FindingsSummary {
                    run_id: get!(row, String, "run_id")?,
                    case_id,
                    headline: get!(row, String, "headline")?,
                    suspected_cause: get!(row, String, "suspected_cause")?,
                    confidence: get!(row, f64, "confidence")?,
                    evidence_ids: get!(row, Json<Vec<Uuid>>, "evidence_ids")?.0,
                    model: get!(row, String, "model")?,
                    call_id: Uuid::parse_str(&call_id)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    created_at: get!(row, DateTime<Utc>, "created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn findings_of(&self, case_id: Uuid) -> Result<Vec<StoredFinding>, StoreError> {
        let rows = on_pool!(&self.pool, SELECT_FINDINGS, fetch_all, |q| q
            .bind(case_id.to_string()));
        rows.iter()
            .map(|row| {
                Ok(StoredFinding {
                    run_id: get!(row, String, "run_id")?,
                    index: get!(row, i64, "idx")?,
                    case_id,
                    tenant: get!(row, String, "tenant")?,
                    kind: get!(row, String, "kind")?,
                    title: get!(row, String, "title")?,
                    score: get!(row, f64, "score")?,
                    detail: get!(row, Json<Value>, "detail")?.0,
                    evidence: get!(row, Json<Value>, "evidence")?.0,
                    created_at: get!(row, DateTime<Utc>, "created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn point() -> CallPoint {
        serde_json::from_value(json!({"tenant": "t", "bucket": "2026-12-02T12:07:30Z",
            "src": "checkout", "dst": "payments", "p95_ms": 80.0, "err_rate": 0.01}))
        .unwrap()
    }

    #[test]
    fn a_call_point_is_stored_at_its_five_minutes_and_checked_field_by_field() {
        let p = point();
        assert_eq!(p.five_minutes().to_rfc3339(), "2026-12-02T12:05:00+00:00");
        assert!(p.validate().is_ok());
        let field = |change: fn(&mut CallPoint)| {
            let mut p = point();
            change(&mut p);
            p.validate().unwrap_err().0
        };
        assert_eq!(field(|p| p.src = " ".into()), "src");
        assert_eq!(field(|p| p.dst = "a\nb".into()), "dst");
        assert_eq!(field(|p| p.err_rate = Some(1.5)), "err_rate");
        assert_eq!(field(|p| p.p95_ms = Some(f64::NAN)), "p95_ms");
        assert_eq!(
            field(|p| {
                p.p95_ms = None;
                p.err_rate = None
            }),
            "rps"
        );
        let unknown: Result<CallPoint, _> = serde_json::from_value(json!({"tenant": "t",
            "bucket": "2026-12-02T12:07:30Z", "src": "a", "dst": "b", "p99_ms": 1.0}));
        assert!(unknown.is_err());
    }
}
