//! OTLP/HTTP span export: the layer, fed spans shaped like the service's, POSTing to a real
//! local receiver. `logging::init` installs the layer globally, so these tests build their
//! own subscriber around it, scoped to the code that makes the spans.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use opscase::telemetry::{Telemetry, TelemetryConfig, TelemetryStats};
use serde_json::{json, Value};
use tracing::field::Empty;
use tracing_subscriber::layer::SubscriberExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The caller's span, from its `traceparent`.
const CALLER: &str = "00f067aa0ba902b7";
const REQUEST: &str = "b7ad6b7169203331";
const STEP: &str = "e457b5a2e4d86bd1";
const CONSUME: &str = "53995c3f42cd8ad8";
const CASE: &str = "0196a3b1-7c1e-7d2a-9f3e-5b8c1d2e3f40";

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Captured {
    path: String,
    content_type: Option<String>,
    api_key: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct ReceiverState {
    captured: Arc<Mutex<Vec<Captured>>>,
    /// Answers to give, in order (status, body); 200 `{}` once they run out.
    script: Arc<Mutex<VecDeque<(u16, &'static str)>>>,
}

struct Receiver {
    addr: SocketAddr,
    state: ReceiverState,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: &[(u16, &'static str)]) -> Self {
        let state = ReceiverState {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
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

    fn config(&self) -> TelemetryConfig {
        TelemetryConfig {
            // Only `flush` sends, so a test sees one batch.
            flush_interval: Duration::from_secs(3600),
            ..TelemetryConfig::new(format!("http://{}/v1/traces", self.addr))
        }
    }

    fn captured(&self) -> Vec<Captured> {
        self.state.captured.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    state.captured.lock().unwrap().push(Captured {
        path: uri.path().to_string(),
        content_type: header("content-type"),
        api_key: header("x-api-key"),
        body: serde_json::from_slice(&body).expect("the body is JSON"),
    });
    let (status, body) = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((200, "{}"));
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
}

/// Run `make_spans` with a subscriber that has only `telemetry`'s layer.
fn with_layer(telemetry: &Telemetry, make_spans: impl FnOnce()) {
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    tracing::subscriber::with_default(subscriber, make_spans);
}

fn pause() {
    std::thread::sleep(Duration::from_millis(2));
}

/// The spans of every captured request, in order.
fn spans_of(captured: &[Captured]) -> Vec<Value> {
    captured
        .iter()
        .flat_map(|c| {
            c.body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect()
}

/// Takes the span's timestamps out (checking they are decimal strings) and returns them.
fn take_times(span: &mut Value) -> (u64, u64) {
    let mut take = |key: &str| -> u64 {
        let text = span
            .as_object_mut()
            .unwrap()
            .remove(key)
            .unwrap_or_else(|| panic!("{key} in {span}"));
        text.as_str()
            .unwrap_or_else(|| panic!("{key} is a string"))
            .parse()
            .unwrap()
    };
    let start = take("startTimeUnixNano");
    let end = take("endTimeUnixNano");
    assert!(start <= end, "{start} <= {end}");
    (start, end)
}

fn is_hex(text: &Value, digits: usize) -> bool {
    text.as_str().is_some_and(|t| {
        t.len() == digits
            && t.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn string(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

fn int(key: &str, value: i64) -> Value {
    json!({ "key": key, "value": { "intValue": value.to_string() } })
}

#[tokio::test]
async fn spans_shaped_like_the_services_are_exported_as_otlp_json() {
    let receiver = Receiver::start(&[]).await;
    let mut config = receiver.config();
    config.headers = vec![("x-api-key".into(), "k-123".into())];
    let telemetry = Telemetry::start(config).unwrap();
    with_layer(&telemetry, || {
        // api/src/request_id.rs, continuing the caller's trace; http_metrics names it later.
        let request = tracing::info_span!(
            "request",
            otel.name = Empty,
            request_id = "req-1",
            method = "PATCH",
            path = %format!("/v1/cases/{CASE}/transition"),
            trace_id = %TRACE,
            span_id = %REQUEST,
            parent_span_id = Some(CALLER),
        );
        let entered = request.enter();
        request.record("otel.name", "PATCH /v1/cases/{id}/transition");
        pause();
        {
            // orchestrator/src/service.rs: from and to are recorded once the guard passed.
            let transition = tracing::info_span!(
                "transition",
                case_id = %CASE,
                event = "approve",
                from = Empty,
                to = Empty,
            );
            let _transition = transition.enter();
            transition.record("from", "proposed");
            transition.record("to", "approved");
            pause();
            {
                // executor/src/runner.rs: a span id of its own, the trace of its parent.
                let step = tracing::info_span!(
                    "step",
                    otel.name = %"step k8s.scale",
                    step = "s1",
                    action = "k8s.scale",
                    attempt = 1u32,
                    span_id = %STEP,
                );
                let _step = step.enter();
                pause();
                tracing::error!(step = "s1", "adapter failed");
                pause();
            }
            pause();
        }
        pause();
        drop(entered);
        drop(request);
        pause();
        // A request without a traceparent: no parent, no parent_span_id attribute.
        drop(tracing::info_span!(
            "request",
            otel.name = %"GET /healthz",
            request_id = "req-2",
            method = "GET",
            path = "/healthz",
            trace_id = "0af7651916cd43dd8448eb211c80319c",
            span_id = "a2fb4a1d1a96d312",
            parent_span_id = None::<&str>,
        ));
        pause();
        // orchestrator/src/relay.rs: a root span with no trace, delivering a message (embedded
        // bus) whose consume span (bus/src/trace.rs) continues the request's trace.
        let relay = tracing::info_span!("relay_batch", messages = 2usize);
        let _relay = relay.enter();
        pause();
        let consume = tracing::info_span!(
            "consume",
            otel.name = %"consume case.transitioned",
            consumer = %"orchestrator",
            message_id = %"m-1",
            kind = %"case.transitioned",
            case_id = %CASE,
            trace_id = %TRACE,
            span_id = %CONSUME,
            parent_span_id = Some(REQUEST),
        );
        drop(consume);
    });
    telemetry.flush().await;

    let captured = receiver.captured();
    assert_eq!(captured.len(), 1, "one batch: {captured:?}");
    let post = &captured[0];
    assert_eq!(post.path, "/v1/traces");
    assert_eq!(post.content_type.as_deref(), Some("application/json"));
    assert_eq!(post.api_key.as_deref(), Some("k-123"));
    let version = env!("CARGO_PKG_VERSION");
    let resource_spans = post.body["resourceSpans"].as_array().unwrap();
    assert_eq!(resource_spans.len(), 1);
    assert_eq!(
        resource_spans[0]["resource"],
        json!({ "attributes": [string("service.name", "opscase"), string("service.version", version)] })
    );
    let scope_spans = resource_spans[0]["scopeSpans"].as_array().unwrap();
    assert_eq!(scope_spans.len(), 1);
    assert_eq!(
        scope_spans[0]["scope"],
        json!({ "name": "opscase", "version": version })
    );

    // In the order they closed.
    let mut spans = spans_of(&captured);
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "step k8s.scale",
            "transition",
            "PATCH /v1/cases/{id}/transition",
            "GET /healthz",
            "consume case.transitioned",
            "relay_batch",
        ]
    );
    let times: Vec<(u64, u64)> = spans.iter_mut().map(take_times).collect();
    let [step, transition, request, health, consume, relay] = &spans[..] else {
        unreachable!()
    };

    // Fresh ids where the span had none.
    assert!(is_hex(&transition["spanId"], 16), "{transition}");
    assert!(is_hex(&relay["traceId"], 32), "{relay}");
    assert!(is_hex(&relay["spanId"], 16), "{relay}");
    assert_ne!(relay["traceId"], TRACE);
    let transition_id = transition["spanId"].as_str().unwrap();

    assert_eq!(
        *request,
        json!({
            "traceId": TRACE,
            "spanId": REQUEST,
            "parentSpanId": CALLER,
            "name": "PATCH /v1/cases/{id}/transition",
            "kind": 2,
            "attributes": [
                string("request_id", "req-1"),
                string("method", "PATCH"),
                string("path", &format!("/v1/cases/{CASE}/transition")),
            ],
            "status": { "code": 0 },
        })
    );
    assert_eq!(
        *transition,
        json!({
            "traceId": TRACE,
            "spanId": transition_id,
            "parentSpanId": REQUEST,
            "name": "transition",
            "kind": 1,
            "attributes": [
                string("case_id", CASE),
                string("event", "approve"),
                string("from", "proposed"),
                string("to", "approved"),
            ],
            "status": { "code": 0 },
        })
    );
    assert_eq!(
        *step,
        json!({
            "traceId": TRACE,
            "spanId": STEP,
            "parentSpanId": transition_id,
            "name": "step k8s.scale",
            "kind": 1,
            "attributes": [
                string("step", "s1"),
                string("action", "k8s.scale"),
                int("attempt", 1),
            ],
            "status": { "code": 2, "message": "adapter failed" },
        })
    );
    assert_eq!(
        *health,
        json!({
            "traceId": "0af7651916cd43dd8448eb211c80319c",
            "spanId": "a2fb4a1d1a96d312",
            "name": "GET /healthz",
            "kind": 2,
            "attributes": [
                string("request_id", "req-2"),
                string("method", "GET"),
                string("path", "/healthz"),
            ],
            "status": { "code": 0 },
        })
    );
    assert_eq!(
        *consume,
        json!({
            "traceId": TRACE,
            "spanId": CONSUME,
            "parentSpanId": REQUEST,
            "name": "consume case.transitioned",
            "kind": 5,
            "attributes": [
                string("consumer", "orchestrator"),
                string("message_id", "m-1"),
                string("kind", "case.transitioned"),
                string("case_id", CASE),
            ],
            "status": { "code": 0 },
        })
    );
    assert_eq!(
        *relay,
        json!({
            "traceId": relay["traceId"],
            "spanId": relay["spanId"],
            "name": "relay_batch",
            "kind": 1,
            "attributes": [int("messages", 2)],
            "status": { "code": 0 },
        })
    );

    // Nested spans start after and end before their parents; the next ones come later.
    let [step, transition, request, health, consume, relay] = times[..] else {
        unreachable!()
    };
    assert!(
        request.0 < transition.0 && transition.0 < step.0,
        "{times:?}"
    );
    assert!(
        step.1 < transition.1 && transition.1 < request.1,
        "{times:?}"
    );
    assert!(request.1 <= health.0 && health.1 <= relay.0, "{times:?}");
    assert!(relay.0 < consume.0 && consume.1 <= relay.1, "{times:?}");

    assert_eq!(
        telemetry.stats(),
        TelemetryStats {
            exported: 6,
            dropped: 0,
            failed: 0
        }
    );
    telemetry.shutdown().await;
}

/// 429, 502, 503 and 504 are retried once; other failures are not; a partial success counts
/// what the endpoint rejected.
#[tokio::test]
async fn failed_posts_are_retried_once_as_otlp_says() {
    let one_span = |telemetry: &Telemetry| {
        with_layer(telemetry, || {
            drop(tracing::info_span!("relay_batch", messages = 1))
        });
    };
    // Retryable, then accepted.
    let receiver = Receiver::start(&[(503, "{}")]).await;
    let telemetry = Telemetry::start(receiver.config()).unwrap();
    one_span(&telemetry);
    telemetry.flush().await;
    let captured = receiver.captured();
    assert_eq!(captured.len(), 2);
    assert_eq!(captured[0].body, captured[1].body);
    assert_eq!(telemetry.stats().exported, 1);
    assert_eq!(telemetry.stats().failed, 0);
    telemetry.shutdown().await;

    // Retryable twice: given up after the one retry.
    let receiver = Receiver::start(&[(429, "{}"), (502, "{}"), (200, "{}")]).await;
    let telemetry = Telemetry::start(receiver.config()).unwrap();
    one_span(&telemetry);
    telemetry.flush().await;
    assert_eq!(receiver.captured().len(), 2);
    assert_eq!(telemetry.stats().exported, 0);
    assert_eq!(telemetry.stats().failed, 1);
    telemetry.shutdown().await;

    // Bad data is not retried.
    let receiver = Receiver::start(&[(400, "{}")]).await;
    let telemetry = Telemetry::start(receiver.config()).unwrap();
    one_span(&telemetry);
    telemetry.flush().await;
    assert_eq!(receiver.captured().len(), 1);
    assert_eq!(telemetry.stats().failed, 1);
    telemetry.shutdown().await;

    // Partial success: not retried, the rejected spans counted as failed.
    let receiver = Receiver::start(&[(
        200,
        r#"{"partialSuccess":{"rejectedSpans":"1","errorMessage":"too old"}}"#,
    )])
    .await;
    let telemetry = Telemetry::start(receiver.config()).unwrap();
    one_span(&telemetry);
    one_span(&telemetry);
    telemetry.flush().await;
    assert_eq!(receiver.captured().len(), 1);
    assert_eq!(
        telemetry.stats(),
        TelemetryStats {
            exported: 1,
            dropped: 0,
            failed: 1
        }
    );
    telemetry.shutdown().await;
}

#[tokio::test]
async fn batches_hold_at_most_the_batch_size() {
    let receiver = Receiver::start(&[]).await;
    let telemetry = Telemetry::start(TelemetryConfig {
        batch_size: 4,
        ..receiver.config()
    })
    .unwrap();
    with_layer(&telemetry, || {
        for i in 0..10 {
            drop(tracing::info_span!("relay_batch", messages = i));
        }
    });
    telemetry.shutdown().await;
    let captured = receiver.captured();
    let sizes: Vec<usize> = captured
        .iter()
        .map(|c| spans_of(std::slice::from_ref(c)).len())
        .collect();
    assert!(sizes.iter().all(|&n| (1..=4).contains(&n)), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 10);
    assert_eq!(telemetry.stats().exported, 10);
    // Spans closed after shutdown are dropped, not queued for ever.
    with_layer(&telemetry, || drop(tracing::info_span!("late")));
    assert_eq!(telemetry.stats().dropped, 1);
}

/// Nothing listens: span creation goes on, every span is accounted for.
#[tokio::test]
async fn a_refused_endpoint_never_blocks_span_creation() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let telemetry = Telemetry::start(TelemetryConfig {
        queue_capacity: 64,
        ..TelemetryConfig::new(format!("http://127.0.0.1:{port}/v1/traces"))
    })
    .unwrap();
    with_layer(&telemetry, || {
        for i in 0..10_000 {
            let span = tracing::info_span!("relay_batch", messages = i);
            drop(span.enter());
        }
    });
    telemetry.shutdown().await;
    let stats = telemetry.stats();
    assert_eq!(stats.exported, 0, "{stats:?}");
    assert_eq!(stats.dropped + stats.failed, 10_000, "{stats:?}");
}

/// The endpoint accepts connections but never answers: the exporter is stuck in its POST, the
/// queue fills, and the spans beyond it are dropped rather than waited for.
#[tokio::test]
async fn a_hanging_endpoint_drops_what_does_not_fit_in_the_queue() {
    // Never accepted: connections complete in the backlog and get no answer.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let telemetry = Telemetry::start(TelemetryConfig {
        queue_capacity: 64,
        batch_size: 512,
        timeout: Duration::from_secs(10),
        ..TelemetryConfig::new(format!(
            "http://{}/v1/traces",
            blackhole.local_addr().unwrap()
        ))
    })
    .unwrap();
    with_layer(&telemetry, || {
        for i in 0..10_000 {
            drop(tracing::info_span!("relay_batch", messages = i));
        }
    });
    // At most one batch in the stuck POST and a full queue were taken.
    let stats = telemetry.stats();
    assert!(stats.dropped >= 10_000 - 512 - 64, "{stats:?}");
    // Closing the listener resets the stuck connection: the POST fails, its retry is refused.
    drop(blackhole);
    telemetry.shutdown().await;
    let stats = telemetry.stats();
    assert_eq!(stats.exported, 0, "{stats:?}");
    assert_eq!(stats.dropped + stats.failed, 10_000, "{stats:?}");
}
