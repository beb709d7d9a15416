//! Log stores opscase talks to, played by local HTTP servers that implement the subset it uses
//! with the real request and response shapes, and keep every request to check: Grafana Loki
//! (`/loki/api/v1/push`, `/loki/api/v1/query_range`) and OpenObserve (`/api/{org}/_search`).
//! A step's output is pushed to Loki and read back through its evidence; a store that is down
//! is a 502 problem and leaves the case alone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{Duration, DurationRound, Utc};
use opscase::Config;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, TestDatabase};

/// A pushed stream: its labels and its `(nanoseconds, line)` values.
type Stream = (BTreeMap<String, String>, Vec<(i128, String)>);

/// What the Loki stand-in was sent and holds: streams as pushed, and every query's params.
#[derive(Default)]
struct Loki {
    streams: Vec<Stream>,
    pushes: Vec<Value>,
    queries: Vec<BTreeMap<String, String>>,
}

type Shared<T> = Arc<Mutex<T>>;

/// Loki's push (JSON) and query_range (streams), enough of them for opscase.
async fn start_loki() -> (String, Shared<Loki>) {
    let state: Shared<Loki> = Arc::default();
    let app =
        Router::new()
            .route(
                "/loki/api/v1/push",
                post(
                    |State(loki): State<Shared<Loki>>,
                     headers: HeaderMap,
                     Json(body): Json<Value>| async move {
                        assert_eq!(headers["content-type"], "application/json");
                        let mut loki = loki.lock().unwrap();
                        for stream in body["streams"].as_array().expect("streams") {
                            let labels: BTreeMap<String, String> =
                                serde_json::from_value(stream["stream"].clone())
                                    .expect("a label map");
                            let values = stream["values"]
                                .as_array()
                                .expect("values")
                                .iter()
                                .map(|pair| {
                                    let ns = pair[0].as_str().expect("a nanosecond string");
                                    (
                                        ns.parse::<i128>().expect("digits"),
                                        pair[1].as_str().unwrap().to_string(),
                                    )
                                })
                                .collect();
                            loki.streams.push((labels, values));
                        }
                        loki.pushes.push(body);
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .route(
                "/loki/api/v1/query_range",
                get(
                    |State(loki): State<Shared<Loki>>,
                     Query(params): Query<BTreeMap<String, String>>| async move {
                        let mut loki = loki.lock().unwrap();
                        loki.queries.push(params.clone());
                        let wanted = selector(&params["query"]);
                        let (start, end) = (
                            params["start"].parse::<i128>().unwrap(),
                            params["end"].parse::<i128>().unwrap(),
                        );
                        let limit: usize = params["limit"].parse().unwrap();
                        let result: Vec<Value> = loki
                            .streams
                            .iter()
                            .filter(|(labels, _)| {
                                wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
                            })
                            .map(|(labels, values)| {
                                let values: Vec<Value> = values
                                    .iter()
                                    .filter(|(ns, _)| *ns >= start && *ns < end)
                                    .take(limit)
                                    .map(|(ns, line)| json!([ns.to_string(), line]))
                                    .collect();
                                json!({"stream": labels, "values": values})
                            })
                            .collect();
                        Json(json!({"status": "success",
                                "data": {"resultType": "streams", "result": result,
                                         "stats": {}}}))
                    },
                ),
            )
            .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), state)
}

/// `{a="1", b="2"}` as a map (the only LogQL opscase sends for pushed output).
fn selector(query: &str) -> BTreeMap<String, String> {
    query
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').expect("label=\"value\"");
            (
                key.trim().to_string(),
                value.trim().trim_matches('"').to_string(),
            )
        })
        .collect()
}

fn with_loki(config: &mut Config, loki: &str) {
    config.executor.script_dir =
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/scripts").into());
    config.sensor.loki.url = Some(loki.to_string());
    config.sensor.loki.push_url = Some(format!("{loki}/loki/api/v1/push"));
    config.planner.defaults.insert(
        "script.restart".into(),
        json!({"script": "echo"}).as_object().unwrap().clone(),
    );
}

