//! Health, metrics and the published contracts.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Allowed, Read, Scrape};
use crate::problem::Problem;
use crate::AppState;

/// How long a readiness probe waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    /// Per dependency: `ok`, or what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<serde_json::Map<String, serde_json::Value>>,
}

#[utoipa::path(get, path = "/livez", tag = "system", security(()),
    responses((status = 200, description = "The process is up (no dependency is checked)", body = Health)))]
pub async fn livez() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: None,
    })
}

#[utoipa::path(get, path = "/readyz", tag = "system", security(()),
    responses(
        (status = 200, description = "The database is reachable and migrated", body = Health),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    let store = app.orchestrator.store();
    let database = match tokio::time::timeout(READY_TIMEOUT, store.check_ready()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(if error.is_unavailable() {
            "unreachable".to_string()
        } else {
            error.to_string()
        }),
        Err(_) => Err(format!("no answer within {}s", READY_TIMEOUT.as_secs())),
    };
    match database {
        Ok(()) => {
            let checks = serde_json::Map::from_iter([("database".to_string(), "ok".into())]);
            Json(Health {
                status: "ready",
                checks: Some(checks),
            })
            .into_response()
        }
        Err(reason) => {
            tracing::warn!(%reason, "readiness check failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "Not ready",
                format!("database ({}): {reason}", store.backend().as_str()),
            )
            .into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(app): State<AppState>, _caller: Allowed<Scrape>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.orchestrator.metrics().render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/schemas/change-plan", tag = "contracts",
    responses((status = 200, description = "The ChangePlan JSON Schema (draft 2020-12) that plan_ready is validated against",
        body = Object, content_type = "application/schema+json")))]
pub async fn change_plan_schema(_caller: Allowed<Read>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/schema+json")],
        workflow::plan::CHANGE_PLAN_SCHEMA,
    )
        .into_response()
}
