use serde::Serialize;

/// The named guards of the transition table.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    /// `plan_ready`: a proposed plan that passes the ChangePlan schema and completeness checks.
    PlanComplete,
    /// `gate_approved`: an approval decision for the current plan, by someone other than its
    /// requester.
    ApprovalForCurrentPlan,
    /// `gate_rejected`, `resume`, `cancel`: a non-empty reason.
    ReasonRequired,
    /// `exec_done`: no reported step failed.
    AllStepsSucceeded,
    /// `exec_failed`, `verify_failed`: a reason or a failed result says what went wrong.
    FailureRecorded,
}

impl GuardKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardKind::PlanComplete => "plan_complete",
            GuardKind::ApprovalForCurrentPlan => "approval_for_current_plan",
            GuardKind::ReasonRequired => "reason_required",
            GuardKind::AllStepsSucceeded => "all_steps_succeeded",
            GuardKind::FailureRecorded => "failure_recorded",
        }
    }

    /// One line for the README diagram and error messages.
    pub fn describe(self) -> &'static str {
        match self {
            GuardKind::PlanComplete => "complete plan",
            GuardKind::ApprovalForCurrentPlan => "approval of current plan",
            GuardKind::ReasonRequired => "reason",
            GuardKind::AllStepsSucceeded => "all steps succeeded",
            GuardKind::FailureRecorded => "failure recorded",
        }
    }
}

/// Why a guard refused a transition: which guard, which input field, and what is wrong.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardFailure {
    pub guard: GuardKind,
    pub field: String,
    pub message: String,
}

impl GuardFailure {
    pub fn new(guard: GuardKind, field: String, message: String) -> Self {
        Self {
            guard,
            field,
            message,
        }
    }
}
