//! The gate policy as the API applies it: an ad-hoc step (`POST /v1/adapter/exec` with an
//! explicit adapter) runs in place of the plan's only if the policy allows it on its own.

use axum::http::StatusCode;
use orchestrator::model::Case;
use serde_json::Value;

use crate::problem::Problem;
use crate::AppState;

pub(crate) fn allow_adhoc(app: &AppState, case: &Case, step: &Value) -> Result<(), Problem> {
    let loaded = app.policy.current();
    gatekeeper::evaluate_adhoc(&loaded.policy, &case.tenant, step, chrono::Utc::now()).map_err(
        |decision| {
            let mut problem = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy-denied",
                "Refused by the gate policy",
                format!(
                    "rule {} (policy {}): {}",
                    decision.rule, loaded.rev, decision.reason
                ),
            );
            problem.rule = Some(decision.rule);
            problem.case_id = Some(case.id);
            problem
        },
    )
}
