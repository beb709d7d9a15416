//! Which case a signal belongs to, as a pure decision over what the store holds of its group.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use workflow::Status as CaseStatus;

use crate::route::{OnResolved, Route};
use crate::signal::Status;

/// A group as the store keeps it: the case it feeds now, its alerts still firing, and when a
/// signal last touched it.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub case_id: Option<Uuid>,
    pub firing: BTreeSet<String>,
    pub touched_at: Option<DateTime<Utc>>,
}

/// What the signal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The same alert state delivered again: nothing is written (it is counted).
    Duplicate,
    /// No open case for the group within the window: open one.
    Open,
    /// The group's case is open and was touched within the window: a timeline row there.
    Join(Uuid),
    /// The alert resolved: a row on its case, and the case cancelled when `cancel`.
    Resolve { case_id: Uuid, cancel: bool },
    /// Someone acknowledged it: a row on its case.
    Acknowledge(Uuid),
    /// Nothing open to tell: kept as an envelope only.
    Record,
}

/// States a signal may cancel a case in: it has not started executing.
const CANCELLABLE: [CaseStatus; 4] = [
    CaseStatus::New,
    CaseStatus::Analyzing,
    CaseStatus::Planning,
    CaseStatus::WaitGate,
];

/// Decide for one signal of the group, and say which of the group's alerts fire afterwards.
/// `case` is the status of the group's case (`None`: it has none, or it is gone).
pub fn decide(
    status: Status,
    fingerprint: &str,
    duplicate: bool,
    route: &Route,
    group: &Group,
    case: Option<CaseStatus>,
    now: DateTime<Utc>,
) -> (Decision, BTreeSet<String>) {
    let mut firing = group.firing.clone();
    if duplicate {
        return (Decision::Duplicate, firing);
    }
    let open_case = match (group.case_id, case) {
        (Some(id), Some(status)) if status != CaseStatus::Closed => Some((id, status)),
        _ => None,
    };
    let within_window = group.touched_at.is_some_and(|touched| {
        (now - touched)
            .to_std()
            .map_or(true, |age| age <= route.window)
    });
    match status {
        Status::Firing => match open_case {
            Some((id, _)) if within_window => {
                firing.insert(fingerprint.to_string());
                (Decision::Join(id), firing)
            }
            _ => (Decision::Open, BTreeSet::from([fingerprint.to_string()])),
        },
        Status::Resolved => match open_case {
            Some((case_id, case_status)) => {
                firing.remove(fingerprint);
                let cancel = route.on_resolved == OnResolved::Cancel
                    && firing.is_empty()
                    && CANCELLABLE.contains(&case_status);
                (Decision::Resolve { case_id, cancel }, firing)
            }
            None => {
                firing.remove(fingerprint);
                (Decision::Record, firing)
            }
        },
        Status::Acknowledged => match open_case {
            Some((case_id, _)) => (Decision::Acknowledge(case_id), firing),
            None => (Decision::Record, firing),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteConfig;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::minutes(minutes)
    }

    fn group(case: Option<Uuid>, firing: &[&str], touched: Option<i64>) -> Group {
        Group {
            case_id: case,
            firing: firing.iter().map(|f| f.to_string()).collect(),
            touched_at: touched.map(at),
        }
    }

    fn cancelling() -> Route {
        let config: RouteConfig =
            serde_json::from_str(r#"{"name": "c", "on_resolved": "cancel", "window_s": 3600}"#)
                .unwrap();
        Route::from_config(&config, 0).unwrap()
    }

    #[test]
    fn a_firing_signal_joins_an_open_case_touched_within_the_window_else_opens_one() {
        let route = Route::default_route();
        let case = Uuid::now_v7();
        let open = group(Some(case), &["a"], Some(0));
        let (decision, firing) = decide(
            Status::Firing,
            "b",
            false,
            &route,
            &open,
            Some(CaseStatus::Planning),
            at(60),
        );
        assert_eq!(decision, Decision::Join(case));
        assert_eq!(firing, BTreeSet::from(["a".into(), "b".into()]));
        for (status, now) in [
            (Some(CaseStatus::Closed), at(60)),
            (None, at(60)),
            (Some(CaseStatus::Planning), at(4 * 60 + 1)),
        ] {
            let (decision, firing) = decide(Status::Firing, "b", false, &route, &open, status, now);
            assert_eq!(decision, Decision::Open, "{status:?} at {now}");
            assert_eq!(firing, BTreeSet::from(["b".into()]));
        }
        let fresh = group(None, &[], None);
        assert_eq!(
            decide(Status::Firing, "a", false, &route, &fresh, None, at(0)).0,
            Decision::Open
        );
    }

    #[test]
    fn a_duplicate_changes_nothing() {
        let route = Route::default_route();
        let open = group(Some(Uuid::now_v7()), &["a"], Some(0));
        let (decision, firing) = decide(
            Status::Firing,
            "a",
            true,
            &route,
            &open,
            Some(CaseStatus::New),
            at(1),
        );
        assert_eq!(decision, Decision::Duplicate);
        assert_eq!(firing, open.firing);
    }

    #[test]
    fn the_last_resolution_cancels_only_where_the_route_says_and_before_execution() {
        let case = Uuid::now_v7();
        let two = group(Some(case), &["a", "b"], Some(0));
        let (decision, firing) = decide(
            Status::Resolved,
            "a",
            false,
            &cancelling(),
            &two,
            Some(CaseStatus::WaitGate),
            at(1),
        );
        assert_eq!(
            decision,
            Decision::Resolve {
                case_id: case,
                cancel: false
            },
            "b still fires"
        );
        let last = group(Some(case), &["b"], Some(0));
        let (decision, firing_after) = decide(
            Status::Resolved,
            "b",
            false,
            &cancelling(),
            &last,
            Some(CaseStatus::WaitGate),
            at(1),
        );
        assert_eq!(
            decision,
            Decision::Resolve {
                case_id: case,
                cancel: true
            }
        );
        assert!(firing_after.is_empty() && firing.len() == 1);
        for status in [
            CaseStatus::Executing,
            CaseStatus::Verifying,
            CaseStatus::Parked,
        ] {
            let (decision, _) = decide(
                Status::Resolved,
                "b",
                false,
                &cancelling(),
                &last,
                Some(status),
                at(1),
            );
            assert_eq!(
                decision,
                Decision::Resolve {
                    case_id: case,
                    cancel: false
                },
                "{status}"
            );
        }
        let (decision, _) = decide(
            Status::Resolved,
            "b",
            false,
            &Route::default_route(),
            &last,
            Some(CaseStatus::New),
            at(1),
        );
        assert_eq!(
            decision,
            Decision::Resolve {
                case_id: case,
                cancel: false
            },
            "the default route only notes"
        );
    }

    #[test]
    fn a_resolution_or_acknowledgement_without_an_open_case_is_only_recorded() {
        let route = Route::default_route();
        let closed = group(Some(Uuid::now_v7()), &["a"], Some(0));
        for status in [Status::Resolved, Status::Acknowledged] {
            let (decision, _) = decide(
                status,
                "a",
                false,
                &route,
                &closed,
                Some(CaseStatus::Closed),
                at(1),
            );
            assert_eq!(decision, Decision::Record);
        }
    }
}
