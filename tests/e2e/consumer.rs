//! The orchestrator consuming worker events: exactly once in effect, through the transition
//! path, with the event's product stored in the same transaction.

use bus::Envelope;
use chrono::Utc;
use orchestrator::{Consumed, Error};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{valid_plan, TestApp};
use crate::on_both_backends;

const CONSUMER: &str = "orchestrator";

fn worker_event(kind: &str, case: Uuid, data: Value) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        "opscase/test-worker",
        kind,
        &case.to_string(),
        Utc::now(),
        data,
    )
}

on_both_backends!(a_redelivered_event_changes_the_case_once);
async fn a_redelivered_event_changes_the_case_once(app: TestApp) {
    let case = app.case_in("ANALYZING").await;
    let proposed = worker_event("evt.plan.proposed.v1", case, json!({"plan": valid_plan()}));

    let first = app.orchestrator.consume(CONSUMER, &proposed).await.unwrap();
    let Consumed::Applied {
        case: after,
        events,
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!(after.status.as_str(), "WAIT_GATE");
    assert_eq!(
        events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        ["analysis_done", "plan_ready"],
        "a plan during analysis finishes the analysis in the same transaction"
    );
    let rows = app.timeline(case).await.len();
    let outbox = app.outbox(case).await.len();

    let again = app.orchestrator.consume(CONSUMER, &proposed).await.unwrap();
    assert!(matches!(again, Consumed::Duplicate), "{again:?}");
    assert_eq!(app.timeline(case).await.len(), rows);
    assert_eq!(app.outbox(case).await.len(), outbox);
    assert_eq!(app.case(case).await["version"], 4);
    assert_eq!(app.metric("inbox_dedup_total").await, 1.0);
    let (_, plans) = app.get_json(&format!("/v1/cases/{case}/plans")).await;
    assert_eq!(
        plans["items"].as_array().unwrap().len(),
        1,
        "the plan is stored once"
    );
    assert_eq!(plans["items"][0]["requested_by"], "planner");
}

on_both_backends!(a_late_event_is_acked_and_recorded_as_ignored);
async fn a_late_event_is_acked_and_recorded_as_ignored(app: TestApp) {
    let case = app.case_in("EXECUTING").await;
    let late = worker_event("evt.plan.proposed.v1", case, json!({"plan": valid_plan()}));
    let outcome = app.orchestrator.consume(CONSUMER, &late).await.unwrap();
    assert!(matches!(outcome, Consumed::Ignored { .. }), "{outcome:?}");
    let row = app.timeline(case).await.pop().unwrap();
    assert_eq!(row["outcome"], "ignored");
    assert_eq!(row["event"], "plan_ready");
    assert_eq!(row["from_status"], "EXECUTING");
    assert_eq!(row["meta"]["message_id"], late.id.to_string());
    assert_eq!(app.case(case).await["status"], "EXECUTING");
    assert_eq!(
        app.metric("conflict_total{reason=\"illegal_transition\"}")
            .await,
        1.0
    );
    assert!(matches!(
        app.orchestrator.consume(CONSUMER, &late).await.unwrap(),
        Consumed::Duplicate
    ));
}

on_both_backends!(worker_events_carry_a_case_to_closed_and_store_their_products);
async fn worker_events_carry_a_case_to_closed_and_store_their_products(app: TestApp) {
    let case = app.case_in("PLANNING").await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let steps = [
        (
            "evt.plan.proposed.v1",
            json!({"plan": valid_plan(), "actor": "planner/k8s.rollout.canary"}),
            "WAIT_GATE",
        ),
        (
            "evt.plan.approved.v1",
            json!({"policy_rev": "sha256:abc", "inputs": {"risk_score": 0.2, "max_auto_risk": 0.5}}),
            "EXECUTING",
        ),
        (
            "evt.exec.done.v1",
            json!({"results": [{"step": "rollout", "status": "succeeded"}]}),
            "VERIFYING",
        ),
        (
            "evt.verify.pass.v1",
            json!({"verdict": {"p95_ms": 180.0}}),
            "CLOSED",
        ),
    ];
    for (kind, data, reached) in steps {
        let envelope = worker_event(kind, case, data).with_traceparent(Some(traceparent.into()));
        let outcome = app.orchestrator.consume(CONSUMER, &envelope).await.unwrap();
        let Consumed::Applied { case: after, .. } = outcome else {
            panic!("{kind}: {outcome:?}")
        };
        assert_eq!(after.status.as_str(), reached, "{kind}");
    }
    let (_, decisions) = app.get_json(&format!("/v1/cases/{case}/decisions")).await;
    let decision = &decisions["items"][0];
    assert_eq!(decision["decision"], "approved");
    assert_eq!(decision["decided_by"], "gatekeeper");
    assert_eq!(decision["policy_rev"], "sha256:abc");
    assert_eq!(decision["inputs"]["max_auto_risk"], 0.5);
    let timeline = app.timeline(case).await;
    let executed = timeline.iter().find(|r| r["event"] == "exec_done").unwrap();
    assert_eq!(executed["meta"]["results"][0]["status"], "succeeded");
    assert_eq!(
        executed["meta"]["trace_id"], "0af7651916cd43dd8448eb211c80319c",
        "the worker's trace continues"
    );
    let closed = timeline.last().unwrap();
    assert_eq!(closed["meta"]["verdict"]["p95_ms"], 180.0);
    assert_eq!(app.case(case).await["resolution"], "resolved");
}

on_both_backends!(an_invalid_plan_from_a_worker_is_refused_and_recorded);
async fn an_invalid_plan_from_a_worker_is_refused_and_recorded(app: TestApp) {
    let case = app.case_in("PLANNING").await;
    let mut plan = valid_plan();
    plan["steps"] = json!([]);
    let envelope = worker_event("evt.plan.proposed.v1", case, json!({"plan": plan}));
    assert!(matches!(
        app.orchestrator.consume(CONSUMER, &envelope).await.unwrap(),
        Consumed::Refused
    ));
    let row = app.timeline(case).await.pop().unwrap();
    assert_eq!(row["outcome"], "rejected");
    assert_eq!(row["meta"]["guard_failures"][0]["field"], "plan.steps");
    assert_eq!(app.case(case).await["status"], "PLANNING");
    let (_, plans) = app.get_json(&format!("/v1/cases/{case}/plans")).await;
    assert_eq!(plans["items"], json!([]));
    assert!(matches!(
        app.orchestrator.consume(CONSUMER, &envelope).await.unwrap(),
        Consumed::Duplicate
    ));
}

on_both_backends!(unusable_messages_are_errors_that_write_nothing);
async fn unusable_messages_are_errors_that_write_nothing(app: TestApp) {
    let case = app.case_in("VERIFYING").await;
    let rows = app.timeline(case).await.len();
    let unknown_type = worker_event("evt.something.v9", case, json!({}));
    let unknown_case = worker_event("evt.verify.pass.v1", Uuid::now_v7(), json!({}));
    let bad_data = worker_event("evt.verify.pass.v1", case, json!({"results": "all good"}));
    let mut bad_subject = worker_event("evt.verify.pass.v1", case, json!({}));
    bad_subject.subject = "not-a-case".into();
    for envelope in [unknown_type, unknown_case, bad_data.clone(), bad_subject] {
        let outcome = app.orchestrator.consume(CONSUMER, &envelope).await;
        assert!(
            matches!(outcome, Err(Error::BadMessage(_))),
            "{}: {outcome:?}",
            envelope.kind
        );
    }
    assert_eq!(app.timeline(case).await.len(), rows);
    // The inbox row of a failed message was rolled back with everything else: the same message
    // id, redelivered with usable data, is still applied.
    let mut corrected = bad_data;
    corrected.data = json!({"verdict": {"p95_ms": 120.0}});
    assert!(matches!(
        app.orchestrator
            .consume(CONSUMER, &corrected)
            .await
            .unwrap(),
        Consumed::Applied { .. }
    ));
    assert_eq!(app.case(case).await["status"], "CLOSED");
}
