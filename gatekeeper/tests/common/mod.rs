//! Helpers shared by the gatekeeper's integration tests.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A schema-valid ChangePlan with one forward step per action.
pub fn plan(risk: Option<f64>, actions: &[&str]) -> Value {
    plan_with_rollback(risk, actions, &["noop"])
}

pub fn plan_with_rollback(risk: Option<f64>, actions: &[&str], rollback: &[&str]) -> Value {
    let step = |i: usize, a: &&str| {
        let params = if *a == "script.exec" {
            json!({"script": "echo", "args": ["hi"]})
        } else {
            json!({})
        };
        json!({"id": format!("s{}", i + 1), "action": a, "params": params, "timeout_s": 60, "retry": 0})
    };
    let mut plan = json!({
        "title": "test plan",
        "steps": actions.iter().enumerate().map(|(i, a)| step(i, a)).collect::<Vec<_>>(),
        "rollback": {"steps": rollback.iter().enumerate().map(|(i, a)| step(i + 100, a)).collect::<Vec<_>>()},
        "verify": {"checks": [{"source": "metric_1m", "query": "checkout", "threshold": "err_rate <= 0.01"}]},
    });
    if let Some(risk) = risk {
        plan["risk_score"] = json!(risk);
    }
    plan
}
