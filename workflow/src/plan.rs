//! The ChangePlan contract: a JSON Schema (draft 2020-12) kept as a file in this crate, plus
//! completeness checks the schema cannot express.

use std::collections::HashSet;
use std::sync::LazyLock;

use serde_json::Value;

use crate::guards::{GuardFailure, GuardKind};

/// The ChangePlan JSON Schema, exactly as served at `GET /v1/schemas/change-plan`.
pub const CHANGE_PLAN_SCHEMA: &str = include_str!("../schemas/change-plan.schema.json");

/// Actions that change a running system; a plan with any of them must carry a risk score so
/// the gatekeeper can weigh it.
const SYSTEM_CHANGING_ACTIONS: &[&str] =
    &["k8s.rollout", "script.exec", "gateway.flip", "http.call"];

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(CHANGE_PLAN_SCHEMA).expect("schema file is JSON");
    jsonschema::draft202012::new(&schema).expect("schema file is a valid draft 2020-12 schema")
});

pub fn schema() -> Value {
    serde_json::from_str(CHANGE_PLAN_SCHEMA).expect("schema file is JSON")
}

/// Every reason `plan` is not a complete ChangePlan; empty when it is one.
pub fn check_change_plan(plan: &Value) -> Vec<GuardFailure> {
    let schema_failures: Vec<GuardFailure> = VALIDATOR
        .iter_errors(plan)
        .map(|error| {
            GuardFailure::new(
                GuardKind::PlanComplete,
                format!(
                    "plan{}",
                    json_pointer_to_path(&error.instance_path.to_string())
                ),
                error.to_string(),
            )
        })
        .collect();
    if !schema_failures.is_empty() {
        return schema_failures;
    }
    completeness_failures(plan)
}

fn completeness_failures(plan: &Value) -> Vec<GuardFailure> {
    let mut failures = Vec::new();
    let steps = plan["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rollback = plan["rollback"]["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();

    let mut seen = HashSet::new();
    for (index, step) in steps.iter().chain(rollback).enumerate() {
        if let Some(id) = step["id"].as_str() {
            if !seen.insert(id) {
                failures.push(GuardFailure::new(
                    GuardKind::PlanComplete,
                    step_path(index, steps.len()) + ".id",
                    format!("step id {id:?} is used more than once"),
                ));
            }
        }
    }

    for (index, step) in steps.iter().chain(rollback).enumerate() {
        let action = step["action"].as_str().unwrap_or_default();
        let errors =
            crate::adapters::validate_params(action, step.get("params")).unwrap_or_default();
        for error in errors {
            failures.push(GuardFailure::new(
                GuardKind::PlanComplete,
                step_path(index, steps.len()) + ".params" + &json_pointer_to_path(&error.pointer),
                format!("{action} params: {}", error.message),
            ));
        }
    }

    let changes_system = steps
        .iter()
        .any(|s| SYSTEM_CHANGING_ACTIONS.contains(&s["action"].as_str().unwrap_or_default()));
    if changes_system && plan.get("risk_score").is_none() {
        failures.push(GuardFailure::new(
            GuardKind::PlanComplete,
            "plan.risk_score".into(),
            "a plan whose steps change the system must carry a risk_score between 0 and 1".into(),
        ));
    }
    failures
}

fn step_path(index: usize, forward_steps: usize) -> String {
    if index < forward_steps {
        format!("plan.steps[{index}]")
    } else {
        format!("plan.rollback.steps[{}]", index - forward_steps)
    }
}

/// `/steps/0/action` → `.steps[0].action`, the form the API uses to name fields.
fn json_pointer_to_path(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|segment| {
            if segment.parse::<usize>().is_ok() {
                format!("[{segment}]")
            } else {
                format!(".{}", segment.replace("~1", "/").replace("~0", "~"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn valid_plan() -> Value {
        json!({
            "title": "canary rollout of checkout",
            "risk_score": 0.2,
            "steps": [{"id": "rollout", "action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "checkout", "container": "checkout", "image": "checkout:2"}, "timeout_s": 300, "retry": 1}],
            "rollback": {"steps": [{"id": "undo", "action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "checkout", "container": "checkout", "image": "checkout:1"}, "timeout_s": 300, "retry": 0}]},
            "verify": {"checks": [{"source": "metric_1m", "query": "service=checkout", "threshold": "p95_ms < 300"}]}
        })
    }

    #[test]
    fn a_complete_plan_passes() {
        assert_eq!(check_change_plan(&valid_plan()), vec![]);
    }

    #[test]
    fn schema_failures_name_the_field() {
        let mut plan = valid_plan();
        plan["steps"][0]["timeout_s"] = json!(5);
        let failures = check_change_plan(&plan);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].field, "plan.steps[0].timeout_s");
    }

    #[test]
    fn missing_rollback_and_verify_are_reported() {
        let mut plan = valid_plan();
        plan.as_object_mut().unwrap().remove("rollback");
        plan.as_object_mut().unwrap().remove("verify");
        let messages: Vec<String> = check_change_plan(&plan)
            .into_iter()
            .map(|f| f.message)
            .collect();
        assert!(
            messages.iter().any(|m| m.contains("rollback")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("verify")),
            "{messages:?}"
        );
    }

    #[test]
    fn empty_steps_and_bad_threshold_fail() {
        let mut plan = valid_plan();
        plan["steps"] = json!([]);
        plan["verify"]["checks"][0]["threshold"] = json!("p95 is fine");
        let fields: Vec<String> = check_change_plan(&plan)
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert!(fields.contains(&"plan.steps".to_string()), "{fields:?}");
        assert!(
            fields.contains(&"plan.verify.checks[0].threshold".to_string()),
            "{fields:?}"
        );
    }

    #[test]
    fn duplicate_step_ids_across_rollback_fail() {
        let mut plan = valid_plan();
        plan["rollback"]["steps"][0]["id"] = json!("rollout");
        let failures = check_change_plan(&plan);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].field, "plan.rollback.steps[0].id");
    }

    #[test]
    fn step_params_are_validated_against_the_adapter_schema() {
        let mut plan = valid_plan();
        plan["steps"][0]["params"] = json!({"deployment": "checkout"});
        plan["rollback"]["steps"][0]["params"]["namespace"] = json!("Not Valid");
        let fields: Vec<String> = check_change_plan(&plan)
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert!(
            fields.contains(&"plan.steps[0].params".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"plan.rollback.steps[0].params.namespace".to_string()),
            "{fields:?}"
        );
    }

    #[test]
    fn system_changing_plan_needs_a_risk_score_but_noop_does_not() {
        let mut plan = valid_plan();
        plan.as_object_mut().unwrap().remove("risk_score");
        assert_eq!(check_change_plan(&plan)[0].field, "plan.risk_score");
        plan["steps"][0] = json!({"action": "noop", "timeout_s": 10, "retry": 0});
        plan["rollback"]["steps"] = json!([]);
        assert_eq!(check_change_plan(&plan), vec![]);
    }
}
