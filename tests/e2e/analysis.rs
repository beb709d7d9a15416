//! The analysis of a case on both backends: an `auto` case opened by an anomaly goes through
//! ANALYZING with findings (the metric off its baseline, a degraded downstream dependency from
//! `service_call_5m`, a recent deploy) to PLANNING with no human involved, and the planner's
//! command carries the findings; `POST /v1/analysis/run` examines a case on request and says
//! so when there is nothing to find.

use chrono::{Duration, DurationRound, Utc};
use opscase::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, TestApp};
use crate::on_both_backends;

/// A static threshold on checkout's p95 whose cases are `auto`, with an hour of buckets that
/// count (the test's anomaly spans a few minutes).
fn auto_latency_rule(config: &mut Config) {
    config.analyst.rules = serde_json::from_value(json!([
        {"name": "slow-checkout", "resource": "checkout", "metric": "p95_ms",
         "detector": {"kind": "threshold", "above": 500.0},
         "route": {"automation": "auto", "template": "noop.check"}}
    ]))
    .unwrap();
    config.analyst.max_age_s = 3600;
}

fn now_minute() -> chrono::DateTime<Utc> {
    Utc::now().duration_trunc(Duration::minutes(1)).unwrap()
}

async fn post(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `value(ago)` of checkout's p95 for the minutes `ago` ago, oldest first.
async fn ingest_latency(app: &TestApp, minutes: std::ops::Range<i64>, value: impl Fn(i64) -> f64) {
    let now = now_minute();
    let points: Vec<Value> = minutes
        .rev()
        .map(|ago| {
            json!({"tenant": "t-001", "resource": "checkout", "metric": "p95_ms",
                   "bucket": (now - Duration::minutes(ago)).to_rfc3339(), "p95": value(ago)})
        })
        .collect();
    for chunk in points.chunks(1000) {
        let (status, body) = post(app, "/v1/metrics/1m", json!({"points": chunk})).await;
        assert_eq!(status, StatusCode::OK, "{body:#}");
    }
}

/// A day of checkout's calls to payments and inventory; payments fails 15% of calls in the
/// last half hour (0.2% before).
async fn ingest_calls(app: &TestApp) {
    let now = Utc::now();
    let mut points = Vec::new();
    for step in 0..12 * 24 {
        let bucket = now - Duration::minutes(5 * step);
        let recent = step <= 5;
        points.push(
            json!({"tenant": "t-001", "bucket": bucket.to_rfc3339(), "src": "checkout",
            "dst": "payments", "rps": 40.0, "p95_ms": 80.0,
            "err_rate": if recent { 0.15 } else { 0.002 }}),
        );
        points.push(
            json!({"tenant": "t-001", "bucket": bucket.to_rfc3339(), "src": "checkout",
            "dst": "inventory", "rps": 12.0, "p95_ms": 300.0, "err_rate": 0.001}),
        );
    }
    let (status, body) = post(app, "/v1/metrics/calls5m", json!({ "points": points })).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["written"], 576);
}

