//! The decision rules, their precedence, tenant overrides, freezes and ad-hoc steps.

mod common;

use common::{at, plan, plan_with_rollback};
use gatekeeper::{evaluate, evaluate_adhoc, GateInput, Outcome, Policy};
use serde_json::{json, Value};

const POLICY: &str = r#"
max_auto_risk = 0.3
max_steps = 5
human_actions = ["k8s.rollout"]
forbidden_actions = ["http.call"]

[[freeze]]
name = "black-friday"
start = "2026-11-27T00:00:00Z"
end = "2026-11-30T23:59:59Z"
tenants = ["t-001"]

[[freeze]]
name = "sunday"
days = ["sun"]
tenants = ["t-sun"]

[[tenant]]
name = "t-002"
max_auto_risk = 0.1

[[tenant]]
name = "t-003"
max_steps = 2
human_actions = []
forbidden_actions = ["script.exec"]

[adhoc]
allow_scripts = ["echo", "uptime"]
allow_actions = ["noop"]
"#;

const QUIET: &str = "2026-06-02T12:00:00Z"; // a Tuesday, no freeze

fn policy() -> Policy {
    Policy::from_toml_str(POLICY, "test.toml").unwrap()
}

fn decide(policy: &Policy, tenant: &str, plan: &Value, now: &str) -> gatekeeper::Decision {
    evaluate(
        policy,
        &GateInput {
            tenant,
            plan,
            now: at(now),
        },
    )
}

#[test]
fn default_policy_auto_approves_a_low_risk_plan() {
    let d = decide(
        &Policy::builtin(),
        "t-001",
        &plan(Some(0.2), &["script.exec", "k8s.rollout"]),
        QUIET,
    );
    assert_eq!(d.outcome, Outcome::Approve);
    assert_eq!(d.rule, "auto_approve");
    assert!(
        d.reason.contains("risk 0.2 <= max_auto_risk 0.3"),
        "{}",
        d.reason
    );
    assert!(d.reason.contains("2 steps <= max_steps 20"), "{}", d.reason);
    assert_eq!(d.inputs["tenant"], "t-001");
    assert_eq!(d.inputs["now"], QUIET);
    assert_eq!(d.inputs["risk_score"], 0.2);
    assert_eq!(d.inputs["risk_score_source"], "plan");
    assert_eq!(d.inputs["step_count"], 2);
    assert_eq!(d.inputs["actions"], json!(["script.exec", "k8s.rollout"]));
    assert_eq!(d.inputs["rollback_actions"], json!(["noop"]));
    assert_eq!(d.inputs["active_freezes"], json!([]));
    assert_eq!(d.inputs["limits"]["max_auto_risk"], 0.3);
    assert_eq!(d.inputs["limits"]["max_steps"], 20);
    assert_eq!(d.inputs["limits"]["tenant_rule"], Value::Null);
}

#[test]
fn default_policy_holds_only_on_risk() {
    let builtin = Policy::builtin();
    for action in [
        "k8s.rollout",
        "script.exec",
        "gateway.flip",
        "http.call",
        "noop",
    ] {
        let d = decide(&builtin, "t", &plan(Some(0.3), &[action]), QUIET);
        assert_eq!(d.outcome, Outcome::Approve, "{action}: {}", d.reason);
    }
    let d = decide(&builtin, "t", &plan(Some(0.31), &["noop"]), QUIET);
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Hold, "max_auto_risk")
    );
}

#[test]
fn max_auto_risk_holds_with_the_numbers() {
    let d = decide(
        &policy(),
        "t-001",
        &plan(Some(0.6), &["script.exec"]),
        QUIET,
    );
    assert_eq!(d.outcome, Outcome::Hold);
    assert_eq!(d.rule, "max_auto_risk");
    assert_eq!(d.reason, "risk 0.6 > max_auto_risk 0.3");
    assert_eq!(d.inputs["risk_score"], 0.6);
    // Equal to the limit is still automatic.
    let d = decide(
        &policy(),
        "t-001",
        &plan(Some(0.3), &["script.exec"]),
        QUIET,
    );
    assert_eq!(d.outcome, Outcome::Approve);
}

