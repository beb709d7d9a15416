//! The OpenAPI document and the server agree on what a request may be and what it is answered.
//!
//! Every documented operation is sent the requests that exercise its validation (a malformed
//! or unknown id, a missing or malformed body, a body over the limit, a query parameter at and
//! past each documented bound, an `Idempotency-Key` at and past its documented length, a key
//! reused for another request), and every answer must be one of the operation's documented
//! statuses, errors as problem+json. A documented bound must be the server's: the value on the
//! bound is not refused as malformed (400), the one past it is. `.ci/contract` runs schemathesis
//! for the same purpose with generated requests; this is its deterministic core, in `cargo test`.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{client_with, TestApp, ADMIN_KEY};
use crate::on_both_backends;

struct Operation {
    method: Method,
    path: String,
    spec: Value,
}

impl Operation {
    fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn documented(&self) -> BTreeSet<u16> {
        self.spec["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|status| status.parse().unwrap())
            .collect()
    }

    fn parameters(&self, location: &str) -> Vec<&Value> {
        self.spec["parameters"]
            .as_array()
            .map(|all| all.iter().filter(|p| p["in"] == location).collect())
            .unwrap_or_default()
    }

    fn has_body(&self) -> bool {
        self.spec.get("requestBody").is_some()
    }
}

fn operations(document: &Value) -> Vec<Operation> {
    let mut all = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, spec) in item.as_object().unwrap() {
            if let Ok(method) = Method::from_bytes(method.to_uppercase().as_bytes()) {
                all.push(Operation {
                    method,
                    path: path.clone(),
                    spec: spec.clone(),
                });
            }
        }
    }
    all
}

/// A request body the operation's schema allows, about `case`.
fn valid_body(operation: &Operation, case: Uuid) -> Value {
    match (operation.method.as_str(), operation.path.as_str()) {
        ("PATCH", _) => json!({"event": "start_analysis"}),
        ("POST", "/v1/cases" | "/case/create") => json!({"title": "contract probe"}),
        ("POST", "/v1/keys") => json!({"name": "contract probe", "roles": ["viewer"]}),
        ("POST", "/v1/metrics/1m") => json!({"points": [{
            "tenant": "t-001", "resource": "checkout", "metric": "p95_ms",
            "bucket": "2026-11-21T10:00:00Z", "p95": 180.0}]}),
        ("POST", "/v1/metrics/calls5m") => json!({"points": [{
            "tenant": "t-001", "bucket": "2026-12-02T10:05:00Z", "src": "checkout",
            "dst": "payments", "p95_ms": 180.0}]}),
        ("POST", "/v1/signals/changes") => json!({
            "service": "checkout", "payload": {"summary": "contract probe"}}),
        ("POST", "/v1/signals/alertmanager" | "/v1/signals/grafana") => json!({
            "receiver": "opscase", "status": "firing", "groupKey": "{}:{}",
            "alerts": [{"status": "firing", "labels": {"alertname": "ContractProbe"},
                        "startsAt": "2026-12-02T10:00:00Z"}]}),
        ("POST", "/v1/signals/events") => json!({
            "event_action": "trigger",
            "payload": {"summary": "contract probe", "source": "probe", "severity": "info"}}),
        ("POST", "/v1/cases/{id}/evidence") => json!({
            "kind": "url", "title": "contract probe", "url": "https://example.com/probe"}),
        ("POST", "/v1/kb/docs") => json!({
            "title": "ContractProbe", "content": "# ContractProbe\n\n## Mitigation\n\nNone.",
            "url": "https://example.com/runbooks/contract-probe"}),
        ("POST", _) => json!({"case_id": case}),
        (method, path) => panic!("no valid body known for {method} {path}"),
    }
}

/// One probe and what it is for.
struct Probe {
    what: String,
    path: String,
    query: String,
    idempotency_key: Option<String>,
    body: Option<Vec<u8>>,
    /// `Some(true)`: must be 400. `Some(false)`: must not be 400. `None`: any documented status.
    malformed: Option<bool>,
}

