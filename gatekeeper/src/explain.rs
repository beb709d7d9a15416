//! A model's explanation of a held plan's risk, for the human who must approve it.
//!
//! The gate has decided before this runs, deterministically, and its decision is published
//! first: the explanation follows as `evt.plan.explained.v1`, a timeline note. It never
//! decides, never changes a state, and a slow or failed model only means no explanation.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;
use workflow::messages::GateCommand;

use llm::{JsonRequest, LlmClient, Section};

use crate::decide::Decision;

/// The most an explanation may hold up the gate worker (the decision is out already; this
/// bounds how long the command stays unacknowledged).
pub const EXPLAIN_BUDGET: Duration = Duration::from_secs(20);

const INSTRUCTIONS: &str = "You are a senior SRE reviewing a change plan that opscase's gate \
    held for a human approver. The gate has already decided, by fixed policy rules: you do not \
    decide, approve or reject anything. Explain to the approver, briefly and concretely, what \
    the plan would change, what could go wrong and how far it would reach, how the rollback \
    would undo it, and what to watch while it runs. Cite only what the data shows.";

/// The explanation's schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["summary", "risks", "blast_radius", "rollback", "watch"],
        "additionalProperties": false,
        "properties": {
            "summary": {"type": "string", "minLength": 1, "maxLength": 600},
            "risks": {"type": "array", "maxItems": 8,
                      "items": {"type": "string", "minLength": 1, "maxLength": 300}},
            "blast_radius": {"type": "string", "maxLength": 300},
            "rollback": {"type": "string", "maxLength": 400},
            "watch": {"type": "array", "maxItems": 8,
                      "items": {"type": "string", "minLength": 1, "maxLength": 200}}
        }
    })
}

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::draft202012::new(&schema()).expect("the explanation schema is valid")
});

/// An explanation, or why there is none, as `evt.plan.explained.v1` carries it.
pub struct Explained {
    /// The event's data: `actor`, `reason`, `plan_id`, `explanation` (absent when the model
    /// gave none), `llm` (model, call id, outcome).
    pub data: Value,
}

pub struct Explainer {
    client: Arc<LlmClient>,
}

impl Explainer {
    pub fn new(client: Arc<LlmClient>) -> Self {
        Self { client }
    }

    /// Ask the model about a held plan, within [`EXPLAIN_BUDGET`].
    pub async fn explain(&self, command: &GateCommand, decision: &Decision) -> Explained {
        let case = &command.case;
        let request = JsonRequest {
            purpose: "gate_explanation",
            case_id: Uuid::parse_str(&case.id).ok(),
            instructions: INSTRUCTIONS.into(),
            task: "Explain the held plan's risk to the approver.".into(),
            sections: vec![
                Section::json(
                    "case",
                    &json!({"title": case.title, "severity": case.severity,
                            "tenant": case.tenant, "labels": case.labels}),
                ),
                Section::json("findings", &json!(case.findings)),
                Section::json("plan", &command.plan),
                Section::json(
                    "gate_decision",
                    &json!({"rule": decision.rule, "reason": decision.reason,
                            "inputs": decision.inputs}),
                ),
            ],
            schema_name: "GateExplanation".into(),
            schema: schema(),
        };
        let actor = format!("gatekeeper/llm:{}", self.client.model());
        let outcome = tokio::time::timeout(EXPLAIN_BUDGET, self.client.json(&request, &[])).await;
        let (explanation, llm, reason) = match outcome {
            Err(_) => (
                None,
                json!({"model": self.client.model(), "outcome": "timeout"}),
                format!("no explanation: the model took longer than {EXPLAIN_BUDGET:?}"),
            ),
            Ok(Err(error)) => (
                None,
                json!({"model": self.client.model(), "call_id": error.call_id(),
                       "outcome": "error"}),
                format!("no explanation: {error}"),
            ),
            Ok(Ok(answer)) => {
                let problems: Vec<String> = VALIDATOR
                    .iter_errors(&answer.value)
                    .map(|e| format!("{}: {e}", e.instance_path))
                    .collect();
                let llm = json!({"model": answer.model, "call_id": answer.call_id});
                if problems.is_empty() {
                    let summary = answer.value["summary"].as_str().unwrap_or_default();
                    let reason = format!("risk explained for the approver: {summary}");
                    (Some(answer.value), with(llm, "ok"), reason)
                } else {
                    let reason = format!(
                        "no explanation: the model's answer did not fit its schema ({})",
                        problems.join("; ")
                    );
                    (None, with(llm, "invalid"), reason)
                }
            }
        };
        let mut data = json!({
            "actor": actor,
            "reason": reason,
            "plan_id": command.plan_id,
            "llm": llm,
        });
        if let Some(explanation) = explanation {
            data["explanation"] = explanation;
        }
        Explained { data }
    }
}

fn with(mut llm: Value, outcome: &str) -> Value {
    llm["outcome"] = json!(outcome);
    llm
}
