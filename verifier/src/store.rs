//! The `metric_1m` table: one-minute aggregates per tenant, resource and metric, on SQLite or
//! PostgreSQL (migration `20261121000005_metric_1m.sql` of each backend).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgPool, Row, SqlitePool};

/// Which aggregate column of a row a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    /// `avg_val`, the minute's mean.
    Avg,
    /// `max_val`, the minute's maximum.
    Max,
    /// `p95_val`, the minute's 95th percentile.
    P95,
}

impl Stat {
    pub fn as_str(self) -> &'static str {
        match self {
            Stat::Avg => "avg",
            Stat::Max => "max",
            Stat::P95 => "p95",
        }
    }

    /// The column it reads.
    pub fn column(self) -> &'static str {
        match self {
            Stat::Avg => "avg_val",
            Stat::Max => "max_val",
            Stat::P95 => "p95_val",
        }
    }

    /// The default for a threshold's metric name: `p95` for a name starting with `p9`
    /// (`p95_ms`, `p99_latency`), else `avg`.
    pub fn default_for(metric: &str) -> Self {
        if metric.starts_with("p9") {
            Stat::P95
        } else {
            Stat::Avg
        }
    }

    /// How the per-minute values of a window become one measurement: the worst minute (the
    /// maximum) for `p95` and `max`, the unweighted mean of the minutes for `avg`. `None` for
    /// no values.
    pub fn aggregate(self, values: &[f64]) -> Option<f64> {
        if values.is_empty() {
            return None;
        }
        Some(match self {
            // A running mean: minutes of one value average to exactly that value (a sum then
            // a division makes three minutes of 0.05 into 0.05000000000000001).
            Stat::Avg => values
                .iter()
                .enumerate()
                .fold(0.0, |mean, (i, x)| mean + (x - mean) / (i + 1) as f64),
            Stat::Max | Stat::P95 => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }

    /// How [`Stat::aggregate`] combines the minutes, for notes.
    pub fn aggregation(self) -> &'static str {
        match self {
            Stat::Avg => "mean",
            Stat::Max | Stat::P95 => "max",
        }
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "avg" => Ok(Stat::Avg),
            "max" => Ok(Stat::Max),
            "p95" => Ok(Stat::P95),
            other => Err(format!("unknown stat {other:?}: expected avg, max or p95")),
        }
    }
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// One row of `metric_1m`: the aggregates of one metric of one resource over one minute.
///
/// This is what the ingest API takes (a JSON array of these). `bucket` may be any instant:
/// it is truncated to the start of its minute when stored (`12:03:41Z` is the `12:03:00Z`
/// bucket), so senders need not align it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricPoint {
    pub tenant: String,
    /// What is measured, e.g. the service name.
    pub resource: String,
    /// e.g. `p95_ms`, `err_rate`, `rps`: the name a threshold refers to.
    pub metric: String,
    /// The minute (truncated to its start when stored).
    pub bucket: DateTime<Utc>,
    #[serde(default)]
    pub avg: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub p95: Option<f64>,
    /// How many samples the minute aggregates (`12.0` is taken as 12, as JSON Schema's
    /// `integer` is).
    #[serde(default, deserialize_with = "workflow::integer::option")]
    pub count: Option<i64>,
    /// A JSON object.
    #[serde(default = "empty_object")]
    pub labels: Value,
}

