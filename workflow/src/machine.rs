use serde::Serialize;
use serde_json::Value;

use crate::guards::{GuardFailure, GuardKind};
use crate::plan::check_change_plan;
use crate::table::{allowed_events, lookup, Event, Status};
use crate::{TOPIC_CASE_OUTCOME, TOPIC_CASE_TRANSITION};

/// What the state machine needs to know about a case to judge an event.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseView {
    pub status: Status,
    pub version: i64,
    /// `automation: auto`: entering a working state also issues the command that does the work.
    pub auto: bool,
    pub current_plan: Option<PlanRef>,
}

/// The plan a case is currently working on, and who put it forward (for four eyes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRef {
    pub id: String,
    pub requested_by: String,
}

/// An event with everything it carries.
#[derive(Debug, Clone, Default)]
pub struct EventInput {
    pub actor: String,
    pub reason: Option<String>,
    /// `plan_ready`: the proposed ChangePlan.
    pub plan: Option<Value>,
    /// `gate_approved`: who approves which plan.
    pub approval: Option<ApprovalInput>,
    /// `exec_done` / `exec_failed`: per-step outcomes, when the reporter has them.
    pub results: Vec<StepResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalInput {
    /// The plan being approved; when absent, the case's current plan is meant.
    pub plan_id: Option<String>,
    pub approver: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StepResult {
    pub step: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    Skipped,
}

/// How a closed case ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Resolved,
    Cancelled,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Resolved => "resolved",
            Resolution::Cancelled => "cancelled",
        }
    }
}

/// What the caller must write, in the same transaction as the status change.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Store the validated plan as the case's current plan, requested by the event's actor.
    RecordPlan { plan: Value },
    /// Store the gate's decision on the current plan.
    RecordDecision {
        plan_id: String,
        approved: bool,
        decided_by: String,
    },
    /// Append an outbox message on this topic.
    Publish { topic: &'static str },
}

/// An accepted event: the new status and version, and the effects to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub from: Status,
    pub to: Status,
    pub version: i64,
    pub resolution: Option<Resolution>,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IllegalTransition {
    pub from: Status,
    pub event: Event,
    pub allowed: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The table has no row for this event in this state: nothing is written.
    Illegal(IllegalTransition),
    /// The row exists but its guard refused: the attempt is recorded, the state is unchanged.
    Guard {
        from: Status,
        to: Status,
        failures: Vec<GuardFailure>,
    },
}

/// The target state of `event` in `status`, or why there is none.
pub fn decide(status: Status, event: Event) -> Result<Status, IllegalTransition> {
    lookup(status, event)
        .map(|t| t.to)
        .ok_or_else(|| IllegalTransition {
            from: status,
            event,
            allowed: allowed_events(status),
        })
}

/// Judge `event` against `case`: the table, then the row's guard, then the effects.
pub fn evaluate(case: &CaseView, event: Event, input: &EventInput) -> Result<Accepted, Rejection> {
    let row = lookup(case.status, event).ok_or_else(|| {
        Rejection::Illegal(IllegalTransition {
            from: case.status,
            event,
            allowed: allowed_events(case.status),
        })
    })?;
    if let Some(guard) = row.guard {
        let failures = check_guard(guard, case, input);
        if !failures.is_empty() {
            return Err(Rejection::Guard {
                from: case.status,
                to: row.to,
                failures,
            });
        }
    }
    Ok(Accepted {
        from: case.status,
        to: row.to,
        version: case.version + 1,
        resolution: resolution_of(event, row.to),
        effects: effects_of(case, event, row.to, input),
    })
}

fn check_guard(guard: GuardKind, case: &CaseView, input: &EventInput) -> Vec<GuardFailure> {
    let fail = |field: &str, message: String| vec![GuardFailure::new(guard, field.into(), message)];
    match guard {
        GuardKind::PlanComplete => match &input.plan {
            None => fail(
                "plan",
                "plan_ready needs the proposed ChangePlan in `plan`".into(),
            ),
            Some(plan) => check_change_plan(plan),
        },
        GuardKind::ApprovalForCurrentPlan => {
            let Some(approval) = &input.approval else {
                return fail(
                    "decision",
                    "gate_approved needs an approval `decision` for the current plan".into(),
                );
            };
            let Some(current) = &case.current_plan else {
                return fail(
                    "decision.plan_id",
                    "the case has no proposed plan to approve".into(),
                );
            };
            if let Some(plan_id) = approval.plan_id.as_deref().filter(|id| *id != current.id) {
                return fail(
                    "decision.plan_id",
                    format!("plan {plan_id} is not the current plan {}", current.id),
                );
            }
            if approval.approver.trim().is_empty() {
                return fail("decision.approver", "the approver is empty".into());
            }
            if approval.approver == current.requested_by {
                return fail(
                    "decision.approver",
                    format!(
                        "{} requested this plan and cannot also approve it (four eyes)",
                        approval.approver
                    ),
                );
            }
            vec![]
        }
        GuardKind::ReasonRequired => {
            if has_text(&input.reason) {
                vec![]
            } else {
                fail("reason", "this event needs a non-empty `reason`".into())
            }
        }
        GuardKind::AllStepsSucceeded => input
            .results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == StepStatus::Failed)
            .map(|(i, r)| {
                GuardFailure::new(
                    guard,
                    format!("results[{i}].status"),
                    format!("step {} failed; report exec_failed instead", r.step),
                )
            })
            .collect(),
        GuardKind::FailureRecorded => {
            let failed_step = input.results.iter().any(|r| r.status == StepStatus::Failed);
            if has_text(&input.reason) || failed_step {
                vec![]
            } else {
                fail(
                    "reason",
                    "a failure needs a `reason` or a failed step in `results`".into(),
                )
            }
        }
    }
}

fn has_text(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|s| !s.trim().is_empty())
}

fn resolution_of(event: Event, to: Status) -> Option<Resolution> {
    match (event, to) {
        (Event::Cancel, _) => Some(Resolution::Cancelled),
        (_, Status::Closed) => Some(Resolution::Resolved),
        _ => None,
    }
}

fn effects_of(case: &CaseView, event: Event, to: Status, input: &EventInput) -> Vec<Effect> {
    let mut effects = Vec::new();
    match event {
        Event::PlanReady => effects.push(Effect::RecordPlan {
            plan: input.plan.clone().unwrap_or_default(),
        }),
        Event::GateApproved | Event::GateRejected => {
            if let Some(plan) = &case.current_plan {
                let decided_by = input
                    .approval
                    .as_ref()
                    .map_or_else(|| input.actor.clone(), |a| a.approver.clone());
                effects.push(Effect::RecordDecision {
                    plan_id: plan.id.clone(),
                    approved: event == Event::GateApproved,
                    decided_by,
                });
            }
        }
        _ => {}
    }
    effects.push(Effect::Publish {
        topic: TOPIC_CASE_TRANSITION,
    });
    if matches!(to, Status::Closed | Status::Parked) {
        effects.push(Effect::Publish {
            topic: TOPIC_CASE_OUTCOME,
        });
    }
    if case.auto {
        if let Some(topic) = command_on_entering(to) {
            effects.push(Effect::Publish { topic });
        }
    }
    effects
}

/// In `auto` mode, entering these states asks the matching worker to act.
fn command_on_entering(status: Status) -> Option<&'static str> {
    match status {
        Status::Analyzing => Some("cmd.analysis.run"),
        Status::Planning => Some("cmd.plan.generate"),
        Status::WaitGate => Some("cmd.gate.eval"),
        Status::Executing => Some("cmd.exec.run"),
        Status::Verifying => Some("cmd.verify.run"),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
