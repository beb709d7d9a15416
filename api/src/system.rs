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
        (status = 200, description = "The database is reachable and migrated, and the bus (when configured) is connected", body = Health),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    let store = app.orchestrator.store();
    let database = match tokio::time::timeout(READY_TIMEOUT, store.check_ready()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) if error.is_unavailable() => Err("unreachable".to_string()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {}s", READY_TIMEOUT.as_secs())),
    };
    let mut failures = Vec::new();
    let mut checks = serde_json::Map::new();
    match database {
        Ok(()) => {
            checks.insert("database".into(), "ok".into());
        }
        Err(reason) => failures.push(format!("database ({}): {reason}", store.backend().as_str())),
    }
    if let Some(bus) = &app.bus {
        match bus.check().await {
            Ok(()) => {
                checks.insert("bus".into(), "ok".into());
            }
            Err(error) => failures.push(format!("bus: {error}")),
        }
    }
    if failures.is_empty() {
        return Json(Health {
            status: "ready",
            checks: Some(checks),
        })
        .into_response();
    }
    let detail = failures.join("; ");
    tracing::warn!(reason = %detail, "readiness check failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-ready",
        "Not ready",
        detail,
    )
    .into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(app): State<AppState>, _caller: Allowed<Scrape>) -> Response {
    open_metrics(State(app)).await
}

/// `/metrics` without a key, when `metrics.auth = false` says so.
pub async fn open_metrics(State(app): State<AppState>) -> Response {
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