#[test]
fn missing_risk_score_counts_as_one_unless_all_noop() {
    let d = decide(&policy(), "t-001", &plan(None, &["script.exec"]), QUIET);
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Hold, "max_auto_risk")
    );
    assert!(
        d.reason
            .starts_with("risk 1 (the plan has no risk_score) > max_auto_risk 0.3"),
        "{}",
        d.reason
    );
    assert_eq!(d.inputs["risk_score"], 1.0);
    assert_eq!(d.inputs["risk_score_source"], "default: no risk_score");

    let d = decide(&policy(), "t-001", &plan(None, &["noop", "noop"]), QUIET);
    assert_eq!(d.outcome, Outcome::Approve, "{}", d.reason);
    assert_eq!(d.inputs["risk_score"], 0.0);

    // A non-noop rollback step counts.
    let d = decide(
        &policy(),
        "t-001",
        &plan_with_rollback(None, &["noop"], &["script.exec"]),
        QUIET,
    );
    assert_eq!(d.outcome, Outcome::Hold);
}

#[test]
fn human_actions_hold_in_forward_and_rollback_steps() {
    let d = decide(
        &policy(),
        "t-001",
        &plan(Some(0.1), &["noop", "k8s.rollout"]),
        QUIET,
    );
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Hold, "human_actions")
    );
    assert_eq!(
        d.reason,
        "step 2 \"s2\" (k8s.rollout) needs a human (human_actions: [k8s.rollout])"
    );
    assert_eq!(d.inputs["limits"]["human_actions"], json!(["k8s.rollout"]));

    let d = decide(
        &policy(),
        "t-001",
        &plan_with_rollback(Some(0.1), &["noop"], &["k8s.rollout"]),
        QUIET,
    );
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Hold, "human_actions")
    );
    assert!(d.reason.starts_with("rollback step 1"), "{}", d.reason);
}

#[test]
fn forbidden_actions_reject() {
    let d = decide(
        &policy(),
        "t-001",
        &plan(Some(0.1), &["noop", "http.call"]),
        QUIET,
    );
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Reject, "forbidden_actions")
    );
    assert_eq!(
        d.reason,
        "step 2 \"s2\" (http.call) uses a forbidden action (forbidden_actions: [http.call])"
    );
    assert_eq!(d.inputs["actions"], json!(["noop", "http.call"]));
}

#[test]
fn max_steps_rejects_more_forward_steps() {
    let five = ["noop"; 5];
    let d = decide(&policy(), "t-001", &plan(Some(0.1), &five), QUIET);
    assert_eq!(d.outcome, Outcome::Approve, "{}", d.reason);
    let six = ["noop"; 6];
    let d = decide(
        &policy(),
        "t-001",
        &plan_with_rollback(Some(0.1), &six, &[]),
        QUIET,
    );
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Reject, "max_steps"));
    assert_eq!(d.reason, "6 steps > max_steps 5");
    assert_eq!(d.inputs["step_count"], 6);
    // Rollback steps are not counted.
    let d = decide(
        &policy(),
        "t-001",
        &plan_with_rollback(Some(0.1), &five, &six),
        QUIET,
    );
    assert_eq!(d.outcome, Outcome::Approve);
}

#[test]
fn freeze_window_is_per_tenant_with_inclusive_bounds() {
    let p = policy();
    let low = plan(Some(0.1), &["script.exec"]);
    for now in [
        "2026-11-27T00:00:00Z",
        "2026-11-28T12:00:00Z",
        "2026-11-30T23:59:59Z",
    ] {
        let d = decide(&p, "t-001", &low, now);
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (Outcome::Reject, "freeze:black-friday"),
            "{now}"
        );
        assert_eq!(d.inputs["active_freezes"], json!(["black-friday"]));
        assert!(
            d.reason
                .contains("change freeze \"black-friday\" is active for tenant t-001"),
            "{}",
            d.reason
        );
        assert!(
            d.reason
                .contains("2026-11-27T00:00:00Z..=2026-11-30T23:59:59Z"),
            "{}",
            d.reason
        );
    }
    for now in [
        "2026-11-26T23:59:59Z",
        "2026-11-30T23:59:59.001Z",
        "2026-12-01T00:00:00Z",
    ] {
        let d = decide(&p, "t-001", &low, now);
        assert_eq!(d.outcome, Outcome::Approve, "{now}: {}", d.reason);
    }
    // Another tenant is not frozen.
    let d = decide(&p, "t-009", &low, "2026-11-28T12:00:00Z");
    assert_eq!(d.outcome, Outcome::Approve, "{}", d.reason);
}

