use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::table::TRANSITIONS;

fn valid_plan() -> Value {
    json!({
        "title": "restart checkout",
        "risk_score": 0.1,
        "steps": [{"action": "script.exec", "params": {"script": "restart.sh"}, "timeout_s": 60, "retry": 1}],
        "rollback": {"steps": []},
        "verify": {"checks": [{"source": "metric_1m", "query": "service=checkout", "threshold": "err_rate < 0.01"}]}
    })
}

fn new_case() -> CaseView {
    CaseView {
        status: Status::New,
        version: 1,
        auto: false,
        current_plan: None,
    }
}

fn with_reason(reason: &str) -> EventInput {
    EventInput {
        actor: "oncall".into(),
        reason: Some(reason.into()),
        ..EventInput::default()
    }
}

/// Given a case in `status` (with a plan by `planner` when it is past PLANNING)...
fn given(status: Status) -> CaseView {
    let past_planning = matches!(
        status,
        Status::WaitGate | Status::Executing | Status::Verifying | Status::Parked
    );
    CaseView {
        status,
        version: 7,
        auto: false,
        current_plan: past_planning.then(|| PlanRef {
            id: "plan-1".into(),
            requested_by: "planner".into(),
        }),
    }
}

#[test]
fn the_happy_path_walks_new_to_closed() {
    let mut case = new_case();
    let approval = EventInput {
        actor: "lead".into(),
        approval: Some(ApprovalInput {
            plan_id: None,
            approver: "lead".into(),
        }),
        ..EventInput::default()
    };
    let plan = EventInput {
        actor: "planner".into(),
        plan: Some(valid_plan()),
        ..EventInput::default()
    };
    let steps: [(Event, &EventInput, Status); 6] = [
        (
            Event::StartAnalysis,
            &EventInput::default(),
            Status::Analyzing,
        ),
        (
            Event::AnalysisDone,
            &EventInput::default(),
            Status::Planning,
        ),
        (Event::PlanReady, &plan, Status::WaitGate),
        (Event::GateApproved, &approval, Status::Executing),
        (Event::ExecDone, &EventInput::default(), Status::Verifying),
        (Event::VerifyPass, &EventInput::default(), Status::Closed),
    ];
    for (event, input, expected) in steps {
        let accepted = evaluate(&case, event, input).expect("accepted");
        assert_eq!(accepted.to, expected, "{event}");
        assert_eq!(accepted.version, case.version + 1);
        if event == Event::PlanReady {
            case.current_plan = Some(PlanRef {
                id: "p".into(),
                requested_by: "planner".into(),
            });
        }
        case.status = accepted.to;
        case.version = accepted.version;
    }
    assert_eq!(case.version, 7);
}

#[test]
fn an_illegal_event_names_the_allowed_ones() {
    let rejection = evaluate(&given(Status::New), Event::ExecDone, &EventInput::default());
    assert_eq!(
        rejection,
        Err(Rejection::Illegal(IllegalTransition {
            from: Status::New,
            event: Event::ExecDone,
            allowed: vec![Event::StartAnalysis, Event::Cancel],
        }))
    );
}

#[test]
fn failures_park_the_case() {
    let exec_failed = evaluate(
        &given(Status::Executing),
        Event::ExecFailed,
        &with_reason("step 2 timed out"),
    );
    assert_eq!(exec_failed.unwrap().to, Status::Parked);
    let rejected = evaluate(
        &given(Status::WaitGate),
        Event::GateRejected,
        &with_reason("freeze window"),
    )
    .unwrap();
    assert_eq!(rejected.to, Status::Parked);
    assert!(rejected.effects.contains(&Effect::RecordDecision {
        plan_id: "plan-1".into(),
        approved: false,
        decided_by: "oncall".into(),
    }));
}

#[test]
fn reason_guards_refuse_blank_reasons() {
    for (status, event) in [
        (Status::WaitGate, Event::GateRejected),
        (Status::Parked, Event::Resume),
        (Status::Analyzing, Event::Cancel),
    ] {
        let Err(Rejection::Guard { failures, .. }) =
            evaluate(&given(status), event, &with_reason("  "))
        else {
            panic!("{event} with a blank reason must fail its guard");
        };
        assert_eq!(failures[0].guard, GuardKind::ReasonRequired);
        assert_eq!(failures[0].field, "reason");
    }
}

