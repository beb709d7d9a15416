//! The verifier on the Prometheus source, against wiremock.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use verifier::{PrometheusSource, Verdict, Verifier, VerifyOutcome, PROMETHEUS};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{command, ts, FixedClock};

const AT: &str = "2026-11-21T12:10:00.250Z";

fn verifier(base_url: &str) -> Verifier {
    let source = PrometheusSource::new(base_url).with_timeout(Duration::from_secs(5));
    Verifier::new(vec![(PROMETHEUS.to_string(), Arc::new(source) as _)])
        .with_clock(Arc::new(FixedClock(ts(AT))))
}

fn vector(result: Value) -> Value {
    json!({"status": "success", "data": {"resultType": "vector", "result": result}})
}

async fn answer(server: &MockServer, status: u16, body: Value) {
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(server)
        .await;
}

async fn run(verifier: &Verifier, query: &str, threshold: &str) -> VerifyOutcome {
    verifier
        .run(&command(
            "acme",
            json!({
                "checks": [{"source": "prometheus", "query": query, "threshold": threshold}],
                "window_s": 120
            }),
        ))
        .await
}

#[tokio::test]
async fn the_request_is_an_instant_query_at_the_measurement_time() {
    let server = MockServer::start().await;
    let expected_query = "histogram_quantile(0.95, sum(rate(http_seconds_bucket{job=\"checkout\"}[120s])) by (le)) * 1000";
    let expected_time = format!("{}.250", ts(AT).timestamp());
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .and(query_param("query", expected_query))
        .and(query_param("time", expected_time.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(vector(json!([
            {"metric": {}, "value": [ts(AT).timestamp() as f64 + 0.25, "212.5"]}
        ]))))
        .expect(1)
        .mount(&server)
        .await;
    // A trailing slash on the base URL is fine.
    let verifier = verifier(&format!("{}/", server.uri()));
    let outcome = run(
        &verifier,
        "histogram_quantile(0.95, sum(rate(http_seconds_bucket{job=\"checkout\"}[$window])) by (le)) * 1000",
        "p95_ms < 300",
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Pass, "{}", outcome.reason);
    assert_eq!(outcome.source, "prometheus");
    let m = &outcome.checks[0].measurements[0];
    assert_eq!((m.at, m.value, m.passed), (ts(AT), Some(212.5), Some(true)));

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let url = &requests[0].url;
    assert_eq!(url.path(), "/api/v1/query");
    let params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(
        params,
        vec![
            ("query".to_string(), expected_query.to_string()),
            ("time".to_string(), expected_time),
        ]
    );
}

#[tokio::test]
async fn a_scalar_result_is_a_value() {
    let server = MockServer::start().await;
    answer(
        &server,
        200,
        json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "0.002"]}}),
    )
    .await;
    let outcome = run(&verifier(&server.uri()), "scalar(x)", "err_rate <= 0.01").await;
    assert_eq!(outcome.verdict, Verdict::Pass, "{}", outcome.reason);
    assert_eq!(outcome.checks[0].measurements[0].value, Some(0.002));
}

#[tokio::test]
async fn a_sample_over_the_threshold_fails() {
    let server = MockServer::start().await;
    answer(
        &server,
        200,
        vector(json!([{"metric": {"job": "checkout"}, "value": [1.0, "0.2"]}])),
    )
    .await;
    let outcome = run(&verifier(&server.uri()), "errors", "err_rate <= 0.01").await;
    assert_eq!(outcome.verdict, Verdict::Fail);
    assert_eq!(outcome.checks[0].measurements[0].passed, Some(false));
}

async fn inconclusive(status: u16, body: Value, needle: &str) {
    let server = MockServer::start().await;
    answer(&server, status, body).await;
    let outcome = run(&verifier(&server.uri()), "q", "x < 1").await;
    assert_eq!(outcome.verdict, Verdict::Inconclusive, "{}", outcome.reason);
    assert_eq!(outcome.topic(), "evt.verify.failed.v1");
    let m = &outcome.checks[0].measurements[0];
    assert_eq!((m.value, m.passed), (None, None));
    assert!(m.note.contains(needle), "{needle:?} not in {:?}", m.note);
    assert!(
        outcome.reason.contains(needle),
        "{needle:?} not in {:?}",
        outcome.reason
    );
}

#[tokio::test]
async fn an_empty_vector_is_inconclusive() {
    inconclusive(200, vector(json!([])), "empty vector").await;
}

#[tokio::test]
async fn two_series_are_inconclusive() {
    inconclusive(
        200,
        vector(json!([
            {"metric": {"pod": "a"}, "value": [1.0, "0.1"]},
            {"metric": {"pod": "b"}, "value": [1.0, "0.2"]}
        ])),
        "returned 2 series, expected exactly one",
    )
    .await;
}

#[tokio::test]
async fn an_error_status_is_inconclusive() {
    inconclusive(
        400,
        json!({"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unexpected end of input"}),
        "prometheus answered HTTP 400: bad_data: 1:5: parse error",
    )
    .await;
    inconclusive(
        503,
        json!({"status": "error", "errorType": "unavailable", "error": "too many queries"}),
        "HTTP 503",
    )
    .await;
    inconclusive(
        200,
        json!({"status": "error", "error": "strange"}),
        "prometheus answered status \"error\": strange",
    )
    .await;
}

#[tokio::test]
async fn nan_and_infinity_are_inconclusive() {
    inconclusive(
        200,
        vector(json!([{"metric": {}, "value": [1.0, "NaN"]}])),
        "x = NaN is not a finite number",
    )
    .await;
    inconclusive(
        200,
        vector(json!([{"metric": {}, "value": [1.0, "+Inf"]}])),
        "x = inf is not a finite number",
    )
    .await;
}

#[tokio::test]
async fn other_result_types_are_inconclusive() {
    inconclusive(
        200,
        json!({"status": "success", "data": {"resultType": "matrix", "result": []}}),
        "result type \"matrix\" is not supported",
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_server_is_inconclusive() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let outcome = run(&verifier(&format!("http://127.0.0.1:{port}")), "q", "x < 1").await;
    assert_eq!(outcome.verdict, Verdict::Inconclusive);
    assert!(outcome.checks[0].measurements[0]
        .note
        .contains("prometheus unreachable"));
}