/// Longest tenant or resource name accepted.
pub const MAX_NAME_LEN: usize = 200;
/// Longest metric name accepted.
pub const MAX_METRIC_LEN: usize = 100;

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), (&'static str, String)> {
    if value.trim().is_empty() {
        return Err((field, "must not be empty".into()));
    }
    if value.chars().count() > max {
        return Err((field, format!("must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err((field, "must not contain control characters".into()));
    }
    Ok(())
}

impl MetricPoint {
    /// Check the point for the ingest API: `(field, message)` of the first problem.
    ///
    /// Tenant and resource are non-empty (at most 200 characters, no control characters); the
    /// metric is a name a threshold can refer to (`[A-Za-z_][A-Za-z0-9_]*`, at most 100); at
    /// least one of `avg`, `max`, `p95` is given and every value is finite; `count` is not
    /// negative; `labels` is an object.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        check_name("tenant", &self.tenant, MAX_NAME_LEN)?;
        check_name("resource", &self.resource, MAX_NAME_LEN)?;
        check_name("metric", &self.metric, MAX_METRIC_LEN)?;
        let mut chars = self.metric.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((
                "metric",
                "must be a letter or _ followed by letters, digits or _ (as in a threshold)".into(),
            ));
        }
        if self.avg.is_none() && self.max.is_none() && self.p95.is_none() {
            return Err(("avg", "at least one of avg, max, p95 is required".into()));
        }
        for (field, value) in [("avg", self.avg), ("max", self.max), ("p95", self.p95)] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err((field, "must be a finite number".into()));
            }
        }
        if self.count.is_some_and(|c| c < 0) {
            return Err(("count", "must not be negative".into()));
        }
        if !self.labels.is_object() {
            return Err(("labels", "must be an object".into()));
        }
        Ok(())
    }

    /// The bucket as stored: the start of its minute.
    pub fn minute(&self) -> DateTime<Utc> {
        truncate_to_minute(self.bucket)
    }
}

/// The start of the minute `at` falls in.
pub fn truncate_to_minute(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at)
}

fn ceil_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    let sub = at.timestamp_subsec_nanos() % 1_000;
    if sub == 0 {
        at
    } else {
        at + TimeDelta::nanoseconds(i64::from(1_000 - sub))
    }
}

/// Why a `metric_1m` read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum Metric1mError {
    /// Point `index` of a batch is invalid; nothing was written.
    #[error("point {index}: {field}: {message}")]
    Invalid {
        index: usize,
        field: &'static str,
        message: String,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A series of `metric_1m` and the labels of its latest bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    pub tenant: String,
    pub resource: String,
    pub metric: String,
    pub labels: Value,
}

/// Reads and writes `metric_1m` on either backend.
#[derive(Clone)]
pub struct Metric1mStore {
    pool: Pool,
}

impl fmt::Debug for Metric1mStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        };
        f.debug_struct("Metric1mStore")
            .field("backend", &backend)
            .finish()
    }
}

const UPSERT_SQLITE: &str = "INSERT INTO metric_1m \
    (tenant, resource, metric, bucket, avg_val, max_val, p95_val, count, labels) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
    ON CONFLICT (tenant, resource, metric, bucket) DO UPDATE SET \
    avg_val = excluded.avg_val, max_val = excluded.max_val, p95_val = excluded.p95_val, \
    count = excluded.count, labels = excluded.labels";

const UPSERT_POSTGRES: &str = "INSERT INTO metric_1m \
    (tenant, resource, metric, bucket, avg_val, max_val, p95_val, count, labels) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (tenant, resource, metric, bucket) DO UPDATE SET \
    avg_val = excluded.avg_val, max_val = excluded.max_val, p95_val = excluded.p95_val, \
    count = excluded.count, labels = excluded.labels";

impl Metric1mStore {
    /// On SQLite: give it the pool that writes (the orchestrator's single writer connection)
    /// if it is to ingest, any pool if it only reads.
    pub fn sqlite(pool: SqlitePool) -> Self {
        Self {
            pool: Pool::Sqlite(pool),
        }
    }

    pub fn postgres(pool: PgPool) -> Self {
        Self {
            pool: Pool::Postgres(pool),
        }
    }

