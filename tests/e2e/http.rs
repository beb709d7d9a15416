//! What a client sees at the edges: bad input, listing, paging, unknown things, docs.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::TestApp;
use crate::on_both_backends;

on_both_backends!(the_seed_aliases_accept_curl_default_content_type);
async fn the_seed_aliases_accept_curl_default_content_type(app: TestApp) {
    // curl -d sends application/x-www-form-urlencoded; the seed demo relies on it.
    let created = app
        .client
        .post(app.url("/case/create"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"title":"p95 spike","tenant":"t-001"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let body: Value = created.json().await.unwrap();
    let id = body["data"].as_str().unwrap().to_string();
    assert_eq!(body["case"]["status"], "NEW");

    let moved = app
        .client
        .patch(app.url(&format!("/case/{id}/transition")))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("Idempotency-Key", "a1")
        .body(r#"{"event":"start_analysis","actor":"analyst@svc"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);
    let (status, case) = app.get_json(&format!("/case/{id}")).await;
    assert_eq!(
        (status, case["status"].as_str()),
        (StatusCode::OK, Some("ANALYZING"))
    );
    let (_, timeline) = app.get_json(&format!("/case/{id}/timeline")).await;
    assert_eq!(timeline["items"][1]["actor"], "analyst@svc");
}

on_both_backends!(bad_input_is_a_problem_naming_the_field);
async fn bad_input_is_a_problem_naming_the_field(app: TestApp) {
    let case = app.open_case("t-001").await;
    let patch = |body: &'static str| {
        app.client
            .patch(app.url(&format!("/v1/cases/{case}/transition")))
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .body(body)
            .send()
    };
    // The seed demo's step 2 as printed, with its stray quote.
    let broken = patch(r#"{"event":"start_analysis","actor":"analyst@svc}""#)
        .await
        .unwrap();
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);
    assert_eq!(broken.headers()["content-type"], "application/problem+json");
    let problem: Value = broken.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("line 1, column 48"),
        "{problem}"
    );

    for (body, field) in [
        (r#"{"event":"start_anaylsis"}"#, "event"),
        (r#"{"actor":"x"}"#, "event"),
        (r#"{"event":"start_analysis","colour":"red"}"#, "colour"),
        (
            r#"{"event":"gate_approved","decision":{"approvr":"x"}}"#,
            "decision.approvr",
        ),
        ("[1, 2]", "body"),
        (
            r#"{"event":"start_analysis","expected_version":"two"}"#,
            "expected_version",
        ),
        (
            r#"{"event":"gate_approved","decision":{"plan_id":"nope"}}"#,
            "decision.plan_id",
        ),
        ("", "body"),
    ] {
        let response = patch(body).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{body}: {problem}");
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    let unknown_event: Value = patch(r#"{"event":"start_anaylsis"}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        unknown_event["detail"]
            .as_str()
            .unwrap()
            .contains("start_analysis"),
        "{unknown_event}"
    );

    for (body, field) in [
        (json!({"title": ""}), "title"),
        (json!({"title": "x", "tenant": "has space"}), "tenant"),
        (json!({"title": "x", "severity": "sev1"}), "severity"),
        (json!({"title": "x", "automation": "yolo"}), "automation"),
        (
            json!({"title": "x", "labels": {"bad key": "v"}}),
            "labels.bad key",
        ),
    ] {
        let response = app
            .client
            .post(app.url("/v1/cases"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["field"],
            field,
            "{body}"
        );
    }
    assert_eq!(
        app.case(case).await["version"],
        1,
        "nothing bad reached the case"
    );
}

on_both_backends!(unknown_cases_routes_and_methods_are_problems);
async fn unknown_cases_routes_and_methods_are_problems(app: TestApp) {
    let missing = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/cases/{missing}"),
        format!("/v1/cases/{missing}/timeline"),
        format!("/v1/cases/{missing}/plans"),
        format!("/case/{missing}"),
    ] {
        let (status, problem) = app.get_json(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            problem["type"], "urn:opscase:problem:case-not-found",
            "{path}"
        );
    }
    let transition = app
        .transition(missing, json!({"event": "start_analysis"}))
        .await;
    assert_eq!(transition.status(), StatusCode::NOT_FOUND);

    let (status, problem) = app.get_json("/v1/cases/not-a-uuid").await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id"))
    );
    let (status, problem) = app.get_json("/v2/nothing").await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("urn:opscase:problem:not-found"))
    );
    let delete = app
        .client
        .delete(app.url("/v1/cases"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(delete.headers()["content-type"], "application/problem+json");
}

on_both_backends!(an_oversized_body_is_413);
async fn an_oversized_body_is_413(app: TestApp) {
    let title = "x".repeat(2 * 1024 * 1024);
    let response = app
        .client
        .post(app.url("/v1/cases"))
        .json(&json!({"title": title}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.json::<Value>().await.unwrap()["type"],
        "urn:opscase:problem:body-too-large"
    );
}

// A small body budget: at most two bodies near the limit are read and parsed at once; the rest
// wait their turn instead of being refused.
on_both_backends!(bodies_over_the_budget_wait_their_turn, |config| {
    config.server.body_buffer_bytes = 2 * 1024 * 1024;
});
async fn bodies_over_the_budget_wait_their_turn(app: TestApp) {
    let body = format!("{{\"title\": \"{}\"", "x".repeat(900 * 1024));
    let sends = (0..8).map(|_| {
        app.client
            .post(app.url("/v1/cases"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    });
    for response in futures::future::join_all(sends).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("not valid JSON"),
            "{problem}"
        );
    }
    // Small requests never wait for the budget.
    let response = app
        .client
        .post(app.url("/v1/cases"))
        .json(&json!({"title": "small"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

on_both_backends!(a_request_head_over_the_connection_buffer_is_431);
async fn a_request_head_over_the_connection_buffer_is_431(app: TestApp) {
    let answer = app
        .client
        .get(app.url("/v1/cases"))
        // Well over the cap: hyper checks it when a head is still incomplete, and one read may
        // take in more than the cap at once.
        .header(
            "x-padding",
            "x".repeat(4 * opscase::serve::CONNECTION_BUFFER_BYTES),
        )
        .send()
        .await;
    // The service answers 431 and closes; the close may reach the client (as a reset of the
    // head it was still sending) before the answer does. What must not happen is a 200.
    match answer {
        Ok(response) => {
            assert_eq!(
                response.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            )
        }
        Err(error) => assert!(!error.is_status(), "{error}"),
    }
    // A large head within the buffer is fine.
    let response = app
        .client
        .get(app.url("/v1/cases"))
        .header("x-padding", "x".repeat(16 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

on_both_backends!(cases_are_listed_newest_first_filtered_and_paged);
async fn cases_are_listed_newest_first_filtered_and_paged(app: TestApp) {
    let mut opened = Vec::new();
    for i in 0..5 {
        let tenant = if i % 2 == 0 { "t-even" } else { "t-odd" };
        let response = app
            .client
            .post(app.url("/v1/cases"))
            .json(&json!({
                "title": format!("Case {i}: {}", if i == 1 { "Disk Full" } else { "p95 spike" }),
                "tenant": tenant,
                "labels": {"service": format!("svc-{}", i % 2)},
                "severity": if i < 2 { "critical" } else { "low" },
                "automation": if i == 3 { "auto" } else { "manual" },
            }))
            .send()
            .await
            .unwrap();
        opened.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    app.advance(
        opened[4].parse().unwrap(),
        json!({"event": "start_analysis"}),
    )
    .await;

    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, first) = app.get_json("/v1/cases?limit=2").await;
    assert_eq!(ids(&first), vec![opened[4].clone(), opened[3].clone()]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = app
        .get_json(&format!("/v1/cases?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(ids(&second), vec![opened[2].clone(), opened[1].clone()]);
    let (_, third) = app
        .get_json(&format!(
            "/v1/cases?limit=2&cursor={}",
            second["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(ids(&third), vec![opened[0].clone()]);
    assert!(third["next_cursor"].is_null());

    let (_, even) = app.get_json("/v1/cases?tenant=t-even").await;
    assert_eq!(
        ids(&even),
        vec![opened[4].clone(), opened[2].clone(), opened[0].clone()]
    );
    let (_, analyzing) = app.get_json("/v1/cases?status=ANALYZING").await;
    assert_eq!(ids(&analyzing), vec![opened[4].clone()]);
    let (_, labelled) = app.get_json("/v1/cases?label=service=svc-1").await;
    assert_eq!(ids(&labelled), vec![opened[3].clone(), opened[1].clone()]);
    let (_, critical) = app.get_json("/v1/cases?severity=critical").await;
    assert_eq!(ids(&critical), vec![opened[1].clone(), opened[0].clone()]);
    let (_, auto) = app.get_json("/v1/cases?automation=auto").await;
    assert_eq!(ids(&auto), vec![opened[3].clone()]);
    // Text in the title, as typed in a search box: any case, blank is no filter.
    let (_, disk) = app.get_json("/v1/cases?q=%20disk%20f").await;
    assert_eq!(ids(&disk), vec![opened[1].clone()]);
    let (_, blank) = app.get_json("/v1/cases?q=%20&limit=10").await;
    assert_eq!(ids(&blank).len(), 5);

    let long_text = format!("q={}", "x".repeat(201));
    for (query, field) in [
        ("severity=urgent", "severity"),
        ("automation=sometimes", "automation"),
        (long_text.as_str(), "q"),
        ("status=OPEN", "status"),
        ("limit=0", "limit"),
        ("limit=500", "limit"),
        ("cursor=x", "cursor"),
        ("label=nokey", "label"),
        ("colour=red", "colour"),
    ] {
        let (status, problem) = app.get_json(&format!("/v1/cases?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(problem["field"], field, "{query}: {problem}");
    }
}

on_both_backends!(the_timeline_pages_by_cursor);
async fn the_timeline_pages_by_cursor(app: TestApp) {
    let case = app.case_in("CLOSED").await;
    let mut events = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = app
            .get_json(&format!("/v1/cases/{case}/timeline?limit=3{cursor}"))
            .await;
        events.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["event"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(
        events,
        [
            "open",
            "start_analysis",
            "analysis_done",
            "plan_ready",
            "gate_approved",
            "exec_done",
            "verify_pass"
        ]
    );
}

on_both_backends!(health_schema_metrics_and_docs_are_served);
async fn health_schema_metrics_and_docs_are_served(app: TestApp) {
    let (status, live) = app.get_json("/livez").await;
    assert_eq!(
        (status, live["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(
        (status, ready["checks"]["database"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    let schema = app
        .client
        .get(app.url("/v1/schemas/change-plan"))
        .send()
        .await
        .unwrap();
    assert_eq!(schema.headers()["content-type"], "application/schema+json");
    let schema: Value = schema.json().await.unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["title"], "ChangePlan");

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text().await.unwrap();
    for family in [
        "case_transition_total",
        "conflict_total",
        "idempotent_replay_total",
        "cases_open",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from /metrics"
        );
    }

    let (status, document) = app.get_json("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let page = docs.text().await.unwrap();
    assert!(
        page.contains("swagger-ui"),
        "the docs page is the bundled Swagger UI"
    );
    let bundle = app
        .client
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bundle.status(),
        StatusCode::OK,
        "the UI's script is served locally, not from a CDN"
    );
}

on_both_backends!(http_metrics_count_by_route_template_never_by_id);
async fn http_metrics_count_by_route_template_never_by_id(app: TestApp) {
    let case = app.open_case("t-001").await;
    assert_eq!(
        app.get_json(&format!("/v1/cases/{case}")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.get_json(&format!("/v1/cases/{}", uuid::Uuid::now_v7()))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get_json("/no/such/route").await.0,
        StatusCode::NOT_FOUND
    );

    let by_template = "http_requests_total{method=\"GET\",route=\"/v1/cases/{id}\"";
    assert_eq!(
        app.metric(&format!("{by_template},status=\"200\"}}")).await,
        1.0
    );
    assert_eq!(
        app.metric(&format!("{by_template},status=\"404\"}}")).await,
        1.0
    );
    assert_eq!(
        app.metric("http_requests_total{method=\"POST\",route=\"/v1/cases\",status=\"201\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("http_request_duration_seconds_count{method=\"GET\",route=\"/v1/cases/{id}\"}")
            .await,
        2.0
    );

    let text = app.metrics_text().await;
    let uuid_label = text.lines().find(|line| {
        line.split('"')
            .skip(1)
            .step_by(2)
            .any(|value| uuid::Uuid::parse_str(value).is_ok())
    });
    assert_eq!(uuid_label, None, "a label value is a UUID");
}

on_both_backends!(a_nul_character_is_400_naming_the_field_and_nothing_is_written);
async fn a_nul_character_is_400_naming_the_field_and_nothing_is_written(app: TestApp) {
    let case = app.open_case("t-001").await;
    let (_, keys) = app.get_json("/v1/keys").await;
    let keys_before = keys["items"].as_array().unwrap().len();
    let refused = |response: reqwest::Response, field: &'static str| async move {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{field}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("NUL"),
            "{problem}"
        );
    };

    for (body, field) in [
        (json!({"title": "p95\u{0}spike"}), "title"),
        (
            json!({"title": "x", "labels": {"service": "check\u{0}out"}}),
            "labels.service",
        ),
        (
            json!({"title": "x", "labels": {"serv\u{0}ice": "checkout"}}),
            "labels.serv\\u0000ice",
        ),
        (
            json!({"title": "x", "evidence": [{"lines": ["ok", "bad\u{0}"]}]}),
            "evidence[0].lines[1]",
        ),
        (json!({"title": "x", "actor": "\u{0}"}), "actor"),
    ] {
        let response = app
            .client
            .post(app.url("/v1/cases"))
            .json(&body)
            .send()
            .await
            .unwrap();
        refused(response, field).await;
    }
    for (body, field) in [
        (json!({"event": "cancel", "reason": "dup\u{0}"}), "reason"),
        (
            json!({"event": "start_analysis", "meta": {"x": [1, "ok", "\u{0}"]}}),
            "meta.x[2]",
        ),
        (
            json!({"event": "start_analysis", "meta": {"k\u{0}": 1}}),
            "meta.k\\u0000",
        ),
        (
            json!({"event": "start_analysis", "correlation_id": "c\u{0}"}),
            "correlation_id",
        ),
    ] {
        refused(app.transition(case, body).await, field).await;
    }
    let key = app
        .client
        .post(app.url("/v1/keys"))
        .json(&json!({"name": "ci\u{0}", "roles": ["viewer"]}))
        .send()
        .await
        .unwrap();
    refused(key, "name").await;
    let metrics = app
        .client
        .post(app.url("/v1/metrics/1m"))
        .json(
            &json!({"points": [{"tenant": "t-001", "resource": "checkout",
            "metric": "p95_ms", "bucket": "2026-11-21T10:00:00Z", "p95": 180.0,
            "labels": {"pod": "a\u{0}"}}]}),
        )
        .send()
        .await
        .unwrap();
    refused(metrics, "points[0].labels.pod").await;
    for (query, field) in [("tenant=t%00x", "tenant"), ("label=service=a%00", "label")] {
        let response = app
            .client
            .get(app.url(&format!("/v1/cases?{query}")))
            .send()
            .await
            .unwrap();
        refused(response, field).await;
    }

    let (_, cases) = app.get_json("/v1/cases").await;
    assert_eq!(cases["items"].as_array().unwrap().len(), 1, "{cases}");
    assert_eq!(app.case(case).await["version"], 1);
    assert_eq!(app.timeline(case).await.len(), 1);
    let (_, keys) = app.get_json("/v1/keys").await;
    assert_eq!(keys["items"].as_array().unwrap().len(), keys_before);
    let count = "SELECT count(*) FROM metric_1m";
    let points: i64 = match app.orchestrator.store().pool() {
        orchestrator::SqlPool::Sqlite(pool) => {
            sqlx::query_scalar(count).fetch_one(&pool).await.unwrap()
        }
        orchestrator::SqlPool::Postgres(pool) => {
            sqlx::query_scalar(count).fetch_one(&pool).await.unwrap()
        }
    };
    assert_eq!(points, 0);
}
