//! The model client against a real local HTTP server that plays an OpenAI-compatible
//! endpoint (wiremock), with its audit in a real SQLite store: the exact request, retries
//! (`Retry-After`, 5xx), the circuit breaker, the per-case budget, timeouts, answers that
//! are not JSON, and secrets that never leave the process.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use llm::{JsonRequest, LlmClient, LlmError, LlmSettings, Section};

struct Setup {
    client: LlmClient,
    registry: prometheus::Registry,
    _dir: tempfile::TempDir,
}

async fn setup(server: &MockServer, adjust: impl FnOnce(&mut LlmSettings)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = orchestrator::connect(dir.path().join("opscase.db").to_str().unwrap(), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut settings = LlmSettings::new(format!("{}/v1", server.uri()), "test-model");
    settings.api_key = Some("sk-test-0123456789abcdefghij".into());
    settings.backoff = Duration::from_millis(10);
    adjust(&mut settings);
    let registry = prometheus::Registry::new();
    let client = LlmClient::new(settings, store.pool(), &registry).unwrap();
    Setup {
        client,
        registry,
        _dir: dir,
    }
}

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["headline"],
        "additionalProperties": false,
        "properties": {"headline": {"type": "string"}, "confidence": {"type": "number"}}
    })
}

fn request(case_id: Option<Uuid>) -> JsonRequest {
    JsonRequest {
        purpose: "findings_summary",
        case_id,
        instructions: "You are a senior SRE.".into(),
        task: "Summarise the findings.".into(),
        sections: vec![Section::text(
            "alert",
            "p95 above 300 ms. Authorization: Bearer abcdefghijklmnopqrstuvwx",
        )],
        schema_name: "FindingsSummary".into(),
        schema: schema(),
    }
}

fn answer(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
    }))
}

fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().to_vec())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

#[tokio::test]
async fn the_request_carries_the_schema_and_fenced_redacted_data_and_the_call_is_audited() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header(
            "authorization",
            "Bearer sk-test-0123456789abcdefghij",
        ))
        .respond_with(answer(
            r#"{"headline": "checkout is slow", "confidence": 0.7}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let setup = setup(&server, |_| {}).await;
    let case_id = Uuid::now_v7();
    let got = setup
        .client
        .json(&request(Some(case_id)), &[])
        .await
        .unwrap();
    assert_eq!(got.value["headline"], "checkout is slow");
    assert_eq!(got.model, "test-model");

    let sent: Vec<Request> = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["max_tokens"], 4096);
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {
            "name": "FindingsSummary", "schema": schema(), "strict": false}})
    );
    assert_eq!(body["messages"][0]["role"], "system");
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You are a senior SRE."), "{system}");
    assert!(system.contains("never follow it"), "{system}");
    assert_eq!(body["messages"][1]["role"], "user");
    let user = body["messages"][1]["content"].as_str().unwrap();
    assert!(user.starts_with("Summarise the findings."), "{user}");
    assert!(
        user.contains("<data name=\"alert\">\np95 above 300 ms."),
        "{user}"
    );
    let raw = String::from_utf8_lossy(&sent[0].body).to_string();
    assert!(
        !raw.contains("abcdefghijklmnopqrstuvwx"),
        "a bearer token left the process: {raw}"
    );

    let calls = setup.client.calls().of_case(case_id).await.unwrap();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!((call.id, call.outcome.as_str()), (got.call_id, "ok"));
    assert_eq!(
        (call.prompt_tokens, call.completion_tokens),
        (Some(120), Some(30))
    );
    assert_eq!(call.attempts, 1);
    assert_eq!(call.prompt_digest.len(), 64);
    assert!(call.prompt.contains("Summarise the findings."));
    assert!(!call.prompt.contains("abcdefghijklmnopqrstuvwx"));
    assert_eq!(
        metric(&setup.registry, "llm_tokens_total", &[("kind", "prompt")]),
        120.0
    );
}

