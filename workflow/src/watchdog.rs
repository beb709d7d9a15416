//! The watchdog's rules: when a case that waits on a worker has sat too long without progress,
//! and what to do about it. Pure: the orchestrator observes a case and applies the verdict.
//!
//! A stall is first noted (with a redelivery of the command the case waits for, when there is
//! one); if the case still makes no progress for another bound, the state's failure event parks
//! it with the reason. A case that waits for a person rather than a worker is only noted.

use std::time::Duration;

use serde_json::Value;

use crate::{Event, Status};

/// What the watchdog sees of a case.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub status: Status,
    /// Time since the case's last progress: its last timeline row other than a watchdog note.
    pub idle: Duration,
    /// Time since the watchdog noted this stall, when it did (a note after the last progress).
    pub noted: Option<Duration>,
    /// A command sent to a worker in this state that the worker has not answered.
    pub command_pending: bool,
    /// How long the case may go without progress in this state (see [`bound`]).
    pub bound: Duration,
}

/// What to do about a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not stalled, or noted already and waiting for a person.
    Fine,
    /// Stalled: note it on the timeline (and count it); deliver the pending command again.
    Note { redeliver: bool },
    /// Still stalled a bound after the note, waiting on a worker: park the case with this event.
    Fail(Event),
}

/// The states in which a case waits on a worker (WAIT_GATE only while a gate command is
/// pending; otherwise it waits for an approver; ANALYZING likewise only while an analysis is
/// pending, since a manual case waits there for a person).
pub const WATCHED: [Status; 5] = [
    Status::Analyzing,
    Status::Planning,
    Status::WaitGate,
    Status::Executing,
    Status::Verifying,
];

pub fn watch(case: &Observation) -> Verdict {
    if !WATCHED.contains(&case.status)
        || (matches!(case.status, Status::WaitGate | Status::Analyzing) && !case.command_pending)
        || case.idle < case.bound
    {
        return Verdict::Fine;
    }
    match case.noted {
        None => Verdict::Note {
            redeliver: case.command_pending,
        },
        Some(since) if since >= case.bound && case.command_pending => {
            failure_event(case.status).map_or(Verdict::Fine, Verdict::Fail)
        }
        Some(_) => Verdict::Fine,
    }
}

/// The event that parks a case stalled in `status`, when a worker failed to answer.
pub fn failure_event(status: Status) -> Option<Event> {
    match status {
        // An analysis is advice: one that never comes must not hold the remedy up, so the
        // case goes on to planning without findings (the note says why).
        Status::Analyzing => Some(Event::AnalysisDone),
        Status::Planning => Some(Event::PlanFailed),
        Status::WaitGate => Some(Event::GateRejected),
        Status::Executing => Some(Event::ExecFailed),
        Status::Verifying => Some(Event::VerifyFailed),
        _ => None,
    }
}

