//! Shared test fixtures.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool, SqlitePool};
use verifier::{Check, Clock, Measurement, MetricPoint, MetricSource};
use workflow::messages::{CaseBrief, VerifyCommand};

pub fn ts(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

/// A fresh in-memory SQLite database with the real migrations applied.
pub async fn sqlite_pool() -> SqlitePool {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await
        .expect("in-memory sqlite");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    sqlx::migrate::Migrator::new(dir)
        .await
        .expect("sqlite migrations load")
        .run(&pool)
        .await
        .expect("sqlite migrations apply");
    pool
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A database of its own on PostgreSQL, dropped by [`PgDatabase::drop_database`].
pub struct PgDatabase {
    pub pool: PgPool,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// `None` (with a visible message) when `OPSCASE_TEST_POSTGRES_URL` is unset outside CI or
    /// the server is unreachable outside CI; in CI (`CI=true`) an unreachable server fails.
    pub async fn create() -> Option<Self> {
        let admin_url = match std::env::var("OPSCASE_TEST_POSTGRES_URL") {
            Ok(url) => url,
            Err(_) if in_ci() => "postgres://postgres@127.0.0.1:5432/test".to_string(),
            Err(_) => {
                eprintln!("SKIPPED: OPSCASE_TEST_POSTGRES_URL is not set; the PostgreSQL test did not run");
                return None;
            }
        };
        let mut admin = match PgConnection::connect(&admin_url).await {
            Ok(connection) => connection,
            Err(error) => {
                if in_ci() {
                    panic!("PostgreSQL is required in CI but unreachable at {admin_url}: {error}");
                }
                eprintln!("SKIPPED: PostgreSQL unreachable at {admin_url} ({error})");
                return None;
            }
        };
        let name = format!("opscase_vt_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let pool = PgPool::connect(&format!("{base}/{name}"))
            .await
            .expect("connect to the test database");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/postgres");
        sqlx::migrate::Migrator::new(dir)
            .await
            .expect("postgres migrations load")
            .run(&pool)
            .await
            .expect("postgres migrations apply");
        Some(Self {
            pool,
            admin_url,
            name,
        })
    }

    pub async fn drop_database(self) {
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
        }
    }
}

pub fn point(
    tenant: &str,
    resource: &str,
    metric: &str,
    bucket: &str,
    value: Value,
) -> MetricPoint {
    let mut json = json!({
        "tenant": tenant, "resource": resource, "metric": metric, "bucket": bucket,
    });
    for (key, v) in value.as_object().expect("fields").iter() {
        json[key] = v.clone();
    }
    serde_json::from_value(json).expect("a metric point")
}

pub fn command(tenant: &str, verify: Value) -> VerifyCommand {
    VerifyCommand {
        case: CaseBrief {
            id: "0190e8a0-0000-7000-8000-000000000001".into(),
            tenant: tenant.into(),
            title: "checkout slow".into(),
            severity: "high".into(),
            version: 3,
            ..Default::default()
        },
        plan_id: "0190e8a0-0000-7000-8000-0000000000aa".into(),
        verify,
    }
}

/// Always the same instant.
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// `origin` plus the tokio time elapsed since it was made (virtual under `pause()`).
pub struct TokioClock {
    origin: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(origin: DateTime<Utc>) -> Self {
        Self {
            origin,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.origin + chrono::TimeDelta::from_std(self.start.elapsed()).expect("elapsed")
    }
}

/// One call of a source: tenant, check name, window, instant.
pub type Call = (String, String, Duration, DateTime<Utc>);

/// Answers from a script, in order (`None`: an inconclusive measurement); records each call.
#[derive(Default)]
pub struct ScriptedSource {
    script: Mutex<VecDeque<Option<f64>>>,
    pub calls: Mutex<Vec<Call>>,
}

impl ScriptedSource {
    pub fn new(script: impl IntoIterator<Item = Option<f64>>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into_iter().collect()),
            calls: Mutex::default(),
        })
    }

    pub fn ats(&self) -> Vec<DateTime<Utc>> {
        self.calls.lock().unwrap().iter().map(|c| c.3).collect()
    }
}

#[async_trait]
impl MetricSource for ScriptedSource {
    async fn measure(
        &self,
        tenant: &str,
        check: &Check,
        window: Duration,
        at: DateTime<Utc>,
    ) -> Measurement {
        self.calls
            .lock()
            .unwrap()
            .push((tenant.into(), check.name.clone(), window, at));
        match self.script.lock().unwrap().pop_front() {
            Some(Some(value)) => Measurement::value(at, value, "scripted"),
            Some(None) => Measurement::inconclusive(at, "scripted: no data"),
            None => Measurement::inconclusive(at, "script exhausted"),
        }
    }
}

/// Answers by the check's query: `pass` 1, `fail` 100, `nan` NaN, anything else no data.
pub struct ByQuery;

#[async_trait]
impl MetricSource for ByQuery {
    async fn measure(&self, _: &str, check: &Check, _: Duration, at: DateTime<Utc>) -> Measurement {
        match check.query.as_str() {
            "pass" => Measurement::value(at, 1.0, "by query"),
            "fail" => Measurement::value(at, 100.0, "by query"),
            "nan" => Measurement::value(at, f64::NAN, "by query"),
            _ => Measurement::inconclusive(at, "no data (by query)"),
        }
    }
}