async fn step_output_goes_to_loki_and_comes_back_as_evidence(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let (loki, seen) = start_loki().await;
    let mut config = database.config();
    with_loki(&mut config, &loki);
    let app = TestApp::start(config).await;

    // An auto case whose plan runs the allowlisted `echo` script with the service's name.
    let response = app
        .client
        .post(app.url("/v1/cases"))
        .json(
            &json!({"title": "checkout errors", "tenant": "t-001", "automation": "auto",
                      "labels": {"template": "script.restart", "service": "checkout"}}),
        )
        .send()
        .await
        .unwrap();
    let case: Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The analyst answers `cmd.analysis.run` with `analysis_done`.
    app.advance(case, json!({"event": "start_analysis"})).await;
    let evidence = async || {
        let (_, page) = app.get_json(&format!("/v1/cases/{case}/evidence")).await;
        page["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|e| e["kind"] == "log")
    };
    for _ in 0..300 {
        if evidence().await.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if evidence().await.is_none() {
        let pushes = seen.lock().unwrap().pushes.clone();
        panic!(
            "the step output did not become evidence; pushes: {pushes:?}; timeline: {:#}",
            json!(app.timeline(case).await)
        );
    }
    let log = evidence().await.unwrap();
    assert_eq!(
        log["title"], "output of run step restart, attempt 1",
        "{log:#}"
    );
    assert_eq!(log["locator"]["system"], "loki");

    {
        let loki = seen.lock().unwrap();
        assert_eq!(loki.pushes.len(), 1, "one push per attempt");
        let (labels, values) = &loki.streams[0];
        let expected: BTreeMap<String, String> = [
            ("job", "opscase"),
            ("case_id", &case.to_string()),
            ("step", "restart"),
            ("attempt", "1"),
            ("phase", "run"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(labels, &expected);
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].1, "checkout", "the script's output, line by line");
    }

    let (status, lines) = app
        .get_json(&format!(
            "/v1/evidence/{}/lines?limit=10",
            log["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{lines:#}");
    assert_eq!(lines["system"], "loki");
    assert_eq!(lines["lines"][0]["text"], "checkout");
    assert_eq!(lines["lines"][0]["labels"]["step"], "restart");
    assert_eq!(lines["truncated"], false);
    let query = seen.lock().unwrap().queries[0].clone();
    assert_eq!(query["direction"], "forward");
    assert_eq!(
        query["limit"], "11",
        "one more than asked, to tell whether there were more"
    );
    assert_eq!(selector(&query["query"]).len(), 5, "{query:?}");

    let step = app
        .timeline(case)
        .await
        .into_iter()
        .find(|row| row["event"] == "step_result")
        .unwrap();
    assert_eq!(step["meta"]["output_ref"]["system"], "loki", "{step:#}");
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_output_goes_to_loki_and_comes_back_as_evidence_on_sqlite() {
    step_output_goes_to_loki_and_comes_back_as_evidence(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_output_goes_to_loki_and_comes_back_as_evidence_on_postgres() {
    step_output_goes_to_loki_and_comes_back_as_evidence(Backend::Postgres).await;
}

/// OpenObserve's `_search`, checking basic authentication, answering hits with `_timestamp`
/// in microseconds.
async fn start_openobserve() -> (String, Shared<Vec<(String, Value)>>) {
    let seen: Shared<Vec<(String, Value)>> = Arc::default();
    let app = Router::new()
        .route(
            "/api/{org}/_search",
            post(
                |State(seen): State<Shared<Vec<(String, Value)>>>,
                 Path(org): Path<String>,
                 Query(params): Query<BTreeMap<String, String>>,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    // "ops@example.com:secret", base64.
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some("Basic b3BzQGV4YW1wbGUuY29tOnNlY3JldA==")
                    {
                        return (StatusCode::UNAUTHORIZED, Json(json!({"code": 401})));
                    }
                    assert_eq!(params.get("type").map(String::as_str), Some("logs"));
                    seen.lock().unwrap().push((org, body.clone()));
                    let start = body["query"]["start_time"].as_i64().unwrap();
                    let hits = json!([
                        {"_timestamp": start + 2_000_000, "log": "second", "level": "info"},
                        {"_timestamp": start + 1_000_000, "log": "token=abc123 first", "level": "error"},
                        {"_timestamp": start + 3_000_000, "log": "third", "level": "info"},
                    ]);
                    (StatusCode::OK, Json(json!({"took": 1, "hits": hits, "total": 3,
                                                 "from": 0, "size": 3, "scan_size": 1})))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openobserve_lines_are_fetched_masked_and_capped_and_a_dead_store_is_a_502() {
    let (openobserve, seen) = start_openobserve().await;
    // A port nothing listens on: Loki is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let mut config = database.config();
    config.sensor.openobserve.url = Some(openobserve);
    config.sensor.openobserve.user = Some("ops@example.com".into());
    config.sensor.openobserve.password = Some(serde_json::from_value(json!("secret")).unwrap());
    config.sensor.loki.url = Some(dead_url);
    config.redaction.patterns = vec!["token=[a-z0-9]+".into()];
    let app = TestApp::start(config).await;
    let case = app.open_case("t-001").await;

    let to = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let from = to - Duration::minutes(5);
    let add = async |locator: Value| -> Value {
        let response = app
            .client
            .post(app.url(&format!("/v1/cases/{case}/evidence")))
            .json(&json!({"kind": "log", "title": "errors", "locator": locator}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    };
    let o2 = add(json!({"system": "openobserve", "dataset": "checkout",
                        "query": "SELECT * FROM \"checkout\" WHERE level = 'error'",
                        "org": "shop", "from": from.to_rfc3339(), "to": to.to_rfc3339()}))
    .await;
    let (status, lines) = app
        .get_json(&format!(
            "/v1/evidence/{}/lines?limit=2",
            o2["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{lines:#}");
    let texts: Vec<&str> = lines["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["*** first", "second"],
        "oldest first, masked, at most the limit"
    );
    assert_eq!(lines["truncated"], true);
    assert_eq!(lines["lines"][0]["labels"]["level"], "error");
    let (org, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(org, "shop");
    assert_eq!(
        body,
        json!({"query": {"sql": "SELECT * FROM \"checkout\" WHERE level = 'error'",
                         "start_time": from.timestamp_micros(), "end_time": to.timestamp_micros(),
                         "from": 0, "size": 3}})
    );

    let version = app.case(case).await["version"].clone();
    let loki = add(json!({"system": "loki", "query": "{app=\"checkout\"}"})).await;
    let (status, problem) = app
        .get_json(&format!(
            "/v1/evidence/{}/lines",
            loki["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{problem:#}");
    assert_eq!(problem["type"], "urn:opscase:problem:log-store-failed");
    assert_eq!(
        app.case(case).await["version"],
        version,
        "the case is not touched"
    );

    let (status, problem) = app
        .get_json(&format!("/v1/evidence/{}/lines", Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem:#}");
    database.drop_database().await;
}
