//! Traces over OTLP/HTTP, end to end: `opscase serve` (the real binary, embedded bus on SQLite)
//! exports to a real OTLP/HTTP receiver run by the test, which decodes the protobuf
//! `ExportTraceServiceRequest` with the OpenTelemetry proto types. One auto case is one trace
//! whose spans link parent to child from the request through the relay, the bus and every
//! worker; callers' W3C (`traceparent` + `tracestate`) and B3 contexts are continued; a
//! receiver that is down or hangs never fails a request.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use reqwest::Client;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::distributed::{
    case_json, expect_closed_with_the_auto_timeline, free_port, ingest_healthy_metrics,
    open_and_start_auto_case, Process,
};
use crate::helpers::{client_with, eventually, Backend, TestDatabase, ADMIN_KEY};

/// A caller's span, as a W3C `traceparent`, and the `tracestate` that goes with it.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const CALLER_STATE: &str = "vendor=abc,other=1";
/// A caller that still speaks B3.
const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";

/// One span as the receiver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) service: String,
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) parent_span_id: String,
    trace_state: String,
    pub(crate) name: String,
    start: u64,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct ReceiverState {
    spans: Arc<Mutex<Vec<Seen>>>,
    hang: bool,
}

/// An OTLP/HTTP receiver on a random port: `POST /v1/traces` with protobuf.
pub(crate) struct Receiver {
    addr: SocketAddr,
    state: ReceiverState,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// `hang`: accept each export and never answer it.
    pub(crate) async fn start(hang: bool) -> Self {
        let state = ReceiverState {
            hang,
            ..ReceiverState::default()
        };
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            state,
            server,
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn spans(&self) -> Vec<Seen> {
        self.state.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    if state.hang {
        std::future::pending::<()>().await;
    }
    assert_eq!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        "application/x-protobuf"
    );
    let request = ExportTraceServiceRequest::decode(body).expect("an ExportTraceServiceRequest");
    let mut spans = state.spans.lock().unwrap();
    for resource in request.resource_spans {
        let attributes = resource
            .resource
            .map(|r| strings(&r.attributes))
            .unwrap_or_default();
        let service = attributes.get("service.name").cloned().unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(seen(&service, span));
            }
        }
    }
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        Vec::new(),
    )
}

fn seen(service: &str, span: Span) -> Seen {
    Seen {
        service: service.to_string(),
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: hex(&span.parent_span_id),
        trace_state: span.trace_state.clone(),
        name: span.name.clone(),
        start: span.start_time_unix_nano,
        attributes: strings(&span.attributes),
    }
}