/// How long a case in `status` may go without progress: `base`, plus what the current plan
/// itself may take there without a word: every step and rollback step run to its last attempt
/// while executing (each attempt reports, but a hung adapter may not), every evaluation but the
/// first waited for while verifying (the verifier's default interval is 60 s).
pub fn bound(status: Status, plan: Option<&Value>, base: Duration) -> Duration {
    let Some(plan) = plan else {
        return base;
    };
    let extra = match status {
        Status::Executing => {
            let steps = plan["steps"].as_array().into_iter().flatten();
            let rollback = plan["rollback"]["steps"].as_array().into_iter().flatten();
            steps
                .chain(rollback)
                .map(|step| {
                    let timeout = step["timeout_s"].as_u64().unwrap_or(0);
                    let attempts = step["retry"].as_u64().unwrap_or(0) + 1;
                    timeout.saturating_mul(attempts)
                })
                .fold(0u64, u64::saturating_add)
        }
        Status::Verifying => {
            let verify = &plan["verify"];
            let count = verify["count"].as_u64().unwrap_or(1).max(1);
            let interval = verify["interval_s"].as_u64().unwrap_or(60);
            (count - 1).saturating_mul(interval)
        }
        _ => 0,
    };
    base.saturating_add(Duration::from_secs(extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOUND: Duration = Duration::from_secs(600);

    fn observe(status: Status, idle: u64, noted: Option<u64>, pending: bool) -> Verdict {
        watch(&Observation {
            status,
            idle: Duration::from_secs(idle),
            noted: noted.map(Duration::from_secs),
            command_pending: pending,
            bound: BOUND,
        })
    }

    #[test]
    fn a_stall_is_noted_with_a_redelivery_then_failed_a_bound_later() {
        assert_eq!(observe(Status::Executing, 599, None, true), Verdict::Fine);
        assert_eq!(
            observe(Status::Executing, 600, None, true),
            Verdict::Note { redeliver: true }
        );
        assert_eq!(
            observe(Status::Executing, 900, Some(300), true),
            Verdict::Fine
        );
        assert_eq!(
            observe(Status::Executing, 1200, Some(600), true),
            Verdict::Fail(Event::ExecFailed)
        );
        assert_eq!(
            observe(Status::Verifying, 1200, Some(600), true),
            Verdict::Fail(Event::VerifyFailed)
        );
        assert_eq!(
            observe(Status::Planning, 1200, Some(600), true),
            Verdict::Fail(Event::PlanFailed)
        );
        assert_eq!(
            observe(Status::WaitGate, 1200, Some(600), true),
            Verdict::Fail(Event::GateRejected)
        );
    }

    #[test]
    fn a_case_waiting_for_a_person_is_noted_once_and_never_failed() {
        assert_eq!(
            observe(Status::Executing, 600, None, false),
            Verdict::Note { redeliver: false }
        );
        assert_eq!(
            observe(Status::Executing, 6000, Some(5400), false),
            Verdict::Fine
        );
        // At the gate, without a pending command, the case waits for an approver.
        assert_eq!(observe(Status::WaitGate, 6000, None, false), Verdict::Fine);
    }

    #[test]
    fn a_stalled_analysis_goes_on_to_planning_and_a_manual_one_waits() {
        assert_eq!(
            observe(Status::Analyzing, 600, None, true),
            Verdict::Note { redeliver: true }
        );
        assert_eq!(
            observe(Status::Analyzing, 1200, Some(600), true),
            Verdict::Fail(Event::AnalysisDone)
        );
        // No analysis asked for: someone analyses by hand.
        assert_eq!(observe(Status::Analyzing, 6000, None, false), Verdict::Fine);
    }

    #[test]
    fn other_states_are_not_watched() {
        for status in [Status::New, Status::Parked, Status::Closed] {
            assert_eq!(
                observe(status, 60_000, None, true),
                Verdict::Fine,
                "{status}"
            );
        }
    }

    #[test]
    fn the_bound_grows_with_what_the_plan_may_take() {
        let plan = json!({
            "steps": [{"timeout_s": 60, "retry": 2}, {"timeout_s": 30}],
            "rollback": {"steps": [{"timeout_s": 10, "retry": 0}]},
            "verify": {"count": 3, "interval_s": 120}
        });
        let base = Duration::from_secs(100);
        assert_eq!(
            bound(Status::Executing, Some(&plan), base),
            Duration::from_secs(100 + 180 + 30 + 10)
        );
        assert_eq!(
            bound(Status::Verifying, Some(&plan), base),
            Duration::from_secs(100 + 240)
        );
        assert_eq!(bound(Status::Planning, Some(&plan), base), base);
        assert_eq!(bound(Status::Executing, None, base), base);
        let default_interval = json!({"verify": {"count": 2}});
        assert_eq!(
            bound(Status::Verifying, Some(&default_interval), base),
            Duration::from_secs(160)
        );
    }
}
