//! Access control: keys, roles, tenants, limits.

use std::collections::BTreeSet;

use orchestrator::Role;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{client_with, create_key, Backend, TestApp, TestDatabase, ADMIN_KEY};
use crate::on_both_backends;
use crate::restart::{serve, terminate};

const MATRIX: &str = include_str!("role_matrix.txt");
const COLUMNS: [Option<Role>; 8] = [
    None,
    Some(Role::Viewer),
    Some(Role::Operator),
    Some(Role::Approver),
    Some(Role::Admin),
    Some(Role::Metrics),
    Some(Role::Sensor),
    Some(Role::Librarian),
];

struct MatrixLine {
    method: String,
    path: String,
    expected: Vec<String>,
}

fn matrix() -> Vec<MatrixLine> {
    MATRIX
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                fields.len(),
                2 + COLUMNS.len(),
                "malformed matrix line: {line}"
            );
            MatrixLine {
                method: fields[0].to_string(),
                path: fields[1].to_string(),
                expected: fields[2..].iter().map(|s| s.to_string()).collect(),
            }
        })
        .collect()
}

on_both_backends!(every_route_answers_each_role_as_the_matrix_says);
async fn every_route_answers_each_role_as_the_matrix_says(app: TestApp) {
    let (_, document) = app.get_json("/openapi.json").await;
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "patch", "put", "delete"].contains(&m.as_str()))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let lines = matrix();
    let listed: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| (l.method.clone(), l.path.clone()))
        .collect();
    assert_eq!(
        documented, listed,
        "tests/e2e/role_matrix.txt must list exactly the documented operations"
    );

    let mut clients: Vec<(String, Client)> = vec![("none".into(), Client::new())];
    for role in COLUMNS.iter().flatten() {
        let key = create_key(&app.orchestrator, role.as_str(), &[*role], None).await;
        clients.push((role.as_str().into(), client_with(&key)));
    }
    let case = app.open_case("t-001").await;
    let spare_key = create_key(&app.orchestrator, "spare", &[Role::Viewer], None).await;
    let spare_id = app
        .orchestrator
        .authenticate(&spare_key)
        .await
        .unwrap()
        .unwrap()
        .key_id;

    let mut mismatches = Vec::new();
    for line in &lines {
        let id = if line.path.starts_with("/v1/keys") {
            spare_id.to_string()
        } else {
            case.to_string()
        };
        let url = app.url(&line.path.replace("{id}", &id));
        let body = match (line.method.as_str(), line.path.as_str()) {
            ("POST", "/v1/keys") => Some(json!({"name": "matrix", "roles": ["viewer"]})),
            ("POST", _) => Some(json!({"title": "matrix"})),
            ("PATCH", _) => Some(json!({"event": "start_analysis"})),
            _ => None,
        };
        for ((who, client), expected) in clients.iter().zip(&line.expected) {
            let mut request = client
                .request(Method::from_bytes(line.method.as_bytes()).unwrap(), &url)
                .header("Idempotency-Key", Uuid::new_v4().to_string());
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let actual = match status {
                StatusCode::UNAUTHORIZED => {
                    assert!(
                        response.headers().contains_key("www-authenticate"),
                        "401 without a challenge"
                    );
                    "401"
                }
                StatusCode::FORBIDDEN => "403",
                _ => "ok",
            };
            if actual != expected {
                mismatches.push(format!(
                    "{} {} as {who}: expected {expected}, got {status}",
                    line.method, line.path
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "role matrix violated:\n{}",
        mismatches.join("\n")
    );

    // What the OpenAPI document does not list is open: the docs and the document itself.
    for path in ["/docs/", "/openapi.json"] {
        let status = Client::new()
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{path} is open");
    }
}

on_both_backends!(gate_decisions_need_an_approver_and_other_events_an_operator);
async fn gate_decisions_need_an_approver_and_other_events_an_operator(app: TestApp) {
    let operator = client_with(&create_key(&app.orchestrator, "op", &[Role::Operator], None).await);
    let case = app.case_in("WAIT_GATE").await;
    let patch = |client: &Client, body: Value| {
        client
            .patch(app.url(&format!("/v1/cases/{case}/transition")))
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body)
            .send()
    };
    let by_operator = patch(&operator, json!({"event": "gate_approved", "decision": {}}))
        .await
        .unwrap();
    assert_eq!(by_operator.status(), StatusCode::FORBIDDEN);
    let problem: Value = by_operator.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("approver"),
        "{problem}"
    );
    let by_approver = patch(
        &app.approver,
        json!({"event": "cancel", "reason": "not mine"}),
    )
    .await
    .unwrap();
    assert_eq!(by_approver.status(), StatusCode::FORBIDDEN);
    let approved = patch(
        &app.approver,
        json!({"event": "gate_approved", "decision": {}}),
    )
    .await
    .unwrap();
    assert_eq!(approved.status(), StatusCode::OK);
}

on_both_backends!(a_tenant_key_sees_and_changes_only_its_tenant);
async fn a_tenant_key_sees_and_changes_only_its_tenant(app: TestApp) {
    let theirs = app.open_case("t-b").await;
    let tenant_a =
        client_with(&create_key(&app.orchestrator, "team-a", &[Role::Operator], Some("t-a")).await);

    let created: Value = tenant_a
        .post(app.url("/v1/cases"))
        .json(&json!({"title": "ours"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        created["tenant"], "t-a",
        "a scoped key opens cases in its tenant by default"
    );
    let ours = created["id"].as_str().unwrap().to_string();
    let elsewhere = tenant_a
        .post(app.url("/v1/cases"))
        .json(&json!({"title": "x", "tenant": "t-b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::FORBIDDEN);

    let listed: Value = tenant_a
        .get(app.url("/v1/cases"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![ours.as_str()]);
    let asked_for_b: Value = tenant_a
        .get(app.url("/v1/cases?tenant=t-b"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asked_for_b["items"], json!([]));

    for path in ["", "/timeline", "/plans", "/decisions"] {
        let response = tenant_a
            .get(app.url(&format!("/v1/cases/{theirs}{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "GET {path}: another tenant's case does not exist"
        );
    }
    let alias = tenant_a
        .get(app.url(&format!("/case/{theirs}")))
        .send()
        .await
        .unwrap();
    assert_eq!(alias.status(), StatusCode::NOT_FOUND);
    let transition = tenant_a
        .patch(app.url(&format!("/v1/cases/{theirs}/transition")))
        .header("Idempotency-Key", "cross-tenant")
        .json(&json!({"event": "start_analysis"}))
        .send()
        .await
        .unwrap();
    assert_eq!(transition.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.case(theirs).await["version"],
        1,
        "the other tenant's case is untouched"
    );
    assert_eq!(app.timeline(theirs).await.len(), 1);
}

on_both_backends!(revoked_and_expired_keys_are_refused_at_once);
async fn revoked_and_expired_keys_are_refused_at_once(app: TestApp) {
    let created: Value = app
        .client
        .post(app.url("/v1/keys"))
        .json(&json!({"name": "short-lived", "roles": ["viewer"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["key"].as_str().unwrap().to_string();
    let id = created["api_key"]["id"].as_str().unwrap().to_string();
    let viewer = client_with(&secret);
    assert_eq!(
        viewer
            .get(app.url("/v1/cases"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let listed = app
        .client
        .get(app.url("/v1/keys"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains(&id) && !listed.contains(&secret),
        "the list never shows secrets"
    );
    assert!(!listed.contains("secret_hash"));

    let revoked = app
        .client
        .delete(app.url(&format!("/v1/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    assert!(revoked.json::<Value>().await.unwrap()["revoked_at"].is_string());
    let refused = viewer.get(app.url("/v1/cases")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let expiring: Value = app
        .client
        .post(app.url("/v1/keys"))
        .json(&json!({"name": "expiring", "roles": ["viewer"], "expires_at": (chrono_now_plus_ms(1500))}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expiring = client_with(expiring["key"].as_str().unwrap());
    assert_eq!(
        expiring
            .get(app.url("/v1/cases"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert_eq!(
        expiring
            .get(app.url("/v1/cases"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );

    let past = app
        .client
        .post(app.url("/v1/keys"))
        .json(&json!({"name": "x", "roles": ["viewer"], "expires_at": "2001-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    // Well-formed (the document allows any date-time), refused for its content.
    assert_eq!(past.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = app
        .client
        .delete(app.url(&format!("/v1/keys/{}", Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

fn chrono_now_plus_ms(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms)).to_rfc3339()
}

on_both_backends!(a_missing_and_a_wrong_key_get_the_same_answer);
async fn a_missing_and_a_wrong_key_get_the_same_answer(app: TestApp) {
    let none = Client::new()
        .get(app.url("/v1/cases"))
        .send()
        .await
        .unwrap();
    let wrong = client_with("osk_0000000000000000000000000000000000000000000000000000000000000000")
        .get(app.url("/v1/cases"))
        .send()
        .await
        .unwrap();
    let strip = |mut problem: Value| {
        problem.as_object_mut().unwrap().remove("request_id");
        problem
    };
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["content-type"], "application/problem+json");
    assert_eq!(
        strip(none.json().await.unwrap()),
        strip(wrong.json().await.unwrap())
    );

    let via_header = Client::new()
        .get(app.url("/v1/cases"))
        .header("X-API-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        via_header.status(),
        StatusCode::OK,
        "X-API-Key works as well as Bearer"
    );
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_recovers() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let mut config = database.config();
    config.auth.rate_limit_per_second = 2.0;
    config.auth.rate_limit_burst = 3.0;
    let app = TestApp::start(config).await;
    let limited =
        client_with(&create_key(&app.orchestrator, "chatty", &[Role::Viewer], None).await);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let response = limited.get(app.url("/v1/cases")).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    assert_eq!(retry_after.as_deref(), Some("1"));
    let other = client_with(&create_key(&app.orchestrator, "quiet", &[Role::Viewer], None).await);
    assert_eq!(
        other
            .get(app.url("/v1/cases"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "limits are per key"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        limited
            .get(app.url("/v1/cases"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "it recovers"
    );
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_configured() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let preflight = |app: &TestApp| {
        Client::new()
            .request(Method::OPTIONS, app.url("/v1/cases"))
            .header("Origin", "https://ops.example.com")
            .header("Access-Control-Request-Method", "GET")
            .send()
    };
    let closed = TestApp::start(database.config()).await;
    let answer = preflight(&closed).await.unwrap();
    assert!(answer
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    drop(closed);

    let mut config = database.config();
    config.server.cors_allowed_origins = vec!["https://ops.example.com".into()];
    let open = TestApp::start(config).await;
    let answer = preflight(&open).await.unwrap();
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "https://ops.example.com"
    );
}

#[tokio::test]
async fn the_bootstrap_key_is_printed_once_and_never_logged() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let first = serve(&database, None);
    let printed: Vec<String> = first
        .stdout
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("osk_"))
        .cloned()
        .collect();
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert!(printed[0].starts_with("opscase: first start: created an admin API key"));
    let key = printed[0].rsplit(' ').next().unwrap().to_string();

    let admin = client_with(&key);
    assert_eq!(
        admin
            .get(format!("{}/v1/cases", first.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // A refused and a bad request, to give the logs every chance to show a key.
    Client::new()
        .get(format!("{}/v1/cases", first.base))
        .header("Authorization", format!("Bearer {key}x"))
        .send()
        .await
        .unwrap();
    admin
        .post(format!("{}/v1/cases", first.base))
        .body("{")
        .send()
        .await
        .unwrap();
    let stdout = first.stdout.clone();
    terminate(first);
    let mentions = stdout
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&key[4..20]))
        .count();
    assert_eq!(mentions, 1, "the key appears only in the bootstrap line");

    let second = serve(&database, None);
    let again = second
        .stdout
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("osk_") || l.contains("admin API key"));
    assert!(!again, "a second start prints no key");
    assert_eq!(
        client_with(&key)
            .get(format!("{}/v1/cases", second.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "the bootstrap key still works after a restart"
    );
    terminate(second);
}

#[tokio::test]
async fn metrics_are_open_only_when_configured_so() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let mut config = database.config();
    config.metrics.auth = false;
    let app = TestApp::start(config).await;
    let scrape = Client::new().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(scrape.status(), StatusCode::OK);
    assert!(scrape
        .text()
        .await
        .unwrap()
        .contains("# TYPE case_transition_total counter"));
    let cases = Client::new()
        .get(app.url("/v1/cases"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        cases.status(),
        StatusCode::UNAUTHORIZED,
        "only /metrics is opened"
    );
}