fn probes(operation: &Operation, case: Uuid, known_id: &str) -> Vec<Probe> {
    let mut probes = Vec::new();
    let with_id = |id: &str| operation.path.replace("{id}", id);
    let valid_path = with_id(known_id);
    let body = operation
        .has_body()
        .then(|| serde_json::to_vec(&valid_body(operation, case)).unwrap());
    let key_required = operation
        .parameters("header")
        .iter()
        .any(|p| p["name"] == "Idempotency-Key" && p["required"] == true);
    let fresh_key = || key_required.then(|| Uuid::new_v4().to_string());
    let probe = |what: &str, path: &str, query: &str, body: Option<Vec<u8>>, malformed| Probe {
        what: what.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        idempotency_key: fresh_key(),
        body,
        malformed,
    };

    probes.push(probe(
        "as documented",
        &valid_path,
        "",
        body.clone(),
        Some(false),
    ));
    if operation.path.contains("{id}") {
        probes.push(probe(
            "a malformed id",
            &with_id("not-a-uuid"),
            "",
            body.clone(),
            Some(true),
        ));
        probes.push(probe(
            "an id that is not UTF-8",
            &with_id("%FF"),
            "",
            body.clone(),
            Some(true),
        ));
        probes.push(probe(
            "an unknown id",
            &with_id(&Uuid::now_v7().to_string()),
            "",
            body.clone(),
            Some(false),
        ));
    }
    if operation.has_body() {
        probes.push(probe("no body", &valid_path, "", Some(vec![]), Some(true)));
        probes.push(probe(
            "a body that is not an object",
            &valid_path,
            "",
            Some(b"[1, 2]".to_vec()),
            Some(true),
        ));
        probes.push(probe(
            "a body over the limit",
            &valid_path,
            "",
            Some(vec![b' '; 2 * 1024 * 1024]),
            None,
        ));
        if body
            .as_ref()
            .is_some_and(|b| b.starts_with(b"{\"case_id\""))
        {
            let unknown = json!({"case_id": Uuid::now_v7()});
            probes.push(probe(
                "an unknown case_id",
                &valid_path,
                "",
                Some(serde_json::to_vec(&unknown).unwrap()),
                Some(false),
            ));
        }
    }
    for parameter in operation.parameters("query") {
        let name = parameter["name"].as_str().unwrap();
        let schema = &parameter["schema"];
        for (bound, step) in [("minimum", -1), ("maximum", 1)] {
            let Some(at) = schema[bound].as_i64() else {
                continue;
            };
            probes.push(probe(
                &format!("{name} at its {bound}"),
                &valid_path,
                &format!("{name}={at}"),
                body.clone(),
                Some(false),
            ));
            probes.push(probe(
                &format!("{name} past its {bound}"),
                &valid_path,
                &format!("{name}={}", at + step),
                body.clone(),
                Some(true),
            ));
        }
    }
    for parameter in operation.parameters("header") {
        if parameter["name"] != "Idempotency-Key" {
            continue;
        }
        let longest = parameter["schema"]["maxLength"]
            .as_u64()
            .expect("Idempotency-Key documents its maxLength") as usize;
        for (what, key, malformed) in [
            ("the longest Idempotency-Key", "k".repeat(longest), false),
            ("a longer Idempotency-Key", "k".repeat(longest + 1), true),
        ] {
            let mut probe = probe(what, &valid_path, "", body.clone(), Some(malformed));
            // Unique per run: a key is remembered with the request it came with.
            probe.idempotency_key = Some(format!("{}{}", Uuid::new_v4().simple(), &key[32..]));
            probes.push(probe);
        }
        // The same key again with another body: reused for a different request.
        if let Some(body) = &body {
            let key = Uuid::new_v4().to_string();
            let mut first = probe(
                "a key's first use",
                &valid_path,
                "",
                Some(body.clone()),
                None,
            );
            first.idempotency_key = Some(key.clone());
            probes.push(first);
            let mut other: Value = serde_json::from_slice(body).unwrap();
            other["actor"] = json!("someone else");
            let mut reused = probe(
                "a key reused for another request",
                &valid_path,
                "",
                Some(serde_json::to_vec(&other).unwrap()),
                Some(false),
            );
            reused.idempotency_key = Some(key);
            probes.push(reused);
        }
    }
    probes
}

on_both_backends!(every_answer_to_a_probe_is_documented_and_bounds_are_the_servers);
async fn every_answer_to_a_probe_is_documented_and_bounds_are_the_servers(app: TestApp) {
    let (_, document) = app.get_json("/openapi.json").await;
    let spare_key = crate::helpers::create_key(
        &app.orchestrator,
        "spare",
        &[orchestrator::Role::Viewer],
        None,
    )
    .await;
    let spare_key_id = app
        .orchestrator
        .authenticate(&spare_key)
        .await
        .unwrap()
        .unwrap()
        .key_id;

    let mut mismatches = Vec::new();
    let mut probed = 0;
    for operation in operations(&document) {
        // A fresh case for each operation: a probe that moves a case moves only its own.
        let case = app.open_case("t-001").await;
        let known_id = if operation.path.starts_with("/v1/keys") {
            spare_key_id.to_string()
        } else {
            case.to_string()
        };
        let documented = operation.documented();
        for probe in probes(&operation, case, &known_id) {
            let url = if probe.query.is_empty() {
                app.url(&probe.path)
            } else {
                app.url(&format!("{}?{}", probe.path, probe.query))
            };
            // The server closes the connection of a body over the limit; such a probe gets a
            // client (and connection) of its own, so the next request does not meet it closed.
            let oversized = probe.body.as_ref().is_some_and(|b| b.len() > 1024 * 1024);
            let client = if oversized {
                client_with(ADMIN_KEY)
            } else {
                app.client.clone()
            };
            let mut request = client.request(operation.method.clone(), url);
            if let Some(key) = &probe.idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = probe.body.clone() {
                request = request
                    .header("content-type", "application/json")
                    .body(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            // An event stream stays open: its status and type are the answer, not its body.
            let text = if content_type == "text/event-stream" {
                String::new()
            } else {
                response.text().await.unwrap_or_default()
            };
            let what = format!("{} with {}", operation.label(), probe.what);
            probed += 1;
            if !documented.contains(&status.as_u16()) {
                mismatches.push(format!(
                    "{what}: {status} is not documented ({documented:?}): {text}"
                ));
            }
            if status.is_client_error() && content_type != "application/problem+json" {
                mismatches.push(format!("{what}: {status} as {content_type:?}"));
            }
            match probe.malformed {
                Some(true) if status != StatusCode::BAD_REQUEST => {
                    mismatches.push(format!("{what}: expected 400, got {status}: {text}"))
                }
                Some(false) if status == StatusCode::BAD_REQUEST => mismatches.push(format!(
                    "{what}: the document allows it, the server refused it: {text}"
                )),
                _ => {}
            }
        }
    }
    assert!(probed > 100, "only {probed} probes were sent");
    assert!(
        mismatches.is_empty(),
        "the server and its OpenAPI document disagree:\n{}",
        mismatches.join("\n")
    );
}
