//! The analyst's live path on both backends: anomalies in ingested `metric_1m` open cases with
//! no human involved, through the sensor's path (one case per group, dedup), with the finding
//! and the metric window as evidence; back-filled history only warms the detectors up; a
//! restart neither loses nor repeats what was found; a flapping series opens one case.

use chrono::{Duration, DurationRound, Utc};
use opscase::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eventually, Backend, TestApp, TestDatabase};
use crate::on_both_backends;

/// The minimal rule of the issue, widened to two latency metrics: `p95*` of every resource.
fn latency_rule(config: &mut Config) {
    config.analyst.rules = serde_json::from_value(json!([
        {"name": "latency", "metric": "p95*"}
    ]))
    .unwrap();
}

/// `value(minute)` for the buckets `from..to` minutes ago (oldest first), of `metric`.
async fn ingest(
    app: &TestApp,
    resource: &str,
    metric: &str,
    minutes: std::ops::Range<i64>,
    value: impl Fn(i64) -> f64,
) {
    let now = Utc::now().duration_trunc(Duration::minutes(1)).unwrap();
    let points: Vec<Value> = minutes
        .rev()
        .map(|ago| {
            json!({"tenant": "t-001", "resource": resource, "metric": metric,
                   "bucket": (now - Duration::minutes(ago)).to_rfc3339(), "p95": value(ago)})
        })
        .collect();
    for chunk in points.chunks(500) {
        let response = app
            .client
            .post(app.url("/v1/metrics/1m"))
            .json(&json!({"points": chunk}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// Latency around 120 ms with a little deterministic noise.
fn healthy(ago: i64) -> f64 {
    120.0 + ((ago * 37) % 11) as f64
}

async fn analyst_cases(app: &TestApp) -> Vec<Value> {
    let (status, page) = app.get_json("/v1/cases?source=analyst&limit=200").await;
    assert_eq!(status, StatusCode::OK);
    page["items"].as_array().unwrap().clone()
}

async fn anomalies_open_one_case_and_a_restart_neither_loses_nor_repeats_it(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let mut config = database.config();
    latency_rule(&mut config);
    let app = TestApp::start(config.clone()).await;

    // A day of history warms the default detector up (it calibrates on the series' own past
    // before it calls anything rare). An old spike of another service, an hour ago, fires
    // only in the past: no case.
    ingest(&app, "checkout", "p95_ms", 3..1503, healthy).await;
    ingest(&app, "cart", "p95_ms", 3..1503, |ago| {
        if ago == 60 {
            5000.0
        } else {
            healthy(ago)
        }
    })
    .await;
    ingest(&app, "checkout", "p95_ms", 2..3, |_| 900.0).await;
    eventually("the anomaly to open a case", 30, async || {
        analyst_cases(&app).await.len() == 1
    })
    .await;
    let case = analyst_cases(&app).await.remove(0);
    let id: uuid::Uuid = case["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(case["labels"]["service"], "checkout", "{case:#}");
    assert_eq!(case["labels"]["alertname"], "latency");
    assert!(
        case["title"]
            .as_str()
            .unwrap()
            .starts_with("p95_ms p95 of checkout is 900"),
        "{case:#}"
    );
    let (_, evidence) = app.get_json(&format!("/v1/cases/{id}/evidence")).await;
    let kinds: Vec<&str> = evidence["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["alert", "metric"], "{evidence:#}");
    let window = &evidence["items"][1]["ref"];
    assert_eq!(window["table"], "metric_1m");
    assert_eq!(window["keys"]["resource"], "checkout");
    assert!(
        app.metric("analyst_findings_total{detector=\"default\",rule=\"latency\"}")
            .await
            >= 1.0
    );

    // A restart: the state is saved, nothing is judged twice, nothing is lost.
    drop(app);
    let app = TestApp::start(config).await;
    // The same anomaly delivered again (a shipper's retry) and another series of the group.
    ingest(&app, "checkout", "p95_ms", 2..3, |_| 900.0).await;
    ingest(&app, "checkout", "p95_db_ms", 3..1503, healthy).await;
    ingest(&app, "checkout", "p95_db_ms", 1..2, |_| 700.0).await;
    eventually(
        "the second series' finding to join the case",
        30,
        async || {
            app.timeline(id)
                .await
                .iter()
                .filter(|row| row["event"] == "signal")
                .count()
                == 2
        },
    )
    .await;
    assert_eq!(analyst_cases(&app).await.len(), 1, "one case for the group");
    let rows = app.timeline(id).await;
    let signals: Vec<&str> = rows
        .iter()
        .filter(|row| row["event"] == "signal")
        .map(|row| row["meta"]["labels"]["metric"].as_str().unwrap())
        .collect();
    assert_eq!(signals, ["p95_ms", "p95_db_ms"]);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anomalies_open_one_case_and_a_restart_neither_loses_nor_repeats_it_on_sqlite() {
    anomalies_open_one_case_and_a_restart_neither_loses_nor_repeats_it(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anomalies_open_one_case_and_a_restart_neither_loses_nor_repeats_it_on_postgres() {
    anomalies_open_one_case_and_a_restart_neither_loses_nor_repeats_it(Backend::Postgres).await;
}

/// A static threshold with nothing to warm up, and an hour within which buckets count.
fn flapping(config: &mut Config) {
    config.analyst.rules = serde_json::from_value(json!([
        {"name": "errors", "metric": "err_rate", "stat": "p95", "severity": "high",
         "detector": {"kind": "threshold", "above": 0.05},
         "route": {"automation": "manual", "labels": {"team": "shop"}}}
    ]))
    .unwrap();
    config.analyst.max_age_s = 3600;
}

on_both_backends!(
    a_flapping_series_opens_one_case_per_cooldown,
    super::flapping
);
async fn a_flapping_series_opens_one_case_per_cooldown(app: TestApp) {
    // Around the threshold every other minute for half an hour: never ten clean minutes in a
    // row, so the alarm that fired never recovers and nothing fires again.
    let now = Utc::now().duration_trunc(Duration::minutes(1)).unwrap();
    let points: Vec<Value> = (1..31)
        .rev()
        .map(|ago| {
            json!({"tenant": "t-001", "resource": "search", "metric": "err_rate",
                   "bucket": (now - Duration::minutes(ago)).to_rfc3339(),
                   "p95": if ago % 2 == 0 { 0.06 } else { 0.04 }})
        })
        .collect();
    let response = app
        .client
        .post(app.url("/v1/metrics/1m"))
        .json(&json!({ "points": points }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    eventually("the first alarm to open a case", 30, async || {
        analyst_cases(&app).await.len() == 1
    })
    .await;
    // All thirty buckets were judged in that one evaluation: one finding, one case.
    let cases = analyst_cases(&app).await;
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0]["severity"], "high");
    assert_eq!(cases[0]["labels"]["team"], "shop");
    assert_eq!(
        app.metric("analyst_findings_total{detector=\"threshold\",rule=\"errors\"}")
            .await,
        1.0
    );
}
