//! The decision: a pure function of the policy, the tenant, the plan and the time.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use workflow::messages::{topic, GateEvent};

use crate::policy::{Limits, Policy};

/// What the gate is asked about.
#[derive(Debug, Clone, Copy)]
pub struct GateInput<'a> {
    /// The case's tenant (selects `[[tenant]]` overrides and tenant-scoped freezes).
    pub tenant: &'a str,
    /// The ChangePlan (JSON): `risk_score`, `steps[].action`, `rollback.steps[].action`.
    pub plan: &'a Value,
    pub now: DateTime<Utc>,
}

/// The three answers of the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Auto-approved by policy.
    Approve,
    /// Needs a human approver; the case waits.
    Hold,
    /// Refused; the case parks with the rule that fired.
    Reject,
}

impl Outcome {
    /// The event topic that carries this outcome.
    pub fn topic(self) -> &'static str {
        match self {
            Outcome::Approve => topic::PLAN_APPROVED,
            Outcome::Hold => topic::PLAN_HELD,
            Outcome::Reject => topic::PLAN_REJECTED,
        }
    }
}

/// A gate decision with the rule that fired, a sentence with the numbers, and what it saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// `plan_invalid`, `forbidden_actions`, `freeze:<name>`, `max_steps`, `human_actions`,
    /// `max_auto_risk` or `auto_approve`; for ad-hoc steps also `adhoc.step_invalid`,
    /// `adhoc.allow_scripts`, `adhoc.allow_actions`.
    pub rule: String,
    pub reason: String,
    /// What the policy saw: tenant, time, risk score, actions, step count, active freezes,
    /// effective limits.
    pub inputs: Value,
}

impl Decision {
    /// The `evt.plan.*` data for this decision.
    pub fn to_event(&self, plan_id: &str, policy_rev: &str) -> GateEvent {
        GateEvent {
            actor: crate::ROLE.to_string(),
            plan_id: plan_id.to_string(),
            policy_rev: policy_rev.to_string(),
            rule: self.rule.clone(),
            reason: self.reason.clone(),
            inputs: self.inputs.clone(),
        }
    }
}

/// One step as the gate sees it.
struct StepView {
    label: String,
    action: String,
}