#[test]
fn weekly_freeze() {
    let p = policy();
    let low = plan(Some(0.1), &["noop"]);
    // 2026-06-07 is a Sunday.
    let d = decide(&p, "t-sun", &low, "2026-06-07T00:00:00Z");
    assert_eq!(d.rule, "freeze:sunday");
    assert!(
        d.reason.contains("weekly sun 00:00-24:00 UTC"),
        "{}",
        d.reason
    );
    let d = decide(&p, "t-sun", &low, "2026-06-08T00:00:00Z");
    assert_eq!(d.outcome, Outcome::Approve);
    let d = decide(&p, "t-sun", &low, "2026-06-06T23:59:59Z");
    assert_eq!(d.outcome, Outcome::Approve);
}

#[test]
fn precedence_forbidden_freeze_max_steps_human_risk() {
    let p = policy();
    let frozen = "2026-11-28T12:00:00Z";
    let mut actions = vec!["noop"; 6];
    actions.push("k8s.rollout");
    actions.push("http.call");
    let d = decide(&p, "t-001", &plan(Some(0.9), &actions), frozen);
    assert_eq!(d.rule, "forbidden_actions");
    actions.pop();
    let d = decide(&p, "t-001", &plan(Some(0.9), &actions), frozen);
    assert_eq!(d.rule, "freeze:black-friday");
    let d = decide(&p, "t-001", &plan(Some(0.9), &actions), QUIET);
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Reject, "max_steps"));
    let d = decide(
        &p,
        "t-001",
        &plan(Some(0.9), &["noop", "k8s.rollout"]),
        QUIET,
    );
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Hold, "human_actions")
    );
    let d = decide(&p, "t-001", &plan(Some(0.9), &["noop"]), QUIET);
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Hold, "max_auto_risk")
    );
    let d = decide(&p, "t-001", &plan(Some(0.1), &["noop"]), QUIET);
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Approve, "auto_approve")
    );
}

#[test]
fn tenant_overrides_apply_first() {
    let p = policy();
    let mid = plan(Some(0.2), &["script.exec"]);
    assert_eq!(decide(&p, "t-001", &mid, QUIET).outcome, Outcome::Approve);
    let d = decide(&p, "t-002", &mid, QUIET);
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Hold, "max_auto_risk")
    );
    assert_eq!(d.reason, "risk 0.2 > max_auto_risk 0.1 (tenant t-002)");
    assert_eq!(d.inputs["limits"]["tenant_rule"], "t-002");
    assert_eq!(d.inputs["limits"]["max_auto_risk"], 0.1);
    assert_eq!(d.inputs["limits"]["max_steps"], 5, "not overridden");

    // t-003 replaces the lists: k8s.rollout no longer needs a human, script.exec is forbidden.
    let d = decide(&p, "t-003", &plan(Some(0.1), &["k8s.rollout"]), QUIET);
    assert_eq!(d.outcome, Outcome::Approve, "{}", d.reason);
    let d = decide(&p, "t-003", &plan(Some(0.1), &["script.exec"]), QUIET);
    assert_eq!(d.rule, "forbidden_actions");
    assert!(
        d.reason
            .contains("(forbidden_actions (tenant t-003): [script.exec])"),
        "{}",
        d.reason
    );
    let d = decide(&p, "t-003", &plan(Some(0.1), &["noop"; 3]), QUIET);
    assert_eq!(d.reason, "3 steps > max_steps 2 (tenant t-003)");
}

