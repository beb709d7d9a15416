//! The case state machine of opscase, as pure functions over data.
//!
//! Nothing here performs I/O or awaits: the orchestrator feeds a snapshot of a case and an
//! event in, and gets back either a rejection or the accepted transition with the effects it
//! must write (plan, decision, outbox topics) inside its database transaction.

pub mod adapters;
mod diagram;
mod guards;
pub mod integer;
mod machine;
pub mod messages;
pub mod plan;
pub mod references;
mod table;
pub mod watchdog;

pub use diagram::mermaid_state_diagram;
pub use guards::{GuardFailure, GuardKind};
pub use machine::{
    decide, evaluate, Accepted, ApprovalInput, CaseView, Effect, EventInput, IllegalTransition,
    PlanRef, Rejection, Resolution, StepResult, StepStatus,
};
pub use table::{allowed_events, Event, Source, Status, Transition, TRANSITIONS};

/// Topic of the fact that every accepted transition publishes.
pub const TOPIC_CASE_TRANSITION: &str = "evt.case.transition.v1";

/// Topic of the fact published beside it when a case enters CLOSED or PARKED (same payload):
/// the case has an outcome to learn from (the Librarian writes it down).
pub const TOPIC_CASE_OUTCOME: &str = "evt.case.outcome.v1";
