//! What travels between the orchestrator and the workers: the `data` of each command and of
//! each worker event. Workers are stateless, so a command carries everything its worker needs
//! (the case brief, the plan); an event carries the worker's product back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::machine::StepResult;

pub mod topic {
    pub const ANALYSIS_RUN: &str = "cmd.analysis.run";
    pub const PLAN_GENERATE: &str = "cmd.plan.generate";
    pub const GATE_EVAL: &str = "cmd.gate.eval";
    pub const EXEC_RUN: &str = "cmd.exec.run";
    pub const EXEC_ROLLBACK: &str = "cmd.exec.rollback";
    pub const VERIFY_RUN: &str = "cmd.verify.run";

    /// The analyst's findings about a case (possibly none): ends ANALYZING.
    pub const ANALYSIS_FINDINGS: &str = "evt.analysis.findings.v1";
    /// A model's summary of the findings (a timeline note; the summary is stored beside them).
    pub const ANALYSIS_SUMMARY: &str = "evt.analysis.summary.v1";
    pub const PLAN_PROPOSED: &str = "evt.plan.proposed.v1";
    pub const PLAN_FAILED: &str = "evt.plan.failed.v1";
    pub const PLAN_APPROVED: &str = "evt.plan.approved.v1";
    pub const PLAN_REJECTED: &str = "evt.plan.rejected.v1";
    /// The gate wants a human: the case stays in WAIT_GATE, the decision is recorded.
    pub const PLAN_HELD: &str = "evt.plan.held.v1";
    /// A model's explanation of a held plan's risk, for the approver (a timeline note).
    pub const PLAN_EXPLAINED: &str = "evt.plan.explained.v1";
    pub const STEP_RESULT: &str = "evt.exec.step_result.v1";
    pub const EXEC_DONE: &str = "evt.exec.done.v1";
    pub const EXEC_FAILED: &str = "evt.exec.failed.v1";
    pub const VERIFY_PASS: &str = "evt.verify.pass.v1";
    pub const VERIFY_FAILED: &str = "evt.verify.failed.v1";
}

/// What a worker may know about the case it acts on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseBrief {
    pub id: String,
    pub tenant: String,
    pub title: String,
    pub severity: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub evidence: Vec<Value>,
    /// The case's version when the command was written.
    pub version: i64,
    /// What the analyst found about the case (each a finding as `evt.analysis.findings.v1`
    /// carries it), for the planner; empty when nothing was analysed or nothing found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Value>,
}

/// `cmd.analysis.run`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnalysisCommand {
    pub case: CaseBrief,
    /// Who asked (the transition's actor, or the operator of `POST /v1/analysis/run`).
    pub requested_by: String,
    /// Minutes before now the analysis looks at; the analyst's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_minutes: Option<u32>,
}

/// `evt.analysis.findings.v1`: what one analysis run found, or that it found nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnalysisEvent {
    pub actor: String,
    /// The run (the command's id): its findings are stored under it.
    pub run_id: String,
    /// The service analysed, when the case names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// One line for the timeline: what was found, or that nothing was.
    pub reason: String,
    /// The window looked at: `{"from": ..., "to": ...}`.
    pub window: Value,
    /// Each finding: `kind`, `title`, `score`, `detail`, `evidence`.
    pub findings: Vec<Value>,
    /// The service's downstream dependencies ranked by p95 and error rate over the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Value>,
}

/// `cmd.plan.generate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanCommand {
    pub case: CaseBrief,
    /// Who asked for the plan (it cannot also approve it).
    pub requested_by: String,
    /// A template name; when absent the planner picks one from the case's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Template inputs, e.g. `{"deployment": "checkout", "image": "..."}`.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// What the Librarian found for the case, added by the planner's process before it plans
    /// (the `llm` template shows them to the model); never on the bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<crate::references::References>,
}

/// `cmd.gate.eval`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateCommand {
    pub case: CaseBrief,
    pub plan_id: String,
    pub plan: Value,
    /// Who put the plan forward.
    pub requested_by: String,
}

/// `cmd.exec.run` and `cmd.exec.rollback`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecCommand {
    pub case: CaseBrief,
    pub plan_id: String,
    /// The approved plan: its `steps` run (or, for a rollback, its `rollback.steps`).
    pub plan: Value,
    /// Validate and describe each step without side effects.
    #[serde(default)]
    pub dry_run: bool,
    /// Steps to run in place of the plan's (an ad-hoc step the gate policy allows on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Value>>,
    /// Why a rollback was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `cmd.verify.run`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyCommand {
    pub case: CaseBrief,
    pub plan_id: String,
    /// The plan's `verify` section.
    pub verify: Value,
}

/// `evt.plan.proposed.v1` / `evt.plan.failed.v1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanEvent {
    pub actor: String,
    /// Who asked for the plan (from the command): four eyes keeps them from approving it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Why no plan could be made (`evt.plan.failed.v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Validation errors of a rejected proposal, field by field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Value>,
    /// The model's part when a model proposed (or failed to): `model`, `calls` (each `id`,
    /// `outcome`, `latency_ms`), `attempts`, and `fallback` when a template stood in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<Value>,
    /// What the Librarian found for the case (runbooks, past cases and their rollback
    /// hints), stored with the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<crate::references::References>,
}

/// `evt.plan.approved.v1`, `evt.plan.rejected.v1`, `evt.plan.held.v1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateEvent {
    pub actor: String,
    pub plan_id: String,
    /// The hash of the policy that decided.
    pub policy_rev: String,
    /// The rule that fired (`auto_approve` when none blocked).
    pub rule: String,
    pub reason: String,
    /// What the policy saw: risk score, actions, step count, tenant, time.
    pub inputs: Value,
}

/// `evt.exec.step_result.v1`: one attempt of one step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepAttempt {
    pub actor: String,
    pub plan_id: String,
    pub step: String,
    pub action: String,
    /// `run` or `rollback`.
    pub phase: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// `succeeded`, `failed`, or `planned` for a dry run.
    pub status: String,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Where the whole output was stored (a log locator: `system`, `query`, `from`, `to`),
    /// when the executor ships step output to a log store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_ref: Option<serde_json::Value>,
}

/// `evt.exec.done.v1` / `evt.exec.failed.v1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecEvent {
    pub actor: String,
    pub plan_id: String,
    pub results: Vec<StepResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rollback steps run after the failure, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<StepResult>,
}

/// `evt.verify.pass.v1` / `evt.verify.failed.v1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyEvent {
    pub actor: String,
    pub plan_id: String,
    /// `pass`, `fail` or `inconclusive` (which is published as failed: it fails closed).
    pub verdict: String,
    pub reason: String,
    /// Each check with the numbers it saw.
    pub checks: Vec<Value>,
    /// The checks' common source (`metric_1m`, `prometheus`), `mixed` or `none`.
    #[serde(default)]
    pub source: String,
    /// How long the verification took, windows and intervals included.
    #[serde(default)]
    pub duration_ms: u64,
}