on_both_backends!(
    an_auto_case_from_an_anomaly_is_analysed_and_planned_by_itself,
    super::auto_latency_rule
);
async fn an_auto_case_from_an_anomaly_is_analysed_and_planned_by_itself(app: TestApp) {
    ingest_calls(&app).await;
    let deployed = Utc::now() - Duration::minutes(10);
    let (status, recorded) = post(
        &app,
        "/v1/signals/changes",
        json!({"service": "checkout", "kind": "deploy",
               "payload": {"summary": "checkout 1.4.2 rolled out", "source": "argo-cd",
                           "timestamp": deployed.to_rfc3339(),
                           "custom_details": {"tenant": "t-001", "version": "1.4.2"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{recorded:#}");
    assert_eq!(recorded["tenant"], "t-001");
    // A change of a service that checkout does not call is not about this case.
    let (status, _) = post(
        &app,
        "/v1/signals/changes",
        json!({"service": "billing", "payload": {"summary": "billing config reloaded",
               "custom_details": {"tenant": "t-001"}}, "kind": "config"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    ingest_latency(&app, 7..1507, |ago| 120.0 + ((ago * 37) % 11) as f64).await;
    ingest_latency(&app, 1..7, |_| 900.0).await;

    eventually("the anomaly to open a case", 30, async || {
        let (_, page) = app.get_json("/v1/cases?source=analyst").await;
        page["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty())
    })
    .await;
    let (_, page) = app.get_json("/v1/cases?source=analyst").await;
    let case: Uuid = page["items"][0]["id"]
        .as_str()
        .expect("the anomaly opened a case")
        .parse()
        .unwrap();
    eventually("the analyst to finish ANALYZING", 30, async || {
        let status = app.case(case).await["status"].clone();
        status != "NEW" && status != "ANALYZING"
    })
    .await;
    let rows = app.timeline(case).await;
    let events: Vec<&str> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    let analysed = rows
        .iter()
        .find(|row| row["event"] == "analysis_done")
        .unwrap_or_else(|| panic!("no analysis_done in {events:?}"));
    assert_eq!(analysed["actor"], "analyst");
    assert_eq!(analysed["to_status"], "PLANNING");
    let kinds: Vec<&str> = analysed["meta"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["metric_deviation", "dependency_degraded", "recent_change"],
        "{analysed:#}"
    );
    let reason = analysed["reason"].as_str().unwrap();
    assert!(reason.starts_with("3 findings for checkout in the last 30 min: p95_ms p95 of checkout above its baseline: 900"), "{reason}");
    let findings = &analysed["meta"]["findings"];
    assert_eq!(findings[1]["detail"]["dst"], "payments");
    assert_eq!(
        findings[1]["evidence"][0]["ref"]["table"],
        "service_call_5m"
    );
    // The deploy came shortly before the latency left its baseline: it scores higher.
    assert_eq!(
        findings[2]["detail"]["summary"],
        "checkout 1.4.2 rolled out"
    );
    assert_eq!(findings[2]["detail"]["before_onset"], true);
    assert_eq!(findings[2]["score"], 0.8);
    let ranked: Vec<&str> = analysed["meta"]["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dst"].as_str().unwrap())
        .collect();
    assert_eq!(ranked, ["inventory", "payments"]);

    // Stored on the case, and given to the planner with its command.
    let (status, stored) = app.get_json(&format!("/v1/cases/{case}/findings")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["items"].as_array().unwrap().len(), 3, "{stored:#}");
    assert_eq!(stored["items"][0]["kind"], "metric_deviation");
    assert_eq!(
        stored["items"][0]["evidence"][0]["ref"]["keys"]["resource"],
        "checkout"
    );
    let commands = app
        .orchestrator
        .store()
        .outbox_for(&case.to_string())
        .await
        .unwrap();
    let plan_command = commands
        .iter()
        .find(|m| m.topic == "cmd.plan.generate")
        .expect("a plan command");
    assert_eq!(
        plan_command.payload["case"]["findings"],
        analysed["meta"]["findings"]
    );
    assert!(commands.iter().any(|m| m.topic == "cmd.analysis.run"));
    assert!(
        app.metric(r#"signals_received_total{source="changes",status="deploy"}"#)
            .await
            >= 1.0
    );
}

on_both_backends!(an_analysis_on_request_says_what_it_found_or_that_it_found_nothing);
async fn an_analysis_on_request_says_what_it_found_or_that_it_found_nothing(app: TestApp) {
    let open = async |labels: Value| -> Uuid {
        let (status, case) = post(
            &app,
            "/v1/cases",
            json!({"title": "checkout is slow", "tenant": "t-001", "labels": labels}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{case:#}");
        case["id"].as_str().unwrap().parse().unwrap()
    };
    // A manual case in ANALYZING: the answer moves it on, and says nothing was found.
    let case = open(json!({"service": "checkout"})).await;
    app.advance(case, json!({"event": "start_analysis"})).await;
    let (status, answer) = post(
        &app,
        "/v1/analysis/run",
        json!({"case_id": case, "window_minutes": 15}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer:#}");
    assert_eq!(answer["status"], "applied");
    assert_eq!(answer["case"]["status"], "PLANNING");
    let done = app
        .timeline(case)
        .await
        .into_iter()
        .find(|row| row["event"] == "analysis_done")
        .unwrap();
    assert_eq!(
        done["reason"],
        "nothing found for checkout in the last 15 min: 0 metrics within their baseline, 0 \
         dependencies normal, no deploy or config change"
    );
    assert_eq!(done["meta"]["findings"], json!([]));

    // Again in PLANNING: recorded, the case stays where it is.
    let (status, answer) = post(&app, "/v1/analysis/run", json!({"case_id": case})).await;
    assert_eq!(status, StatusCode::OK, "{answer:#}");
    assert_eq!(answer["status"], "answered");
    assert_eq!(answer["answer"]["event"], "analysis_findings");
    assert_eq!(answer["case"]["status"], "PLANNING");

    // A case that names no service is not guessed about.
    let anonymous = open(json!({"team": "shop"})).await;
    let (_, answer) = post(&app, "/v1/analysis/run", json!({"case_id": anonymous})).await;
    assert_eq!(answer["status"], "answered");
    assert!(answer["answer"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("nothing analysed: the case names no service"));

    // Bad requests name the field; a closed case is not analysed.
    let (status, problem) = post(
        &app,
        "/v1/analysis/run",
        json!({"case_id": case, "window_minutes": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["field"], "window_minutes");
    app.advance(case, json!({"event": "cancel", "reason": "test"}))
        .await;
    let (status, _) = post(&app, "/v1/analysis/run", json!({"case_id": case})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, problem) = post(
        &app,
        "/v1/signals/changes",
        json!({"payload": {"summary": "no service"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["field"], "service");
    let (status, problem) = post(
        &app,
        "/v1/metrics/calls5m",
        json!({"points": [{"tenant": "t-001", "bucket": "2026-12-02T10:00:00Z", "src": "a",
                            "dst": "b", "err_rate": 2.0}]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["field"], "points[0].err_rate");
}
