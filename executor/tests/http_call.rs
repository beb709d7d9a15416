//! `http.call` against a local wiremock server standing in for a gateway's admin API.

use std::collections::BTreeMap;
use std::time::Duration;

use executor::adapters::http::{HttpCall, HttpConfig, HttpTarget};
use executor::{Adapter, StepContext, StepError, StepOutput};
use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};
use workflow::messages::CaseBrief;

fn context(timeout: Duration) -> StepContext {
    StepContext {
        case: CaseBrief {
            id: "case 42/a".into(),
            tenant: "acme".into(),
            title: "Checkout p95 high".into(),
            severity: "high".into(),
            labels: BTreeMap::from([("service".to_string(), "checkout".to_string())]),
            evidence: vec![],
            version: 3,
            findings: vec![],
        },
        step_id: "s1".into(),
        attempt: 1,
        timeout,
    }
}

fn adapter(server: &MockServer) -> HttpCall {
    HttpCall::new(
        HttpConfig::single(
            HttpTarget::new(format!("{}/admin", server.uri()))
                .with_header("Authorization", "Bearer s3cret"),
        )
        .with_target("flags", HttpTarget::new(format!("{}/flags/", server.uri()))),
    )
    .expect("valid config")
}

async fn run(server: &MockServer, params: Value) -> Result<StepOutput, StepError> {
    adapter(server)
        .run(&params, &context(Duration::from_secs(10)))
        .await
}

#[tokio::test]
async fn sends_the_templated_request_exactly() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/admin/routes/checkout/cases/case%2042%2Fa"))
        .and(query_param("tenant", "acme"))
        .and(query_param("reason", "case case 42/a"))
        .and(header("authorization", "Bearer s3cret"))
        .and(header("x-case", "case 42/a"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "upstream": "checkout-canary",
            "weight": 10,
            "note": ["Checkout p95 high (acme)"],
            "raw": true
        })))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"ok":true}"#))
        .expect(1)
        .mount(&server)
        .await;

    let params = json!({
        "method": "PATCH",
        "path": "/routes/{{labels.service}}/cases/{{case.id}}",
        "query": { "tenant": "{{case.tenant}}", "reason": "case {{case.id}}" },
        "headers": { "X-Case": "{{ case.id }}" },
        "body": {
            "upstream": "{{labels.service}}-canary",
            "weight": 10,
            "note": ["{{case.title}} ({{case.tenant}})"],
            "raw": true
        },
        "expect_status": 200
    });
    let out = run(&server, params.clone()).await.expect("success");
    assert_eq!(
        out.detail,
        "PATCH /admin/routes/checkout/cases/case%2042%2Fa?reason=case+case+42%2Fa&tenant=acme -> 200"
    );
    assert_eq!(out.output.as_deref(), Some(r#"{"ok":true}"#));

    // The raw request as the server saw it.
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.method.as_str(), "PATCH");
    assert_eq!(
        request.url.path(),
        "/admin/routes/checkout/cases/case%2042%2Fa"
    );
    assert_eq!(
        request.url.query(),
        Some("reason=case+case+42%2Fa&tenant=acme")
    );
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["upstream"], "checkout-canary");

    // A dry run says the same without sending anything.
    let described = adapter(&server)
        .describe(&params, &context(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        described,
        format!(
            "would PATCH {}/admin/routes/checkout/cases/case%2042%2Fa?reason=case+case+42%2Fa&tenant=acme (expect 200)",
            server.uri()
        )
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn named_target_and_any_2xx() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/flags/toggle"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    let out = run(
        &server,
        json!({"target": "flags", "method": "POST", "path": "/toggle"}),
    )
    .await
    .unwrap();
    assert_eq!(out.detail, "POST /flags/toggle -> 201");
    assert_eq!(out.output, None);
    // The default target's Authorization header is not sent to another target.
    let received = server.received_requests().await.unwrap();
    assert!(received[0].headers.get("authorization").is_none());
    assert!(received[0].headers.get("content-type").is_none());
    assert!(received[0].body.is_empty());
}