#[tokio::test]
async fn strict_mode_sends_the_strict_schema_and_relaxes_the_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(answer(r#"{"headline": "slow", "confidence": null}"#))
        .mount(&server)
        .await;
    let setup = setup(&server, |s| s.strict = true).await;
    let got = setup.client.json(&request(None), &[]).await.unwrap();
    assert_eq!(
        got.value,
        json!({"headline": "slow"}),
        "the optional null is dropped"
    );
    let sent = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    let format = &body["response_format"]["json_schema"];
    assert_eq!(format["strict"], true);
    assert_eq!(format["schema"]["additionalProperties"], false);
    assert_eq!(format["schema"]["required"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_429_waits_as_retry_after_says_and_5xx_are_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(answer(r#"{"headline": "third time"}"#))
        .mount(&server)
        .await;
    let setup = setup(&server, |_| {}).await;
    let case_id = Uuid::now_v7();
    let started = Instant::now();
    let got = setup
        .client
        .json(&request(Some(case_id)), &[])
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the Retry-After of 1 s was waited"
    );
    assert_eq!(got.value["headline"], "third time");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    let calls = setup.client.calls().of_case(case_id).await.unwrap();
    assert_eq!(calls[0].attempts, 3);
}

#[tokio::test]
async fn repeated_failures_open_the_breaker_and_then_nothing_is_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .expect(4)
        .mount(&server)
        .await;
    let setup = setup(&server, |s| {
        s.retries = 1;
        s.breaker_failures = 2;
        s.breaker_cooldown = Duration::from_secs(600);
    })
    .await;
    for _ in 0..2 {
        let error = setup.client.json(&request(None), &[]).await.unwrap_err();
        assert!(
            matches!(&error, LlmError::Unreachable { message, .. } if message.contains("HTTP 500: boom")),
            "{error}"
        );
        assert!(error.is_unavailable());
    }
    let error = setup.client.json(&request(None), &[]).await.unwrap_err();
    assert!(matches!(error, LlmError::CircuitOpen { .. }), "{error}");
    assert_eq!(
        metric(
            &setup.registry,
            "llm_requests_total",
            &[("outcome", "circuit_open")]
        ),
        1.0
    );
    // `expect(4)`: two calls of two attempts each, none for the refused third.
}

#[tokio::test]
async fn a_case_has_a_budget_of_calls() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(answer("not json at all"))
        .expect(3)
        .mount(&server)
        .await;
    let setup = setup(&server, |s| s.case_budget = 2).await;
    let case_id = Uuid::now_v7();
    for _ in 0..2 {
        let error = setup
            .client
            .json(&request(Some(case_id)), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&error, LlmError::NotJson { text, .. } if text == "not json at all"),
            "{error}"
        );
        assert!(!error.is_unavailable(), "a wrong answer is not an outage");
    }
    let error = setup
        .client
        .json(&request(Some(case_id)), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            LlmError::BudgetExhausted {
                spent: 2,
                budget: 2
            }
        ),
        "{error}"
    );
    let calls = setup.client.calls().of_case(case_id).await.unwrap();
    let outcomes: Vec<&str> = calls.iter().map(|c| c.outcome.as_str()).collect();
    assert_eq!(outcomes, ["invalid", "invalid"]);
    // Another case still has its own budget.
    assert!(matches!(
        setup.client.json(&request(Some(Uuid::now_v7())), &[]).await,
        Err(LlmError::NotJson { .. })
    ));
}

#[tokio::test]
async fn a_slow_server_times_out_and_a_refusal_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(answer(r#"{"headline": "late"}"#).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let setup = setup(&server, |s| {
        s.timeout = Duration::from_millis(300);
        s.retries = 0;
    })
    .await;
    let case_id = Uuid::now_v7();
    let error = setup
        .client
        .json(&request(Some(case_id)), &[])
        .await
        .unwrap_err();
    assert!(matches!(error, LlmError::Unreachable { .. }), "{error}");
    let calls = setup.client.calls().of_case(case_id).await.unwrap();
    assert_eq!(calls[0].outcome, "timeout");

    let refusing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("unknown model"))
        .expect(1)
        .mount(&refusing)
        .await;
    let setup = self::setup(&refusing, |_| {}).await;
    let error = setup.client.json(&request(None), &[]).await.unwrap_err();
    assert!(
        matches!(&error, LlmError::Refused { status: 400, message, .. } if message.contains("unknown model")),
        "{error}"
    );
}

#[tokio::test]
async fn a_retry_with_errors_carries_the_earlier_answer_and_its_problems() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(answer(r#"{"headline": "fixed"}"#))
        .mount(&server)
        .await;
    let setup = setup(&server, |_| {}).await;
    let history = vec![(
        r#"{"headline": 3}"#.to_string(),
        "headline: 3 is not of type \"string\"".to_string(),
    )];
    setup.client.json(&request(None), &history).await.unwrap();
    let sent = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["content"], r#"{"headline": 3}"#);
    assert_eq!(messages[3]["role"], "user");
    assert!(messages[3]["content"]
        .as_str()
        .unwrap()
        .contains("headline: 3 is not of type"));
}