fn timestamp(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// Steps of `value` (an array of step objects); `prefix` is `step` or `rollback step`.
fn steps_of(value: &Value, prefix: &str, path: &str) -> Result<Vec<StepView>, String> {
    let Some(items) = value.as_array() else {
        return Err(format!("{path} is not an array"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let Some(action) = step.get("action").and_then(Value::as_str) else {
                return Err(format!("{path}[{i}] has no action"));
            };
            let label = match step.get("id").and_then(Value::as_str) {
                Some(id) => format!("{prefix} {} {id:?} ({action})", i + 1),
                None => format!("{prefix} {} ({action})", i + 1),
            };
            Ok(StepView {
                label,
                action: action.to_string(),
            })
        })
        .collect()
}

/// The parts of the plan the rules look at.
struct PlanView {
    steps: Vec<StepView>,
    rollback: Vec<StepView>,
    risk: f64,
    risk_source: &'static str,
}

fn view(plan: &Value) -> Result<PlanView, String> {
    if !plan.is_object() {
        return Err("the plan is not a JSON object".into());
    }
    let steps = match plan.get("steps") {
        None => return Err("the plan has no steps".into()),
        Some(v) => steps_of(v, "step", "steps")?,
    };
    if steps.is_empty() {
        return Err("the plan has no steps".into());
    }
    let rollback = match plan.get("rollback").and_then(|r| r.get("steps")) {
        None => Vec::new(),
        Some(v) => steps_of(v, "rollback step", "rollback.steps")?,
    };
    let (risk, risk_source) = match plan.get("risk_score") {
        Some(v) => match v.as_f64() {
            Some(r) if (0.0..=1.0).contains(&r) => (r, "plan"),
            _ => return Err(format!("risk_score {v} is not a number between 0 and 1")),
        },
        None if steps.iter().chain(&rollback).all(|s| s.action == "noop") => {
            (0.0, "default: no risk_score, only noop steps")
        }
        None => (1.0, "default: no risk_score"),
    };
    Ok(PlanView {
        steps,
        rollback,
        risk,
        risk_source,
    })
}

/// Decide on a plan. Precedence: `plan_invalid` (reject) → `forbidden_actions` (reject) →
/// `freeze:<name>` (reject) → `max_steps` (reject) → `human_actions` (hold) →
/// `max_auto_risk` (hold) → `auto_approve`. Tenant overrides apply first.
pub fn evaluate(policy: &Policy, input: &GateInput<'_>) -> Decision {
    let limits = policy.limits_for(input.tenant);
    let freezes = policy.active_freezes(input.tenant, input.now);
    let freeze_names: Vec<&str> = freezes.iter().map(|f| f.name.as_str()).collect();
    let mut inputs = json!({
        "tenant": input.tenant,
        "now": timestamp(input.now),
        "active_freezes": freeze_names,
        "limits": limits,
    });

    let plan = match view(input.plan) {
        Ok(plan) => plan,
        Err(reason) => {
            return Decision {
                outcome: Outcome::Reject,
                rule: "plan_invalid".into(),
                reason,
                inputs,
            }
        }
    };
    let actions: Vec<&str> = plan.steps.iter().map(|s| s.action.as_str()).collect();
    let rollback_actions: Vec<&str> = plan.rollback.iter().map(|s| s.action.as_str()).collect();
    inputs["risk_score"] = json!(plan.risk);
    inputs["risk_score_source"] = json!(plan.risk_source);
    inputs["step_count"] = json!(plan.steps.len());
    inputs["actions"] = json!(actions);
    inputs["rollback_actions"] = json!(rollback_actions);

    let decide = |outcome, rule: &str, reason: String, inputs: Value| Decision {
        outcome,
        rule: rule.to_string(),
        reason,
        inputs,
    };
    let all_steps = || plan.steps.iter().chain(&plan.rollback);
    let matching = |names: &[String]| -> Vec<&str> {
        all_steps()
            .filter(|s| names.contains(&s.action))
            .map(|s| s.label.as_str())
            .collect()
    };

    let forbidden = matching(&limits.forbidden_actions);
    if !forbidden.is_empty() {
        let reason = format!(
            "{} uses a forbidden action (forbidden_actions{}: {})",
            forbidden.join(", "),
            limits.origin_of("forbidden_actions"),
            list(&limits.forbidden_actions)
        );
        return decide(Outcome::Reject, "forbidden_actions", reason, inputs);
    }

    if let Some(freeze) = freezes.first() {
        let reason = format!(
            "change freeze {:?} is active for tenant {} ({}); now {}",
            freeze.name,
            input.tenant,
            freeze.describe(),
            timestamp(input.now)
        );
        return decide(Outcome::Reject, &freeze.rule(), reason, inputs);
    }

    if plan.steps.len() > limits.max_steps {
        let reason = format!(
            "{} steps > max_steps {}{}",
            plan.steps.len(),
            limits.max_steps,
            limits.origin_of("max_steps")
        );
        return decide(Outcome::Reject, "max_steps", reason, inputs);
    }

    let human = matching(&limits.human_actions);
    if !human.is_empty() {
        let reason = format!(
            "{} needs a human (human_actions{}: {})",
            human.join(", "),
            limits.origin_of("human_actions"),
            list(&limits.human_actions)
        );
        return decide(Outcome::Hold, "human_actions", reason, inputs);
    }

    let risk_note = if plan.risk_source == "plan" {
        ""
    } else if plan.risk > 0.0 {
        " (the plan has no risk_score)"
    } else {
        " (no risk_score, only noop steps)"
    };
    if plan.risk > limits.max_auto_risk {
        let reason = format!(
            "risk {}{risk_note} > max_auto_risk {}{}",
            plan.risk,
            limits.max_auto_risk,
            limits.origin_of("max_auto_risk")
        );
        return decide(Outcome::Hold, "max_auto_risk", reason, inputs);
    }

    let reason = format!(
        "risk {}{risk_note} <= max_auto_risk {}{}, {} steps <= max_steps {}; no forbidden or human-only action, no active freeze",
        plan.risk,
        limits.max_auto_risk,
        limits.origin_of("max_auto_risk"),
        plan.steps.len(),
        limits.max_steps
    );
    decide(Outcome::Approve, "auto_approve", reason, inputs)
}

/// May `step` (one ChangePlan step: `action`, `params`) run ad hoc, on its own, for `tenant`
/// at `now`? Forbidden actions (`forbidden_actions`, tenant overrides applied) and active
/// freezes (`freeze:<name>`) block it; then it runs only when its action is in
/// `adhoc.allow_actions`, or it is `script.exec` with `params.script` in
/// `adhoc.allow_scripts` (else `adhoc.allow_actions` / `adhoc.allow_scripts`). The `Err` is a
/// reject decision naming the rule.
pub fn evaluate_adhoc(
    policy: &Policy,
    tenant: &str,
    step: &Value,
    now: DateTime<Utc>,
) -> Result<(), Decision> {
    let limits: Limits = policy.limits_for(tenant);
    let freezes = policy.active_freezes(tenant, now);
    let action = step.get("action").and_then(Value::as_str);
    let script = step
        .get("params")
        .and_then(|p| p.get("script"))
        .and_then(Value::as_str);
    let freeze_names: Vec<&str> = freezes.iter().map(|f| f.name.as_str()).collect();
    let inputs = json!({
        "tenant": tenant,
        "now": timestamp(now),
        "action": action,
        "script": script,
        "active_freezes": freeze_names,
        "limits": {
            "tenant_rule": limits.tenant_rule,
            "forbidden_actions": limits.forbidden_actions,
            "adhoc": policy.adhoc,
        },
    });
    let reject = |rule: &str, reason: String| {
        Err(Decision {
            outcome: Outcome::Reject,
            rule: rule.to_string(),
            reason,
            inputs: inputs.clone(),
        })
    };

    let Some(action) = action else {
        return reject("adhoc.step_invalid", "the step has no action".into());
    };
    if limits.forbidden_actions.iter().any(|a| a == action) {
        return reject(
            "forbidden_actions",
            format!(
                "action {action} is forbidden (forbidden_actions{}: {})",
                limits.origin_of("forbidden_actions"),
                list(&limits.forbidden_actions)
            ),
        );
    }
    if let Some(freeze) = freezes.first() {
        return reject(
            &freeze.rule(),
            format!(
                "change freeze {:?} is active for tenant {tenant} ({}); now {}",
                freeze.name,
                freeze.describe(),
                timestamp(now)
            ),
        );
    }
    if policy.adhoc.allow_actions.iter().any(|a| a == action) {
        return Ok(());
    }
    if action == "script.exec" {
        return match script {
            Some(s) if policy.adhoc.allow_scripts.iter().any(|a| a == s) => Ok(()),
            Some(s) => reject(
                "adhoc.allow_scripts",
                format!(
                    "script {s:?} is not in adhoc.allow_scripts {}",
                    list(&policy.adhoc.allow_scripts)
                ),
            ),
            None => reject(
                "adhoc.allow_scripts",
                "the script.exec step has no params.script".into(),
            ),
        };
    }
    reject(
        "adhoc.allow_actions",
        format!(
            "action {action} may not run ad hoc (adhoc.allow_actions: {}; script.exec only with adhoc.allow_scripts: {})",
            list(&policy.adhoc.allow_actions),
            list(&policy.adhoc.allow_scripts)
        ),
    )
}
