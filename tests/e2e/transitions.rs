//! The transition contract (DESIGN.md §3) over real HTTP, on both backends.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{happy_path, valid_plan, TestApp};
use crate::on_both_backends;

on_both_backends!(a_case_walks_from_new_to_closed);
async fn a_case_walks_from_new_to_closed(app: TestApp) {
    let case = app.open_case("t-001").await;
    let opened = app.case(case).await;
    assert_eq!(
        (opened["status"].as_str(), opened["version"].as_i64()),
        (Some("NEW"), Some(1))
    );

    for (version, (event, reached)) in (2..).zip(happy_path()) {
        let after = app.advance(case, event).await;
        assert_eq!(after["status"], reached);
        assert_eq!(after["version"], version);
    }
    let closed = app.case(case).await;
    assert_eq!(closed["resolution"], "resolved");

    let timeline = app.timeline(case).await;
    let rows: Vec<(String, Option<String>, String, i64)> = timeline
        .iter()
        .map(|row| {
            (
                row["event"].as_str().unwrap().to_string(),
                row["from_status"].as_str().map(str::to_string),
                row["to_status"].as_str().unwrap().to_string(),
                row["version"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("open", None, "NEW", 1),
        ("start_analysis", Some("NEW"), "ANALYZING", 2),
        ("analysis_done", Some("ANALYZING"), "PLANNING", 3),
        ("plan_ready", Some("PLANNING"), "WAIT_GATE", 4),
        ("gate_approved", Some("WAIT_GATE"), "EXECUTING", 5),
        ("exec_done", Some("EXECUTING"), "VERIFYING", 6),
        ("verify_pass", Some("VERIFYING"), "CLOSED", 7),
    ]
    .map(|(e, f, t, v)| (e.to_string(), f.map(str::to_string), t.to_string(), v));
    assert_eq!(rows, expected);
    assert!(timeline.iter().all(|row| row["outcome"] == "applied"));

    let (outcomes, outbox): (Vec<_>, Vec<_>) = app
        .outbox(case)
        .await
        .into_iter()
        .partition(|m| m.topic == "evt.case.outcome.v1");
    // Entering CLOSED also publishes the outcome, with the closing transition's payload.
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].payload, outbox.last().unwrap().payload);
    assert_eq!(
        outbox.len(),
        7,
        "one evt.case.transition.v1 per applied row"
    );
    assert!(outbox.iter().all(|m| m.topic == "evt.case.transition.v1"));
    let versions: Vec<i64> = outbox
        .iter()
        .map(|m| m.payload["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=7).collect::<Vec<_>>());
    let ids: std::collections::HashSet<_> = outbox.iter().map(|m| m.message_id).collect();
    assert_eq!(ids.len(), 7, "message ids are unique");

    let (_, plans) = app.get_json(&format!("/v1/cases/{case}/plans")).await;
    assert_eq!(plans["items"].as_array().unwrap().len(), 1);
    assert_eq!(plans["items"][0]["plan"], valid_plan());
    assert_eq!(plans["items"][0]["requested_by"], "planner@svc");
    assert_eq!(plans["items"][0]["id"], closed["current_plan_id"]);
    let (_, decisions) = app.get_json(&format!("/v1/cases/{case}/decisions")).await;
    assert_eq!(decisions["items"][0]["decision"], "approved");
    assert_eq!(decisions["items"][0]["decided_by"], "lead@svc");
    assert_eq!(decisions["items"][0]["plan_id"], closed["current_plan_id"]);
}

on_both_backends!(an_illegal_transition_is_409_and_changes_nothing);
async fn an_illegal_transition_is_409_and_changes_nothing(app: TestApp) {
    let case = app.open_case("t-001").await;
    let response = app
        .transition(case, json!({"event": "exec_done", "actor": "x"}))
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:opscase:problem:illegal-transition");
    assert_eq!(problem["current_status"], "NEW");
    assert_eq!(problem["current_version"], 1);
    assert_eq!(
        problem["allowed_events"],
        json!(["start_analysis", "cancel"])
    );
    assert_eq!(problem["case_id"], case.to_string());
    assert!(problem["request_id"].is_string());

    assert_eq!(app.case(case).await["version"], 1);
    assert_eq!(app.timeline(case).await.len(), 1);
    assert_eq!(app.outbox(case).await.len(), 1);
    assert_eq!(
        app.metric("conflict_total{reason=\"illegal_transition\"}")
            .await,
        1.0
    );
}

on_both_backends!(an_idempotent_replay_returns_the_first_response_and_writes_nothing);
async fn an_idempotent_replay_returns_the_first_response_and_writes_nothing(app: TestApp) {
    let case = app.open_case("t-001").await;
    let body = json!({"event": "start_analysis", "actor": "analyst@svc"});
    let first = app.transition_with_key(case, "a1", body.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_etag = first.headers()["etag"].clone();
    let first_body: Value = first.json().await.unwrap();

    // The same body with its fields in another order is the same request.
    let reordered: Value =
        serde_json::from_str(r#"{"actor": "analyst@svc", "event": "start_analysis"}"#).unwrap();
    for again in [body.clone(), reordered] {
        let replay = app.transition_with_key(case, "a1", again).await;
        assert_eq!(replay.status(), StatusCode::OK);
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        assert_eq!(replay.headers()["etag"], first_etag);
        assert_eq!(replay.json::<Value>().await.unwrap(), first_body);
    }
    assert_eq!(app.timeline(case).await.len(), 2);
    assert_eq!(app.outbox(case).await.len(), 2);
    assert_eq!(app.case(case).await["version"], 2);
    assert_eq!(app.metric("idempotent_replay_total").await, 2.0);

    // The key is spent: a different body under it is refused and changes nothing.
    let other = app
        .transition_with_key(case, "a1", json!({"event": "analysis_done"}))
        .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "urn:opscase:problem:idempotency-key-reused"
    );
    assert_eq!(problem["field"], "Idempotency-Key");
    assert_eq!(app.case(case).await["status"], "ANALYZING");
    assert_eq!(
        app.metric("conflict_total{reason=\"idempotency_mismatch\"}")
            .await,
        1.0
    );
}

on_both_backends!(a_transition_without_idempotency_key_is_400);
async fn a_transition_without_idempotency_key_is_400(app: TestApp) {
    let case = app.open_case("t-001").await;
    let response = app
        .client
        .patch(app.url(&format!("/v1/cases/{case}/transition")))
        .json(&json!({"event": "start_analysis"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["field"], "Idempotency-Key");
    assert_eq!(app.case(case).await["version"], 1);
}

on_both_backends!(failure_events_park_the_case_and_resume_replans);
async fn failure_events_park_the_case_and_resume_replans(app: TestApp) {
    let executing = app.case_in("EXECUTING").await;
    let parked = app
        .advance(
            executing,
            json!({"event": "exec_failed", "reason": "rollout timed out"}),
        )
        .await;
    assert_eq!(parked["status"], "PARKED");
    let resumed = app
        .advance(
            executing,
            json!({"event": "resume", "reason": "bigger timeout"}),
        )
        .await;
    assert_eq!(resumed["status"], "PLANNING");

    let waiting = app.case_in("WAIT_GATE").await;
    let rejected = app
        .advance(
            waiting,
            json!({"event": "gate_rejected", "actor": "lead@svc", "reason": "change freeze"}),
        )
        .await;
    assert_eq!(rejected["status"], "PARKED");
    let (_, decisions) = app
        .get_json(&format!("/v1/cases/{waiting}/decisions"))
        .await;
    assert_eq!(decisions["items"][0]["decision"], "rejected");
    assert_eq!(decisions["items"][0]["reason"], "change freeze");

    let verifying = app.case_in("VERIFYING").await;
    let failed = app
        .advance(
            verifying,
            json!({"event": "verify_failed", "reason": "p95 still 900ms"}),
        )
        .await;
    assert_eq!(failed["status"], "PARKED");
    assert_eq!(app.metric("cases_open{status=\"PARKED\"}").await, 2.0);
}

on_both_backends!(if_match_compares_strongly_so_weak_tags_never_match);
async fn if_match_compares_strongly_so_weak_tags_never_match(app: TestApp) {
    let case = app.open_case("t-001").await;
    let patch = |key: &'static str, if_match: &'static str, body: Value| {
        app.client
            .patch(app.url(&format!("/v1/cases/{case}/transition")))
            .header("Idempotency-Key", key)
            .header("If-Match", if_match)
            .json(&body)
            .send()
    };
    let start = json!({"event": "start_analysis"});
    for (key, if_match) in [("k-weak", "W/\"1\""), ("k-weak-list", "W/\"1\", W/\"2\"")] {
        let response = patch(key, if_match, start.clone()).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::PRECONDITION_FAILED,
            "{if_match}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:opscase:problem:precondition-failed");
        assert_eq!(problem["current_version"], 1);
    }
    assert_eq!(app.case(case).await["version"], 1, "nothing was applied");
    assert_eq!(app.timeline(case).await.len(), 1);

    // A strong tag in a list still matches, whatever weak tags come with it; so does `*`.
    let listed = patch("k-listed", "W/\"1\", \"7\", \"1\"", start)
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(listed.headers()["etag"], "\"2\"");
    let any = patch("k-any", "*", json!({"event": "analysis_done"}))
        .await
        .unwrap();
    assert_eq!(any.status(), StatusCode::OK);
    assert_eq!(app.case(case).await["version"], 3);
}

on_both_backends!(a_stale_if_match_is_412_and_a_stale_expected_version_409);
async fn a_stale_if_match_is_412_and_a_stale_expected_version_409(app: TestApp) {
    let case = app.open_case("t-001").await;
    app.advance(case, json!({"event": "start_analysis"})).await;

    let stale = app
        .client
        .patch(app.url(&format!("/v1/cases/{case}/transition")))
        .header("Idempotency-Key", "k-stale")
        .header("If-Match", "\"1\"")
        .json(&json!({"event": "analysis_done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let problem: Value = stale.json().await.unwrap();
    assert_eq!(problem["current_version"], 2);

    let body_stale = app
        .transition(
            case,
            json!({"event": "analysis_done", "expected_version": 1}),
        )
        .await;
    assert_eq!(body_stale.status(), StatusCode::CONFLICT);
    assert_eq!(
        body_stale.json::<Value>().await.unwrap()["type"],
        "urn:opscase:problem:version-mismatch"
    );

    let fresh = app
        .client
        .patch(app.url(&format!("/v1/cases/{case}/transition")))
        .header("Idempotency-Key", "k-fresh")
        .header("If-Match", "\"2\"")
        .json(&json!({"event": "analysis_done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_eq!(fresh.headers()["etag"], "\"3\"");

    let malformed = app
        .client
        .patch(app.url(&format!("/v1/cases/{case}/transition")))
        .header("Idempotency-Key", "k-bad")
        .header("If-Match", "three")
        .json(&json!({"event": "cancel", "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["field"],
        "If-Match"
    );
    assert_eq!(app.timeline(case).await.len(), 3);
    assert_eq!(
        app.metric("conflict_total{reason=\"precondition_failed\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("conflict_total{reason=\"version_mismatch\"}")
            .await,
        1.0
    );
}

on_both_backends!(a_guard_failure_is_422_records_the_attempt_and_changes_nothing);
async fn a_guard_failure_is_422_records_the_attempt_and_changes_nothing(app: TestApp) {
    let case = app.case_in("PLANNING").await;
    let outbox_before = app.outbox(case).await.len();
    let mut plan = valid_plan();
    plan["steps"][0]["timeout_s"] = json!(1);
    let body = json!({"event": "plan_ready", "actor": "planner@svc", "plan": plan});

    let response = app.transition_with_key(case, "guarded", body.clone()).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:opscase:problem:guard-failed");
    assert_eq!(problem["current_status"], "PLANNING");
    assert_eq!(problem["guard_failures"][0]["guard"], "plan_complete");
    assert_eq!(
        problem["guard_failures"][0]["field"],
        "plan.steps[0].timeout_s"
    );

    let after = app.case(case).await;
    assert_eq!(after["status"], "PLANNING");
    assert_eq!(after["version"], 3);
    assert!(after["current_plan_id"].is_null());
    let timeline = app.timeline(case).await;
    let attempt = timeline.last().unwrap();
    assert_eq!(attempt["event"], "plan_ready");
    assert_eq!(attempt["outcome"], "rejected");
    assert_eq!(attempt["from_status"], "PLANNING");
    assert_eq!(attempt["to_status"], "WAIT_GATE");
    assert_eq!(attempt["version"], 3);
    assert_eq!(
        attempt["meta"]["guard_failures"][0]["field"],
        "plan.steps[0].timeout_s"
    );
    assert_eq!(
        app.outbox(case).await.len(),
        outbox_before,
        "a refused event publishes nothing"
    );
    let (_, plans) = app.get_json(&format!("/v1/cases/{case}/plans")).await;
    assert_eq!(plans["items"], json!([]), "an invalid plan is never stored");

    // Replaying the refused request answers the same 422 without a second attempt row.
    let replay = app.transition_with_key(case, "guarded", body).await;
    assert_eq!(replay.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), problem);
    assert_eq!(app.timeline(case).await.len(), timeline.len());
    assert_eq!(
        app.metric("conflict_total{reason=\"guard_failed\"}").await,
        1.0
    );
}

on_both_backends!(four_eyes_refuses_the_requester_approving_their_own_plan);
async fn four_eyes_refuses_the_requester_approving_their_own_plan(app: TestApp) {
    // The admin key proposed the plan (in case_in). It holds the approver role too, but four
    // eyes compares keys: neither its own name nor someone else's name gets it through.
    let case = app.case_in("WAIT_GATE").await;
    for decision in [json!({}), json!({"approver": "someone-else@svc"})] {
        let own = app
            .client
            .patch(app.url(&format!("/v1/cases/{case}/transition")))
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"event": "gate_approved", "actor": "someone-else@svc", "decision": decision}))
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let problem: Value = own.json().await.unwrap();
        assert_eq!(
            problem["guard_failures"][0]["field"], "decision.approver",
            "{problem}"
        );
    }
    let without_decision = app
        .transition(case, json!({"event": "gate_approved", "actor": "lead@svc"}))
        .await;
    assert_eq!(without_decision.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let other = app
        .advance(case, json!({"event": "gate_approved", "actor": "lead@svc", "decision": {"approver": "lead@svc"}}))
        .await;
    assert_eq!(other["status"], "EXECUTING");
    let (_, decisions) = app.get_json(&format!("/v1/cases/{case}/decisions")).await;
    assert_eq!(decisions["items"][0]["decided_by"], "lead@svc");
    assert!(decisions["items"][0]["decided_by_key"]
        .as_str()
        .unwrap()
        .starts_with("key:"));
    let (_, plans) = app.get_json(&format!("/v1/cases/{case}/plans")).await;
    assert_ne!(
        plans["items"][0]["requested_by_key"],
        decisions["items"][0]["decided_by_key"]
    );
    let timeline = app.timeline(case).await;
    let approval = timeline.last().unwrap();
    assert_eq!(
        approval["principal_name"], "approver",
        "the timeline names the key next to the actor"
    );
    assert_eq!(approval["actor"], "lead@svc");
}

on_both_backends!(cancel_needs_a_reason_and_closes_as_cancelled);
async fn cancel_needs_a_reason_and_closes_as_cancelled(app: TestApp) {
    let case = app.case_in("ANALYZING").await;
    let blank = app
        .transition(case, json!({"event": "cancel", "reason": " "}))
        .await;
    assert_eq!(blank.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let closed = app
        .advance(
            case,
            json!({"event": "cancel", "reason": "duplicate of another case"}),
        )
        .await;
    assert_eq!(
        (closed["status"].as_str(), closed["resolution"].as_str()),
        (Some("CLOSED"), Some("cancelled"))
    );
    let after_close = app
        .transition(case, json!({"event": "resume", "reason": "again"}))
        .await;
    assert_eq!(after_close.status(), StatusCode::CONFLICT);
    assert_eq!(
        after_close.json::<Value>().await.unwrap()["allowed_events"],
        json!([])
    );
}

on_both_backends!(the_trace_context_reaches_timeline_and_outbox);
async fn the_trace_context_reaches_timeline_and_outbox(app: TestApp) {
    let case = app.open_case("t-001").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app
        .client
        .patch(app.url(&format!("/v1/cases/{case}/transition")))
        .header("Idempotency-Key", "traced")
        .header("traceparent", traceparent)
        .header("X-Request-Id", "req-123")
        .json(&json!({"event": "start_analysis", "meta": {"ticket": "INC-7"}, "correlation_id": "corr-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let row = app.timeline(case).await.pop().unwrap();
    assert_eq!(row["meta"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // The request is a span of its own in the caller's trace: the parent of what it sends.
    let recorded = row["meta"]["traceparent"].as_str().unwrap();
    assert!(
        recorded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && recorded != traceparent,
        "{recorded}"
    );
    assert_eq!(row["meta"]["ticket"], "INC-7");
    assert_eq!(row["request_id"], "req-123");
    assert_eq!(row["correlation_id"], "corr-9");
    let message = app.outbox(case).await.pop().unwrap();
    assert_eq!(message.headers["traceparent"], recorded);
    assert_eq!(message.headers["request_id"], "req-123");
}

on_both_backends!(a_request_without_trace_context_starts_a_trace_of_its_own);
async fn a_request_without_trace_context_starts_a_trace_of_its_own(app: TestApp) {
    let case = app.open_case("t-001").await;
    app.advance(case, json!({"event": "start_analysis"})).await;
    app.advance(case, json!({"event": "analysis_done"})).await;
    let trace_ids: Vec<String> = app
        .timeline(case)
        .await
        .iter()
        .map(|row| row["meta"]["trace_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(trace_ids.len(), 3);
    for id in &trace_ids {
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    assert_ne!(
        trace_ids[1], trace_ids[2],
        "each request is a trace of its own"
    );
    let messages = app.outbox(case).await;
    let last = messages.last().unwrap();
    assert!(last.headers["traceparent"]
        .as_str()
        .unwrap()
        .contains(&trace_ids[2]));
}

on_both_backends!(secrets_in_a_request_never_reach_the_timeline_or_the_outbox);
async fn secrets_in_a_request_never_reach_the_timeline_or_the_outbox(app: TestApp) {
    let case = app.open_case("t-001").await;
    let leaked_key = crate::helpers::ADMIN_KEY;
    let response = app
        .transition(
            case,
            json!({
                "event": "start_analysis",
                "reason": "pasted Bearer abcdefgh12345678 by mistake",
                "meta": {"password": "hunter2", "note": format!("rotated {leaked_key}"), "ticket": "INC-9"}
            }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let row = app.timeline(case).await.pop().unwrap();
    let stored = row.to_string();
    for secret in ["hunter2", leaked_key, "abcdefgh12345678"] {
        assert!(
            !stored.contains(secret),
            "{secret} reached the timeline: {stored}"
        );
    }
    assert_eq!(row["meta"]["password"], "***");
    assert_eq!(row["meta"]["note"], "rotated ***");
    assert_eq!(row["meta"]["ticket"], "INC-9", "ordinary fields are kept");
    assert_eq!(row["reason"], "pasted *** by mistake");
    let message = app.outbox(case).await.pop().unwrap();
    assert!(!message.payload.to_string().contains("abcdefgh12345678"));
}