#[test]
fn plan_ready_without_a_plan_or_with_a_broken_one_is_guarded() {
    let missing = evaluate(
        &given(Status::Planning),
        Event::PlanReady,
        &EventInput::default(),
    );
    assert!(matches!(
        missing,
        Err(Rejection::Guard {
            to: Status::WaitGate,
            ..
        })
    ));

    let mut broken = valid_plan();
    broken["steps"][0]["retry"] = json!(9);
    let input = EventInput {
        plan: Some(broken),
        ..EventInput::default()
    };
    let Err(Rejection::Guard { failures, .. }) =
        evaluate(&given(Status::Planning), Event::PlanReady, &input)
    else {
        panic!("a plan with retry 9 must be refused");
    };
    assert_eq!(failures[0].field, "plan.steps[0].retry");
}

#[test]
fn approval_is_four_eyes_and_for_the_current_plan() {
    let approve = |approver: &str, plan_id: Option<&str>| EventInput {
        actor: approver.into(),
        approval: Some(ApprovalInput {
            plan_id: plan_id.map(Into::into),
            approver: approver.into(),
        }),
        ..EventInput::default()
    };
    let case = given(Status::WaitGate);
    let own = evaluate(&case, Event::GateApproved, &approve("planner", None));
    assert!(
        matches!(own, Err(Rejection::Guard { ref failures, .. }) if failures[0].field == "decision.approver")
    );
    let stale = evaluate(&case, Event::GateApproved, &approve("lead", Some("plan-0")));
    assert!(
        matches!(stale, Err(Rejection::Guard { ref failures, .. }) if failures[0].field == "decision.plan_id")
    );
    let missing = evaluate(&case, Event::GateApproved, &EventInput::default());
    assert!(
        matches!(missing, Err(Rejection::Guard { ref failures, .. }) if failures[0].field == "decision")
    );

    let accepted = evaluate(&case, Event::GateApproved, &approve("lead", Some("plan-1"))).unwrap();
    assert_eq!(accepted.to, Status::Executing);
    assert!(accepted.effects.contains(&Effect::RecordDecision {
        plan_id: "plan-1".into(),
        approved: true,
        decided_by: "lead".into(),
    }));
}

#[test]
fn exec_done_with_a_failed_step_is_guarded() {
    let input = EventInput {
        results: vec![StepResult {
            step: "rollout".into(),
            status: StepStatus::Failed,
            detail: None,
        }],
        ..EventInput::default()
    };
    assert!(matches!(
        evaluate(&given(Status::Executing), Event::ExecDone, &input),
        Err(Rejection::Guard { .. })
    ));
    assert_eq!(
        evaluate(&given(Status::Executing), Event::ExecFailed, &input)
            .unwrap()
            .to,
        Status::Parked
    );
}

#[test]
fn cancel_closes_with_cancelled_and_verify_pass_with_resolved() {
    let cancelled = evaluate(
        &given(Status::Parked),
        Event::Cancel,
        &with_reason("duplicate"),
    )
    .unwrap();
    assert_eq!(
        (cancelled.to, cancelled.resolution),
        (Status::Closed, Some(Resolution::Cancelled))
    );
    let resolved = evaluate(
        &given(Status::Verifying),
        Event::VerifyPass,
        &EventInput::default(),
    )
    .unwrap();
    assert_eq!(
        (resolved.to, resolved.resolution),
        (Status::Closed, Some(Resolution::Resolved))
    );
}

#[test]
fn every_transition_publishes_its_fact_and_auto_mode_issues_the_next_command() {
    let mut case = given(Status::Analyzing);
    let manual = evaluate(&case, Event::AnalysisDone, &EventInput::default()).unwrap();
    assert_eq!(
        manual.effects,
        vec![Effect::Publish {
            topic: TOPIC_CASE_TRANSITION
        }]
    );
    case.auto = true;
    let auto = evaluate(&case, Event::AnalysisDone, &EventInput::default()).unwrap();
    assert_eq!(
        auto.effects,
        vec![
            Effect::Publish {
                topic: TOPIC_CASE_TRANSITION
            },
            Effect::Publish {
                topic: "cmd.plan.generate"
            }
        ]
    );
}