#[tokio::test]
async fn expect_status_decides_success() {
    let server = MockServer::start().await;
    Mock::given(path("/admin/gone"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no such route"))
        .mount(&server)
        .await;
    Mock::given(path("/admin/ok"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;

    // A listed 404 is a success (e.g. "delete the route if it exists").
    let out = run(
        &server,
        json!({"method": "DELETE", "path": "/gone", "expect_status": [200, 404]}),
    )
    .await
    .unwrap();
    assert_eq!(out.detail, "DELETE /admin/gone -> 404");

    // A 200 where only 204 counts is a failure, and a permanent one.
    let err = run(
        &server,
        json!({"method": "GET", "path": "/ok", "expect_status": 204}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("200"), "{}", err.message);
    assert!(err.message.contains("expected 204"), "{}", err.message);
}

#[tokio::test]
async fn server_errors_are_retryable_client_errors_permanent() {
    let server = MockServer::start().await;
    Mock::given(path("/admin/busy"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream overloaded"))
        .mount(&server)
        .await;
    Mock::given(path("/admin/missing"))
        .respond_with(ResponseTemplate::new(404).set_body_string("route not found"))
        .mount(&server)
        .await;

    let err = run(
        &server,
        json!({"method": "PUT", "path": "/busy", "body": {}}),
    )
    .await
    .unwrap_err();
    assert!(err.retryable);
    assert!(err.message.contains("503"), "{}", err.message);
    assert_eq!(err.output.as_deref(), Some("upstream overloaded"));

    let err = run(&server, json!({"method": "GET", "path": "/missing"}))
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("404"), "{}", err.message);
    assert_eq!(err.output.as_deref(), Some("route not found"));
}

#[tokio::test]
async fn bodies_are_capped_and_redirects_not_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/admin/big"))
        .respond_with(ResponseTemplate::new(500).set_body_string("x".repeat(100_000)))
        .mount(&server)
        .await;
    Mock::given(path("/admin/moved"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "http://127.0.0.1:9/elsewhere"),
        )
        .mount(&server)
        .await;

    let err = run(&server, json!({"method": "GET", "path": "/big"}))
        .await
        .unwrap_err();
    let output = err.output.unwrap();
    assert!(output.starts_with(&"x".repeat(4096)));
    assert!(output.len() < 4096 + 100, "{}", output.len());
    assert!(output.contains("truncated"));

    Mock::given(path("/admin/huge"))
        .respond_with(ResponseTemplate::new(200).set_body_string("y".repeat(100_000)))
        .mount(&server)
        .await;
    let out = run(&server, json!({"method": "GET", "path": "/huge"}))
        .await
        .unwrap();
    let output = out.output.unwrap();
    assert!(output.starts_with(&"y".repeat(64 * 1024)));
    assert!(output.len() < 64 * 1024 + 100, "{}", output.len());

    let err = run(&server, json!({"method": "GET", "path": "/moved"}))
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("302"), "{}", err.message);
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn paths_that_would_leave_the_base_are_refused() {
    let server = MockServer::start().await;
    let adapter = adapter(&server);
    let mut ctx = context(Duration::from_secs(10));
    ctx.case.labels.insert("up".into(), "..".into());
    for bad in [
        "http://evil.example/x",
        "//evil.example/x",
        "/routes/../../secrets",
        "/routes/%2e%2e/secrets",
        "/{{labels.up}}/secrets",
        "/routes\\..\\x",
    ] {
        let params = json!({"method": "GET", "path": bad});
        let err = adapter.run(&params, &ctx).await.unwrap_err();
        assert!(!err.retryable, "{bad}");
        assert!(err.message.contains("path"), "{bad}: {}", err.message);
        assert!(adapter.describe(&params, &ctx).is_err(), "{bad}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_placeholders_and_targets_are_refused() {
    let server = MockServer::start().await;
    let err = run(
        &server,
        json!({"method": "POST", "path": "/x", "body": {"owner": "{{case.owner}}"}}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("{{case.owner}}"), "{}", err.message);

    let err = run(
        &server,
        json!({"method": "GET", "path": "/x", "headers": {"X-Team": "{{labels.team}}"}}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("{{labels.team}}"), "{}", err.message);

    let err = run(
        &server,
        json!({"target": "nope", "method": "GET", "path": "/x"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("\"nope\""), "{}", err.message);
    assert!(err.message.contains("default, flags"), "{}", err.message);

    // A step cannot replace the target's credentials.
    let err = run(
        &server,
        json!({"method": "GET", "path": "/x", "headers": {"authorization": "Bearer other"}}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);

    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let server = MockServer::start().await;
    Mock::given(path("/admin/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let err = adapter(&server)
        .run(
            &json!({"method": "GET", "path": "/slow"}),
            &context(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert!(err.retryable);
    assert!(err.message.contains("timeout"), "{}", err.message);
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let adapter = HttpCall::new(HttpConfig::single(HttpTarget::new(format!(
        "http://127.0.0.1:{port}"
    ))))
    .unwrap();
    let err = adapter
        .run(
            &json!({"method": "GET", "path": "/x"}),
            &context(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(err.retryable, "{}", err.message);
}

#[test]
fn bad_configs_are_refused() {
    for base in ["ftp://host/x", "not a url", "http://user:pw@host/"] {
        assert!(
            HttpCall::new(HttpConfig::single(HttpTarget::new(base))).is_err(),
            "{base}"
        );
    }
    assert!(HttpCall::new(HttpConfig::single(
        HttpTarget::new("http://gw:9000").with_header("Bad Header", "x")
    ))
    .is_err());
    let call = HttpCall::new(HttpConfig::single(HttpTarget::new("http://gw:9000"))).unwrap();
    assert_eq!(call.action(), "http.call");
    assert_eq!(
        call.describe(
            &json!({"method": "PATCH", "path": "/routes/checkout"}),
            &context(Duration::from_secs(10))
        )
        .unwrap(),
        "would PATCH http://gw:9000/routes/checkout (expect 2xx)"
    );
}

#[tokio::test]
async fn the_steps_trace_goes_with_the_request() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    // The step's span, in a caller's trace that has a tracestate.
    let caller = bus::TraceContext {
        tracestate: "vendor=abc".into(),
        ..bus::TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .unwrap()
    };
    let span = tracing::info_span!("step");
    span.set_parent(caller.to_otel()).unwrap();
    let step = bus::TraceContext::of_span(&span).unwrap();
    assert_eq!(step.trace_id, caller.trace_id);
    run(&server, json!({"method": "GET", "path": "/health"}))
        .instrument(span)
        .await
        .unwrap();
    let received = server.received_requests().await.unwrap();
    let header = |name: &str| {
        received[0]
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(header("traceparent"), step.traceparent());
    assert_eq!(header("tracestate"), "vendor=abc");
}