    /// Upsert `rows` in one transaction (each bucket truncated to its minute; a row already
    /// there for the same tenant, resource, metric and minute is replaced, so re-ingesting is
    /// idempotent; within a batch the last row of a minute wins). Every row is validated first
    /// and an invalid one writes nothing. Returns the number of rows written.
    pub async fn insert_batch(&self, rows: &[MetricPoint]) -> Result<u64, Metric1mError> {
        for (index, row) in rows.iter().enumerate() {
            row.validate()
                .map_err(|(field, message)| Metric1mError::Invalid {
                    index,
                    field,
                    message,
                })?;
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let mut written = 0;
        match &self.pool {
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for row in rows {
                    written += sqlx::query(UPSERT_SQLITE)
                        .bind(&row.tenant)
                        .bind(&row.resource)
                        .bind(&row.metric)
                        .bind(row.minute())
                        .bind(row.avg)
                        .bind(row.max)
                        .bind(row.p95)
                        .bind(row.count)
                        .bind(Json(&row.labels))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
            }
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for row in rows {
                    written += sqlx::query(UPSERT_POSTGRES)
                        .bind(&row.tenant)
                        .bind(&row.resource)
                        .bind(&row.metric)
                        .bind(row.minute())
                        .bind(row.avg)
                        .bind(row.max)
                        .bind(row.p95)
                        .bind(row.count)
                        .bind(Json(&row.labels))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
            }
        }
        Ok(written)
    }

    /// Every series (tenant, resource, metric) with a bucket at or after `since`, with the
    /// labels of its latest bucket: what the analyst's sweep looks at.
    pub async fn recent_series(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<SeriesRow>, Metric1mError> {
        let since = ceil_micros(since);
        let rows: Vec<(String, String, String, Json<Value>)> = match &self.pool {
            // SQLite takes the other columns from the row MAX() picked.
            Pool::Sqlite(pool) => sqlx::query_as(
                "SELECT tenant, resource, metric, labels FROM (SELECT tenant, resource, metric, \
                     labels, MAX(bucket) FROM metric_1m WHERE bucket >= ? \
                     GROUP BY tenant, resource, metric)",
            )
            .bind(since)
            .fetch_all(pool)
            .await?,
            Pool::Postgres(pool) => sqlx::query_as(
                "SELECT DISTINCT ON (tenant, resource, metric) tenant, resource, metric, labels \
                     FROM metric_1m WHERE bucket >= $1 \
                     ORDER BY tenant, resource, metric, bucket DESC",
            )
            .bind(since)
            .fetch_all(pool)
            .await?,
        };
        Ok(rows
            .into_iter()
            .map(|(tenant, resource, metric, labels)| SeriesRow {
                tenant,
                resource,
                metric,
                labels: labels.0,
            })
            .collect())
    }

    /// One series with the labels of its latest bucket at or after `since`, or `None` when it
    /// has no bucket since then: what the analyst needs of a series the ingest just wrote.
    /// One step down the primary key, where [`Metric1mStore::recent_series`] reads every
    /// bucket of every series.
    pub async fn series_since(
        &self,
        tenant: &str,
        resource: &str,
        metric: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<SeriesRow>, Metric1mError> {
        let since = ceil_micros(since);
        let labels: Option<Json<Value>> = match &self.pool {
            Pool::Sqlite(pool) => sqlx::query_scalar(
                "SELECT labels FROM metric_1m WHERE tenant = ? AND resource = ? AND metric = ? \
                     AND bucket >= ? ORDER BY bucket DESC LIMIT 1",
            )
            .bind(tenant)
            .bind(resource)
            .bind(metric)
            .bind(since)
            .fetch_optional(pool)
            .await?,
            Pool::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT labels FROM metric_1m WHERE tenant = $1 AND resource = $2 \
                     AND metric = $3 AND bucket >= $4 ORDER BY bucket DESC LIMIT 1",
                )
                .bind(tenant)
                .bind(resource)
                .bind(metric)
                .bind(since)
                .fetch_optional(pool)
                .await?
            }
        };
        Ok(labels.map(|labels| SeriesRow {
            tenant: tenant.to_string(),
            resource: resource.to_string(),
            metric: metric.to_string(),
            labels: labels.0,
        }))
    }

    /// The `stat` values of one tenant's `resource`/`metric` in the buckets starting in
    /// `[from, to)`, oldest first; rows without that stat are left out.
    pub async fn query(
        &self,
        tenant: &str,
        resource: &str,
        metric: &str,
        stat: Stat,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, f64)>, Metric1mError> {
        let column = stat.column();
        // PostgreSQL keeps microseconds (it would round a bound's nanoseconds); buckets are
        // whole minutes, so rounding the bounds up to the microsecond selects the same rows
        // and both backends agree.
        let (from, to) = (ceil_micros(from), ceil_micros(to));
        match &self.pool {
            Pool::Sqlite(pool) => {
                // Buckets are RFC 3339 UTC text, so text comparison is time comparison (sqlx
                // encodes the bounds the same way).
                let sql = format!(
                    "SELECT bucket, {column} AS value FROM metric_1m \
                     WHERE tenant = ? AND resource = ? AND metric = ? \
                     AND bucket >= ? AND bucket < ? AND {column} IS NOT NULL ORDER BY bucket"
                );
                let rows = sqlx::query(&sql)
                    .bind(tenant)
                    .bind(resource)
                    .bind(metric)
                    .bind(from)
                    .bind(to)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("bucket")?, row.try_get("value")?)))
                    .collect()
            }
            Pool::Postgres(pool) => {
                let sql = format!(
                    "SELECT bucket, {column} AS value FROM metric_1m \
                     WHERE tenant = $1 AND resource = $2 AND metric = $3 \
                     AND bucket >= $4 AND bucket < $5 AND {column} IS NOT NULL ORDER BY bucket"
                );
                let rows = sqlx::query(&sql)
                    .bind(tenant)
                    .bind(resource)
                    .bind(metric)
                    .bind(from)
                    .bind(to)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("bucket")?, row.try_get("value")?)))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn point() -> MetricPoint {
        serde_json::from_value(json!({
            "tenant": "acme", "resource": "checkout", "metric": "p95_ms",
            "bucket": "2026-11-21T12:03:41.5Z", "p95": 250.0
        }))
        .unwrap()
    }

    #[test]
    fn minutes_of_one_value_average_to_that_value() {
        for n in 1..=10 {
            assert_eq!(
                Stat::Avg.aggregate(&vec![0.05; n]),
                Some(0.05),
                "{n} minutes"
            );
        }
        assert_eq!(Stat::Avg.aggregate(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(Stat::Max.aggregate(&[1.0, 2.0, 6.0]), Some(6.0));
        assert_eq!(Stat::Avg.aggregate(&[]), None);
    }

    #[test]
    fn a_point_deserializes_with_defaults_and_truncates_to_its_minute() {
        let p = point();
        assert_eq!(p.labels, json!({}));
        assert_eq!(p.avg, None);
        assert_eq!(p.minute().to_rfc3339(), "2026-11-21T12:03:00+00:00");
        assert!(p.validate().is_ok());
        let unknown: Result<MetricPoint, _> = serde_json::from_value(json!({
            "tenant": "a", "resource": "r", "metric": "m", "bucket": "2026-11-21T12:03:00Z",
            "p99": 1.0
        }));
        assert!(unknown.is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let mut p = point();
        p.tenant = " ".into();
        assert_eq!(p.validate().unwrap_err().0, "tenant");
        let mut p = point();
        p.resource = String::new();
        assert_eq!(p.validate().unwrap_err().0, "resource");
        let mut p = point();
        p.metric = "p95.ms".into();
        assert_eq!(p.validate().unwrap_err().0, "metric");
        let mut p = point();
        p.p95 = None;
        assert_eq!(p.validate().unwrap_err().0, "avg");
        let mut p = point();
        p.max = Some(f64::INFINITY);
        assert_eq!(p.validate().unwrap_err().0, "max");
        let mut p = point();
        p.p95 = Some(f64::NAN);
        assert_eq!(p.validate().unwrap_err().0, "p95");
        let mut p = point();
        p.count = Some(-1);
        assert_eq!(p.validate().unwrap_err().0, "count");
        let mut p = point();
        p.labels = json!([1]);
        assert_eq!(p.validate().unwrap_err().0, "labels");
    }

    #[test]
    fn stats_default_and_aggregate() {
        assert_eq!(Stat::default_for("p95_ms"), Stat::P95);
        assert_eq!(Stat::default_for("p99_latency"), Stat::P95);
        assert_eq!(Stat::default_for("err_rate"), Stat::Avg);
        assert_eq!(Stat::Avg.aggregate(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(Stat::P95.aggregate(&[1.0, 7.0, 6.0]), Some(7.0));
        assert_eq!(Stat::Max.aggregate(&[-3.0, -2.0]), Some(-2.0));
        assert_eq!(Stat::Avg.aggregate(&[]), None);
        assert_eq!("p95".parse::<Stat>(), Ok(Stat::P95));
        let at = DateTime::parse_from_rfc3339("2026-11-21T12:04:00.000000001Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            ceil_micros(at).to_rfc3339(),
            "2026-11-21T12:04:00.000001+00:00"
        );
        let whole = DateTime::parse_from_rfc3339("2026-11-21T12:04:00.5Z")
            .unwrap()
            .to_utc();
        assert_eq!(ceil_micros(whole), whole);
        assert!("p99".parse::<Stat>().is_err());
    }
}
