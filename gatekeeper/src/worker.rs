//! The gatekeeper worker: `cmd.gate.eval` in, one `evt.plan.approved.v1` /
//! `evt.plan.rejected.v1` / `evt.plan.held.v1` out.

use std::sync::Arc;

use async_trait::async_trait;
use bus::{Envelope, Publisher, Worker, WorkerError};
use chrono::{DateTime, Utc};
use workflow::messages::{topic, GateCommand, GateEvent};

use crate::decide::{evaluate, Decision, GateInput, Outcome};
use crate::explain::Explainer;
use crate::source::PolicySource;

/// The worker role name (also the `actor` of its events).
pub const ROLE: &str = "gatekeeper";
/// The default CloudEvents `source` of its events.
pub const SOURCE: &str = "opscase/gatekeeper";

/// The gate worker: evaluates each `cmd.gate.eval` against the current policy; with a model
/// configured, a held plan's risk is then explained for the approver.
#[derive(Clone)]
pub struct Gatekeeper {
    policy: PolicySource,
    source: String,
    explainer: Option<Arc<Explainer>>,
}

impl std::fmt::Debug for Gatekeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gatekeeper")
            .field("policy", &self.policy)
            .field("source", &self.source)
            .field("explainer", &self.explainer.is_some())
            .finish()
    }
}

impl Gatekeeper {
    /// A gatekeeper publishing as [`SOURCE`].
    pub fn new(policy: PolicySource) -> Gatekeeper {
        Gatekeeper::with_source(policy, SOURCE)
    }

    /// A gatekeeper publishing with another CloudEvents `source`.
    pub fn with_source(policy: PolicySource, source: impl Into<String>) -> Gatekeeper {
        Gatekeeper {
            policy,
            source: source.into(),
            explainer: None,
        }
    }

    /// Explain held plans to their approver with `explainer`.
    pub fn with_explainer(mut self, explainer: Arc<Explainer>) -> Gatekeeper {
        self.explainer = Some(explainer);
        self
    }

    /// Its policy source (shared: the API may use it for ad-hoc checks).
    pub fn policy(&self) -> &PolicySource {
        &self.policy
    }

    /// Decide on a command at `now`: the decision and the event data carrying it.
    pub fn decide(&self, command: &GateCommand, now: DateTime<Utc>) -> (Decision, GateEvent) {
        let policy = self.policy.current();
        let mut decision = evaluate(
            &policy,
            &GateInput {
                tenant: &command.case.tenant,
                plan: &command.plan,
                now,
            },
        );
        decision.inputs["requested_by"] = command.requested_by.clone().into();
        let event = decision.to_event(&command.plan_id, &policy.rev);
        (decision, event)
    }
}

#[async_trait]
impl Worker for Gatekeeper {
    fn role(&self) -> &'static str {
        ROLE
    }

    fn commands(&self) -> &'static [&'static str] {
        &[topic::GATE_EVAL]
    }

    async fn handle(&self, command: &Envelope, out: &dyn Publisher) -> Result<(), WorkerError> {
        if command.kind != topic::GATE_EVAL {
            return Err(WorkerError::Poison(format!(
                "the gatekeeper does not take {}",
                command.kind
            )));
        }
        let gate: GateCommand = serde_path_to_error::deserialize(&command.data).map_err(|e| {
            WorkerError::Poison(format!(
                "{} data at {}: {}",
                topic::GATE_EVAL,
                e.path(),
                e.inner()
            ))
        })?;
        if gate.plan_id.is_empty() {
            return Err(WorkerError::Poison(format!(
                "{} data has an empty plan_id",
                topic::GATE_EVAL
            )));
        }
        let (decision, event) = self.decide(&gate, Utc::now());
        tracing::info!(
            case_id = %command.subject,
            plan_id = %gate.plan_id,
            tenant = %gate.case.tenant,
            outcome = ?decision.outcome,
            rule = %decision.rule,
            policy_rev = %event.policy_rev,
            reason = %decision.reason,
            "gate decision"
        );
        let data = serde_json::to_value(&event)
            .map_err(|e| WorkerError::Poison(format!("gate event does not serialize: {e}")))?;
        let answer = bus::answer(command, &self.source, decision.outcome.topic(), "", data);
        out.publish(answer).await.map_err(|e| {
            WorkerError::Retry(format!("publishing {}: {e}", decision.outcome.topic()))
        })?;
        // The decision is out; an explanation, if any, follows it.
        if let (Some(explainer), Outcome::Hold) = (&self.explainer, decision.outcome) {
            let explained = explainer.explain(&gate, &decision).await;
            let note = bus::answer(
                command,
                &self.source,
                topic::PLAN_EXPLAINED,
                "",
                explained.data,
            );
            if let Err(error) = out.publish(note).await {
                tracing::warn!(case_id = %command.subject, %error,
                    "the plan's explanation was not published");
            }
        }
        Ok(())
    }
}
