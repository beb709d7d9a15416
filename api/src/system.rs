//! Health, metrics and the published contracts.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator::exposition::Format;
use serde::Serialize;
use serde_json::Value;
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
        (status = 200, description = "The database is reachable and migrated, and the bus (when configured) is connected; with embeddings configured, `kb_vectors` says `ok` or why knowledge base search is lexical only", body = Health),
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
    // Vectors that cannot be used leave search lexical: a detail, never unready.
    if let Some(vectors) = app.kb.vector_status() {
        checks.insert("kb_vectors".into(), vectors.into());
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
    responses((status = 200,
        description = "Every metric: OpenMetrics, with the request's or worker's trace as exemplar \
            on `http_request_duration_seconds`, `adapter_step_latency_seconds` and \
            `verify_latency_seconds`, when `Accept` prefers `application/openmetrics-text` \
            (as Prometheus does); the Prometheus text format otherwise",
        content(
            (String = "text/plain; version=0.0.4"),
            (String = "application/openmetrics-text; version=1.0.0"),
        ))))]
pub async fn metrics(
    State(app): State<AppState>,
    _caller: Allowed<Scrape>,
    headers: HeaderMap,
) -> Response {
    open_metrics(State(app), headers).await
}

/// `/metrics` without a key, when `metrics.auth = false` says so.
pub async fn open_metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    // The knowledge base may have changed from another process (`opscase kb import`).
    if let Err(error) = app.kb.refresh_metrics().await {
        tracing::warn!(%error, "kb_documents, kb_chunks and kb_chunks_embedded could not be counted");
    }
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let format = scrape_format(&accept);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        app.orchestrator.metrics().render(format),
    )
        .into_response()
}

/// OpenMetrics when `accept` names `application/openmetrics-text` at least as high as any
/// range the classic text format satisfies (`text/plain`, `text/*`, `*/*`); the classic text
/// format otherwise, and without an `Accept`.
fn scrape_format(accept: &str) -> Format {
    let (mut openmetrics, mut classic) = (0.0_f32, 0.0_f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|param| param.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, value)| value.trim().parse().unwrap_or(1.0));
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => classic = classic.max(q),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= classic {
        Format::OpenMetrics
    } else {
        Format::Classic
    }
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

/// One adapter a plan step may name.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterInfo {
    #[schema(example = "script.exec")]
    pub action: String,
    pub description: String,
    /// JSON Schema (draft 2020-12) of the step's `params`.
    pub params_schema: Value,
}

#[utoipa::path(get, path = "/v1/adapters", tag = "contracts",
    responses((status = 200, description = "The adapters and the JSON Schema of each one's params", body = [AdapterInfo])))]
pub async fn adapters(_caller: Allowed<Read>) -> Json<Vec<AdapterInfo>> {
    Json(
        workflow::adapters::ADAPTERS
            .iter()
            .map(|spec| AdapterInfo {
                action: spec.action.into(),
                description: spec.description.into(),
                params_schema: workflow::adapters::params_schema(spec.action)
                    .unwrap_or(Value::Null),
            })
            .collect(),
    )
}

/// A plan template and its inputs.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateInfo {
    #[schema(example = "k8s.rollout.canary")]
    pub name: String,
    pub description: String,
    /// Input name → what it is (inputs may also come from the case's labels).
    pub params: BTreeMap<String, String>,
}

#[utoipa::path(get, path = "/v1/templates", tag = "contracts",
    responses((status = 200, description = "The planner's templates", body = [TemplateInfo])))]
pub async fn templates(_caller: Allowed<Read>) -> Json<Vec<TemplateInfo>> {
    Json(
        planner::templates()
            .into_iter()
            .map(|t| TemplateInfo {
                name: t.name.into(),
                description: t.description.into(),
                params: t
                    .params
                    .into_iter()
                    .map(|(name, what)| (name.to_string(), what.to_string()))
                    .collect(),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scraper_gets_openmetrics_only_when_it_prefers_it() {
        for (accept, format) in [
            ("", Format::Classic),
            ("*/*", Format::Classic),
            ("text/plain", Format::Classic),
            ("application/openmetrics-text", Format::OpenMetrics),
            // Prometheus 2.x.
            (
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                Format::OpenMetrics,
            ),
            (
                "text/plain;version=0.0.4, application/openmetrics-text; q=0.5",
                Format::Classic,
            ),
            ("Application/OpenMetrics-Text; Q=0", Format::Classic),
            ("application/json", Format::Classic),
        ] {
            assert_eq!(scrape_format(accept), format, "Accept: {accept}");
        }
    }
}