#[test]
fn malformed_plans_are_rejected() {
    let p = Policy::builtin();
    for (bad, why) in [
        (json!("nope"), "not a JSON object"),
        (json!({"title": "x"}), "no steps"),
        (json!({"steps": []}), "no steps"),
        (json!({"steps": [{"params": {}}]}), "steps[0] has no action"),
        (
            json!({"steps": [{"action": "noop"}], "rollback": {"steps": {}}}),
            "rollback.steps is not an array",
        ),
        (
            json!({"steps": [{"action": "noop"}], "risk_score": 2}),
            "risk_score 2",
        ),
    ] {
        let d = decide(&p, "t", &bad, QUIET);
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (Outcome::Reject, "plan_invalid"),
            "{bad}"
        );
        assert!(d.reason.contains(why), "{bad}: {}", d.reason);
    }
}

#[test]
fn outcomes_map_to_topics() {
    assert_eq!(Outcome::Approve.topic(), "evt.plan.approved.v1");
    assert_eq!(Outcome::Hold.topic(), "evt.plan.held.v1");
    assert_eq!(Outcome::Reject.topic(), "evt.plan.rejected.v1");
}

fn script(name: &str) -> Value {
    json!({"action": "script.exec", "params": {"script": name, "args": []}, "timeout_s": 30, "retry": 0})
}

#[test]
fn adhoc_default_policy() {
    let p = Policy::builtin();
    let now = at(QUIET);
    assert_eq!(evaluate_adhoc(&p, "t", &script("echo"), now), Ok(()));
    let err = evaluate_adhoc(&p, "t", &script("rm"), now).unwrap_err();
    assert_eq!(
        (err.outcome, err.rule.as_str()),
        (Outcome::Reject, "adhoc.allow_scripts")
    );
    assert_eq!(
        err.reason,
        "script \"rm\" is not in adhoc.allow_scripts [echo]"
    );
    assert_eq!(err.inputs["script"], "rm");
    assert_eq!(
        evaluate_adhoc(&p, "t", &json!({"action": "noop", "params": {"x": 1}}), now),
        Ok(())
    );
    let err = evaluate_adhoc(
        &p,
        "t",
        &json!({"action": "k8s.rollout", "params": {}}),
        now,
    )
    .unwrap_err();
    assert_eq!(err.rule, "adhoc.allow_actions");
    let err = evaluate_adhoc(&p, "t", &json!({"action": "script.exec"}), now).unwrap_err();
    assert_eq!(err.rule, "adhoc.allow_scripts");
    let err = evaluate_adhoc(&p, "t", &json!({"params": {}}), now).unwrap_err();
    assert_eq!(err.rule, "adhoc.step_invalid");
}

#[test]
fn adhoc_freeze_and_forbidden_still_block() {
    let p = policy();
    assert_eq!(
        evaluate_adhoc(&p, "t-001", &script("uptime"), at(QUIET)),
        Ok(())
    );
    let err = evaluate_adhoc(&p, "t-001", &script("echo"), at("2026-11-28T00:00:00Z")).unwrap_err();
    assert_eq!(
        (err.outcome, err.rule.as_str()),
        (Outcome::Reject, "freeze:black-friday")
    );
    assert_eq!(err.inputs["active_freezes"], json!(["black-friday"]));
    // Another tenant is not frozen.
    assert_eq!(
        evaluate_adhoc(&p, "t-009", &script("echo"), at("2026-11-28T00:00:00Z")),
        Ok(())
    );
    // t-003 forbids script.exec.
    let err = evaluate_adhoc(&p, "t-003", &script("echo"), at(QUIET)).unwrap_err();
    assert_eq!(err.rule, "forbidden_actions");
    // human_actions do not apply to an operator's ad-hoc step, allow_actions does.
    let err =
        evaluate_adhoc(&p, "t-001", &json!({"action": "k8s.rollout"}), at(QUIET)).unwrap_err();
    assert_eq!(err.rule, "adhoc.allow_actions");
}