fn strings(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(text) => text.clone(),
                any_value::Value::IntValue(n) => n.to_string(),
                any_value::Value::BoolValue(b) => b.to_string(),
                any_value::Value::DoubleValue(x) => x.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `opscase serve` on SQLite, exporting to `endpoint`.
struct Served {
    process: Process,
    base: String,
    client: Client,
    _database: TestDatabase,
}

impl Served {
    async fn start(endpoint: &str, extra: &[(&str, &str)]) -> Self {
        let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
        let dir = database.dir.path().to_path_buf();
        let listen = format!("127.0.0.1:{}", free_port());
        let base = format!("http://{listen}");
        let mut env = vec![
            ("OPSCASE_DATABASE_URL", database.url()),
            ("OPSCASE_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY.to_string()),
            ("OPSCASE_DATA_DIR", dir.display().to_string()),
            ("OPSCASE_LISTEN", listen),
            ("OPSCASE_OTLP_ENDPOINT", endpoint.to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let mut process = Process::spawn("serve", &dir, &["serve"], &env);
        let client = client_with(ADMIN_KEY);
        eventually("opscase serve answering /readyz", 60, async || {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("opscase serve exited early ({status})");
            }
            matches!(
                client.get(format!("{base}/readyz")).send().await,
                Ok(response) if response.status() == StatusCode::OK
            )
        })
        .await;
        Self {
            process,
            base,
            client,
            _database: database,
        }
    }

    /// SIGTERM: the service sends what is queued before it exits.
    async fn stop(&mut self) {
        let status = self.process.terminate(30).await;
        assert_eq!(
            status.code(),
            Some(0),
            "opscase serve stops cleanly; output:\n{}",
            self.process.output()
        );
    }

    async fn timeline(&self, case: Uuid) -> Vec<Value> {
        let body: Value = self
            .client
            .get(format!("{}/v1/cases/{case}/timeline?limit=200", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["items"].as_array().unwrap().clone()
    }
}

/// The spans of `trace`, checked to be one tree: exactly one root, every other span's parent
/// among them. Returns the root.
pub(crate) fn one_tree(spans: &[Seen], trace: &str) -> Seen {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<&Seen> = spans
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "trace {trace} has one root; roots: {roots:#?}"
    );
    roots[0].clone()
}

/// The tree under `root`, one span a line, indented by depth, children in start order.
fn tree(spans: &[Seen], root: &Seen, depth: usize, out: &mut String) {
    out.push_str(&format!("{}{}\n", "  ".repeat(depth), root.name));
    let mut children: Vec<&Seen> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    children.sort_by_key(|s| s.start);
    for child in children {
        tree(spans, child, depth + 1, out);
    }
}

/// The names on the way from `span` up to the root.
fn ancestry(spans: &[Seen], span: &Seen) -> Vec<String> {
    let by_id: HashMap<&str, &Seen> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut names = vec![span.name.clone()];
    let mut parent = span.parent_span_id.as_str();
    while let Some(up) = by_id.get(parent) {
        names.push(up.name.clone());
        parent = up.parent_span_id.as_str();
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_case_is_one_trace_from_the_request_through_the_bus_to_every_worker() {
    let receiver = Receiver::start(false).await;
    let mut served = Served::start(
        &receiver.endpoint(),
        &[("OTEL_SERVICE_NAME", "opscase-e2e")],
    )
    .await;
    let (client, base) = (served.client.clone(), served.base.clone());
    ingest_healthy_metrics(&client, &base).await;
    let case = open_and_start_auto_case(&client, &base).await;
    expect_closed_with_the_auto_timeline(&client, &base, case).await;
    let timeline = served.timeline(case).await;
    served.stop().await;

    // The trace of `start_analysis`: everything after it is its consequence.
    let start = timeline
        .iter()
        .find(|row| row["event"] == "start_analysis")
        .unwrap();
    let trace = start["meta"]["trace_id"].as_str().unwrap().to_string();
    for row in &timeline[1..] {
        assert_eq!(row["meta"]["trace_id"], trace, "{row:#}");
    }
    let all = receiver.spans();
    assert!(all.iter().all(|s| s.service == "opscase-e2e"));
    let spans: Vec<Seen> = all.into_iter().filter(|s| s.trace_id == trace).collect();
    let root = one_tree(&spans, &trace);
    assert_eq!(root.name, "PATCH /v1/cases/{id}/transition");
    assert_eq!(
        root.parent_span_id, "",
        "a request without traceparent starts the trace"
    );
    let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let mut shape = String::new();
    tree(&spans, &root, 0, &mut shape);
    eprintln!("the trace of one auto case, as the receiver got it:\n{shape}");
    for command in [
        "cmd.analysis.run",
        "cmd.plan.generate",
        "cmd.gate.eval",
        "cmd.exec.run",
        "cmd.verify.run",
    ] {
        let consumed = spans
            .iter()
            .find(|s| s.name == format!("consume {command}"))
            .unwrap_or_else(|| panic!("no consume span for {command} in {names:#?}"));
        let path = ancestry(&spans, consumed);
        // Each command goes request → transition/consume → publish (relay) → consume (worker).
        assert_eq!(path.last().unwrap(), &root.name, "{path:?}");
        assert!(path[1].starts_with("publish "), "{path:?}");
    }
    // The step ran inside the executor's consume span.
    let step = spans
        .iter()
        .find(|s| s.name.starts_with("step "))
        .unwrap_or_else(|| panic!("no step span in {names:#?}"));
    assert!(
        ancestry(&spans, step)
            .iter()
            .any(|name| name.contains("cmd.exec.run")),
        "{:?}",
        ancestry(&spans, step)
    );
    // Worker answers come back over the bus and are consumed in the same trace.
    assert!(
        names.iter().any(|n| n.starts_with("consume evt.")),
        "{names:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_w3c_caller_with_tracestate_and_a_b3_caller_are_continued() {
    let receiver = Receiver::start(false).await;
    let mut served = Served::start(&receiver.endpoint(), &[]).await;
    let (client, base) = (served.client.clone(), served.base.clone());
    let response = client
        .post(format!("{base}/v1/cases"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", CALLER_STATE)
        .json(&json!({"title": "p95 spike", "tenant": "t-001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let case: Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let response = client
        .get(format!("{base}/v1/cases/{case}"))
        .header("X-B3-TraceId", B3_TRACE)
        .header("X-B3-SpanId", B3_SPAN)
        .header("X-B3-Sampled", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let timeline = served.timeline(case).await;
    assert_eq!(timeline[0]["meta"]["trace_id"], CALLER_TRACE);
    let _ = case_json(&client, &base, case).await;
    served.stop().await;

    let spans = receiver.spans();
    let opened = spans
        .iter()
        .find(|s| s.name == "POST /v1/cases")
        .unwrap_or_else(|| panic!("no POST /v1/cases span in {spans:#?}"));
    assert_eq!(opened.trace_id, CALLER_TRACE);
    assert_eq!(opened.parent_span_id, CALLER_SPAN);
    assert_eq!(opened.trace_state, CALLER_STATE);
    assert_eq!(opened.attributes["request_id"].len(), 36);
    // The row the request wrote names the request's own span.
    assert_eq!(
        timeline[0]["meta"]["traceparent"],
        format!("00-{CALLER_TRACE}-{}-01", opened.span_id)
    );
    let shown = spans
        .iter()
        .find(|s| s.name == "GET /v1/cases/{id}" && s.trace_id == B3_TRACE)
        .unwrap_or_else(|| panic!("no GET span in the B3 caller's trace: {spans:#?}"));
    assert_eq!(shown.parent_span_id, B3_SPAN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_or_hangs_never_fails_a_request() {
    let down = format!("http://127.0.0.1:{}", free_port());
    let hanging = Receiver::start(true).await;
    for endpoint in [down, hanging.endpoint()] {
        // A small queue, so that spans are dropped while the exporter waits.
        let mut served = Served::start(
            &endpoint,
            &[
                ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
                ("OTEL_BSP_SCHEDULE_DELAY", "10"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ],
        )
        .await;
        let (client, base) = (served.client.clone(), served.base.clone());
        ingest_healthy_metrics(&client, &base).await;
        let case = open_and_start_auto_case(&client, &base).await;
        for _ in 0..50 {
            let response = client
                .get(format!("{base}/v1/cases/{case}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{endpoint}");
        }
        expect_closed_with_the_auto_timeline(&client, &base, case).await;
        served.stop().await;
        assert!(
            served
                .process
                .output()
                .contains("some spans were not exported"),
            "{endpoint}: the loss is reported; output:\n{}",
            served.process.output()
        );
    }
    assert!(hanging.spans().is_empty());
}
