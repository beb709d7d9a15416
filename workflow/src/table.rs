use serde::{Deserialize, Serialize};

use crate::guards::GuardKind;

/// Where a case is in its life. `Closed` is terminal.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    New,
    Analyzing,
    Planning,
    WaitGate,
    Executing,
    Verifying,
    Parked,
    Closed,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::New,
        Status::Analyzing,
        Status::Planning,
        Status::WaitGate,
        Status::Executing,
        Status::Verifying,
        Status::Parked,
        Status::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "NEW",
            Status::Analyzing => "ANALYZING",
            Status::Planning => "PLANNING",
            Status::WaitGate => "WAIT_GATE",
            Status::Executing => "EXECUTING",
            Status::Verifying => "VERIFYING",
            Status::Parked => "PARKED",
            Status::Closed => "CLOSED",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        self == Status::Closed
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What may happen to a case. Each accepted event moves it along one row of [`TRANSITIONS`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    StartAnalysis,
    AnalysisDone,
    PlanReady,
    PlanFailed,
    GateApproved,
    GateRejected,
    ExecDone,
    ExecFailed,
    VerifyPass,
    VerifyFailed,
    Resume,
    Cancel,
}

impl Event {
    pub const ALL: [Event; 12] = [
        Event::StartAnalysis,
        Event::AnalysisDone,
        Event::PlanReady,
        Event::PlanFailed,
        Event::GateApproved,
        Event::GateRejected,
        Event::ExecDone,
        Event::ExecFailed,
        Event::VerifyPass,
        Event::VerifyFailed,
        Event::Resume,
        Event::Cancel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::StartAnalysis => "start_analysis",
            Event::AnalysisDone => "analysis_done",
            Event::PlanReady => "plan_ready",
            Event::PlanFailed => "plan_failed",
            Event::GateApproved => "gate_approved",
            Event::GateRejected => "gate_rejected",
            Event::ExecDone => "exec_done",
            Event::ExecFailed => "exec_failed",
            Event::VerifyPass => "verify_pass",
            Event::VerifyFailed => "verify_failed",
            Event::Resume => "resume",
            Event::Cancel => "cancel",
        }
    }

    pub fn parse(text: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == text)
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The states a row of the table applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Exactly(Status),
    /// Every state except the terminal one (used by `cancel`).
    AnyNonTerminal,
}

impl Source {
    pub fn matches(self, status: Status) -> bool {
        match self {
            Source::Exactly(s) => s == status,
            Source::AnyNonTerminal => !status.is_terminal(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Source,
    pub event: Event,
    pub to: Status,
    pub guard: Option<GuardKind>,
}

const fn row(from: Status, event: Event, to: Status, guard: Option<GuardKind>) -> Transition {
    Transition {
        from: Source::Exactly(from),
        event,
        to,
        guard,
    }
}

/// The whole state machine (DESIGN.md §2). Everything else — `decide`, the README diagram,
/// the allowed events in an error — is derived from this table.
pub const TRANSITIONS: &[Transition] = &[
    row(Status::New, Event::StartAnalysis, Status::Analyzing, None),
    row(
        Status::Analyzing,
        Event::AnalysisDone,
        Status::Planning,
        None,
    ),
    row(
        Status::Planning,
        Event::PlanReady,
        Status::WaitGate,
        Some(GuardKind::PlanComplete),
    ),
    row(
        Status::Planning,
        Event::PlanFailed,
        Status::Parked,
        Some(GuardKind::FailureRecorded),
    ),
    row(
        Status::WaitGate,
        Event::GateApproved,
        Status::Executing,
        Some(GuardKind::ApprovalForCurrentPlan),
    ),
    row(
        Status::WaitGate,
        Event::GateRejected,
        Status::Parked,
        Some(GuardKind::ReasonRequired),
    ),
    row(
        Status::Executing,
        Event::ExecDone,
        Status::Verifying,
        Some(GuardKind::AllStepsSucceeded),
    ),
    row(
        Status::Executing,
        Event::ExecFailed,
        Status::Parked,
        Some(GuardKind::FailureRecorded),
    ),
    row(Status::Verifying, Event::VerifyPass, Status::Closed, None),
    row(
        Status::Verifying,
        Event::VerifyFailed,
        Status::Parked,
        Some(GuardKind::FailureRecorded),
    ),
    row(
        Status::Parked,
        Event::Resume,
        Status::Planning,
        Some(GuardKind::ReasonRequired),
    ),
    Transition {
        from: Source::AnyNonTerminal,
        event: Event::Cancel,
        to: Status::Closed,
        guard: Some(GuardKind::ReasonRequired),
    },
];

/// The row that applies to `event` in `status`, if any.
pub(crate) fn lookup(status: Status, event: Event) -> Option<&'static Transition> {
    TRANSITIONS
        .iter()
        .find(|t| t.event == event && t.from.matches(status))
}

/// Events the table accepts in `status`, in table order.
pub fn allowed_events(status: Status) -> Vec<Event> {
    TRANSITIONS
        .iter()
        .filter(|t| t.from.matches(status))
        .map(|t| t.event)
        .collect()
}