#[test]
fn entering_closed_or_parked_also_publishes_the_outcome() {
    let mut case = given(Status::Executing);
    let failed = evaluate(
        &case,
        Event::ExecFailed,
        &EventInput {
            reason: Some("rollout timed out".into()),
            ..EventInput::default()
        },
    )
    .unwrap();
    assert_eq!(failed.to, Status::Parked);
    assert_eq!(
        failed.effects,
        vec![
            Effect::Publish {
                topic: TOPIC_CASE_TRANSITION
            },
            Effect::Publish {
                topic: crate::TOPIC_CASE_OUTCOME
            }
        ]
    );
    case.status = Status::Parked;
    let resumed = evaluate(
        &case,
        Event::Resume,
        &EventInput {
            reason: Some("fixed".into()),
            ..EventInput::default()
        },
    )
    .unwrap();
    assert!(!resumed.effects.contains(&Effect::Publish {
        topic: crate::TOPIC_CASE_OUTCOME
    }));
}

#[test]
fn decide_agrees_with_the_table_for_every_pair() {
    for status in Status::ALL {
        for event in Event::ALL {
            let rows: Vec<_> = TRANSITIONS
                .iter()
                .filter(|t| t.event == event && t.from.matches(status))
                .collect();
            assert!(
                rows.len() <= 1,
                "{status} × {event} matches {} rows",
                rows.len()
            );
            match (decide(status, event), rows.first()) {
                (Ok(to), Some(row)) => assert_eq!(to, row.to),
                (Err(illegal), None) => assert!(!illegal.allowed.contains(&event)),
                (result, row) => panic!("{status} × {event}: {result:?} vs {row:?}"),
            }
        }
    }
}

/// An event together with inputs that may or may not satisfy its guard.
fn arbitrary_step() -> impl Strategy<Value = (Event, EventInput)> {
    let event = prop::sample::select(Event::ALL.to_vec());
    let reason = prop::option::of(prop::sample::select(vec!["", " ", "because"]));
    let actor = prop::sample::select(vec!["alice", "bob"]);
    (
        event,
        reason,
        actor,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(event, reason, actor, with_plan, plan_is_valid, with_approval)| {
                let mut plan = valid_plan();
                if !plan_is_valid {
                    plan["steps"] = json!([]);
                }
                let input = EventInput {
                    actor: actor.into(),
                    reason: reason.map(Into::into),
                    plan: with_plan.then_some(plan),
                    approval: with_approval.then(|| ApprovalInput {
                        plan_id: None,
                        approver: actor.into(),
                    }),
                    results: vec![],
                };
                (event, input)
            },
        )
}

proptest! {
    #[test]
    fn random_sequences_stay_inside_the_table(
        auto in any::<bool>(),
        steps in prop::collection::vec(arbitrary_step(), 0..60),
    ) {
        let mut case = CaseView { auto, ..new_case() };
        let mut plan_counter = 0;
        for (event, input) in steps {
            let before = case.clone();
            match evaluate(&case, event, &input) {
                Ok(accepted) => {
                    prop_assert!(!before.status.is_terminal(), "an event left CLOSED: {event}");
                    prop_assert_eq!(accepted.from, before.status);
                    prop_assert_eq!(accepted.version, before.version + 1);
                    prop_assert!(TRANSITIONS.iter().any(|t| t.from.matches(before.status)
                        && t.event == event && t.to == accepted.to));
                    for effect in &accepted.effects {
                        if let Effect::RecordPlan { .. } = effect {
                            plan_counter += 1;
                            case.current_plan = Some(PlanRef {
                                id: format!("plan-{plan_counter}"),
                                requested_by: input.actor.clone(),
                            });
                        }
                    }
                    case.status = accepted.to;
                    case.version = accepted.version;
                }
                Err(Rejection::Illegal(illegal)) => {
                    prop_assert!(!illegal.allowed.contains(&event));
                    prop_assert_eq!(&case, &before);
                }
                Err(Rejection::Guard { from, failures, .. }) => {
                    prop_assert_eq!(from, before.status);
                    prop_assert!(!failures.is_empty());
                    prop_assert_eq!(&case, &before);
                }
            }
        }
    }

    #[test]
    fn nothing_leaves_closed(steps in prop::collection::vec(arbitrary_step(), 1..30)) {
        let closed = given(Status::Closed);
        for (event, input) in steps {
            prop_assert!(matches!(evaluate(&closed, event, &input), Err(Rejection::Illegal(_))));
        }
    }
}
