//! The worker: cmd.gate.eval in, one evt.plan.* out.

mod common;

use std::sync::Mutex;

use async_trait::async_trait;
use bus::{answer_id, BusError, Envelope, Publisher, Worker, WorkerError};
use chrono::Utc;
use common::plan;
use gatekeeper::{policy_rev, Gatekeeper, PolicySource, DEFAULT_POLICY_TOML};
use serde_json::{json, Value};
use uuid::Uuid;
use workflow::messages::{CaseBrief, GateCommand, GateEvent};

#[derive(Default)]
struct Collect(Mutex<Vec<Envelope>>);

#[async_trait]
impl Publisher for Collect {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.0.lock().unwrap().push(envelope);
        Ok(())
    }
}

struct Down;

#[async_trait]
impl Publisher for Down {
    async fn publish(&self, _: Envelope) -> Result<(), BusError> {
        Err(BusError::Unavailable("connection refused".into()))
    }
}

fn command(tenant: &str, plan: Value) -> Envelope {
    let data = GateCommand {
        case: CaseBrief {
            id: "case-1".into(),
            tenant: tenant.into(),
            title: "checkout errors".into(),
            severity: "high".into(),
            version: 3,
            ..Default::default()
        },
        plan_id: "plan-1".into(),
        plan,
        requested_by: "alice".into(),
    };
    envelope("cmd.gate.eval", serde_json::to_value(data).unwrap())
}

fn envelope(kind: &str, data: Value) -> Envelope {
    Envelope::new(
        Uuid::new_v4(),
        "opscase/orchestrator",
        kind,
        "case-1",
        Utc::now(),
        data,
    )
    .with_traceparent(Some(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    ))
}

async fn run(gate: &Gatekeeper, cmd: &Envelope) -> (Envelope, GateEvent) {
    let out = Collect::default();
    gate.handle(cmd, &out).await.unwrap();
    let mut published = out.0.into_inner().unwrap();
    assert_eq!(published.len(), 1, "exactly one event");
    let event = published.pop().unwrap();
    let data: GateEvent = serde_json::from_value(event.data.clone()).unwrap();
    (event, data)
}

#[test]
fn role_and_commands() {
    let gate = Gatekeeper::new(PolicySource::builtin());
    assert_eq!(gate.role(), "gatekeeper");
    assert_eq!(gate.commands(), &["cmd.gate.eval"]);
    assert!(!gate.detached());
}

#[tokio::test]
async fn approves_a_low_risk_plan_with_the_builtin_policy() {
    let gate = Gatekeeper::new(PolicySource::builtin());
    let cmd = command("t-001", plan(Some(0.1), &["script.exec"]));
    let (event, data) = run(&gate, &cmd).await;
    assert_eq!(event.kind, "evt.plan.approved.v1");
    assert_eq!(event.source, "opscase/gatekeeper");
    assert_eq!(event.subject, "case-1");
    assert_eq!(event.id, answer_id(&cmd, "evt.plan.approved.v1", ""));
    assert_eq!(event.traceparent, cmd.traceparent);
    assert_eq!(data.actor, "gatekeeper");
    assert_eq!(data.plan_id, "plan-1");
    assert_eq!(data.policy_rev, policy_rev(DEFAULT_POLICY_TOML.as_bytes()));
    assert_eq!(data.rule, "auto_approve");
    assert_eq!(data.inputs["tenant"], "t-001");
    assert_eq!(data.inputs["risk_score"], 0.1);
    assert_eq!(data.inputs["requested_by"], "alice");
    assert_eq!(data.inputs["actions"], json!(["script.exec"]));

    // A redelivery answers with the same message id.
    let (again, _) = run(&gate, &cmd).await;
    assert_eq!(again.id, event.id);
}

#[tokio::test]
async fn holds_and_rejects_by_the_file_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    let text = "human_actions = [\"k8s.rollout\"]\nforbidden_actions = [\"http.call\"]\n";
    std::fs::write(&path, text).unwrap();
    let gate =
        Gatekeeper::with_source(PolicySource::from_file(&path).unwrap(), "opscase/test-gate");

    let (event, data) = run(&gate, &command("t-001", plan(Some(0.1), &["k8s.rollout"]))).await;
    assert_eq!(event.kind, "evt.plan.held.v1");
    assert_eq!(event.source, "opscase/test-gate");
    assert_eq!(data.rule, "human_actions");
    assert_eq!(data.policy_rev, policy_rev(text.as_bytes()));

    let (event, data) = run(&gate, &command("t-001", plan(Some(0.1), &["http.call"]))).await;
    assert_eq!(event.kind, "evt.plan.rejected.v1");
    assert_eq!(data.rule, "forbidden_actions");
    assert!(data.reason.contains("http.call"), "{}", data.reason);

    let (event, data) = run(&gate, &command("t-001", plan(Some(0.9), &["noop"]))).await;
    assert_eq!(event.kind, "evt.plan.held.v1");
    assert_eq!(data.rule, "max_auto_risk");
    assert_eq!(data.reason, "risk 0.9 > max_auto_risk 0.3");
}

#[tokio::test]
async fn malformed_commands_are_poison() {
    let gate = Gatekeeper::new(PolicySource::builtin());
    let out = Collect::default();
    for cmd in [
        envelope("cmd.gate.eval", json!({"plan": {}})),
        envelope("cmd.gate.eval", json!("nope")),
        envelope("cmd.gate.eval", {
            let mut data = command("t", plan(Some(0.1), &["noop"])).data;
            data["case"]["version"] = json!("three");
            data
        }),
        envelope("cmd.gate.eval", {
            let mut data = command("t", plan(Some(0.1), &["noop"])).data;
            data["plan_id"] = json!("");
            data
        }),
        envelope(
            "cmd.exec.run",
            command("t", plan(Some(0.1), &["noop"])).data,
        ),
    ] {
        let err = gate.handle(&cmd, &out).await.unwrap_err();
        assert!(matches!(err, WorkerError::Poison(_)), "{err:?}");
    }
    assert!(out.0.lock().unwrap().is_empty());
    let err = gate
        .handle(&envelope("cmd.gate.eval", json!({"plan": {}})), &out)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("case"), "{err}");
}

#[tokio::test]
async fn a_malformed_plan_is_a_rejection_not_poison() {
    let gate = Gatekeeper::new(PolicySource::builtin());
    let (event, data) = run(&gate, &command("t", json!({"steps": []}))).await;
    assert_eq!(event.kind, "evt.plan.rejected.v1");
    assert_eq!(data.rule, "plan_invalid");
}

#[tokio::test]
async fn publish_errors_are_retried() {
    let gate = Gatekeeper::new(PolicySource::builtin());
    let err = gate
        .handle(&command("t", plan(Some(0.1), &["noop"])), &Down)
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::Retry(_)), "{err:?}");
}
