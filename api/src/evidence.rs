//! Evidence of a case: `POST` and `GET /v1/cases/{id}/evidence`, and the log lines behind a
//! Loki or OpenObserve locator (`GET /v1/evidence/{id}/lines`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use sensor::{Evidence, IngestError, NewEvidence};

use crate::auth::{Allowed, Operate, Read};
use crate::cases::request_context;
use crate::contract::{self, BodyLimit, CaseNotFound, Malformed};
use crate::extract::{self, JsonBody, PathId, QueryParams};
use crate::problem::Problem;
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct EvidencePage {
    pub items: Vec<Evidence>,
}

/// Add evidence to a case: a log, metric or trace `locator` (Loki, OpenObserve, Prometheus), a
/// `ref` to a row opscase holds, or a plain `url`. Adding the same content again changes
/// nothing and answers 200 with what is there; a new piece is a timeline row.
#[utoipa::path(post, path = "/v1/cases/{id}/evidence", tag = "evidence",
    params(("id" = Uuid, Path, description = "Case id")),
    request_body(content = NewEvidence, content_type = "application/json",
        example = json!({"kind": "log", "title": "checkout errors after the deploy",
            "locator": {"system": "loki", "query": "{app=\"checkout\"} |= \"error\"",
                        "from": "2026-12-02T10:00:00Z", "to": "2026-12-02T10:15:00Z"}})),
    responses(
        (status = 201, description = "Added", body = Evidence),
        (status = 200, description = "The same evidence was there already", body = Evidence),
        Malformed, CaseNotFound, BodyLimit,
        (status = 422, description = "The locator cannot be used: an OpenObserve locator without its stream, or a range that ends before it starts", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_evidence(
    State(app): State<AppState>,
    caller: Allowed<Operate>,
    id: PathId,
    body: JsonBody<NewEvidence>,
) -> Result<Response, Problem> {
    let case_id = extract::parse_uuid("id", &id.0)?;
    let sensor = sensor_of(&app)?;
    let mut new = body.value;
    new.title = contract::text("title", &new.title, contract::TITLE_MAX_CHARS)?;
    if let Some(locator) = &new.locator {
        // The shape is as documented; what it asks for cannot be (422).
        let refused = |field: &str, detail: &str| {
            let mut problem = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unusable-locator",
                "Unusable locator",
                detail,
            );
            problem.field = Some(field.into());
            problem
        };
        if locator.system == "openobserve" && locator.dataset.as_deref().is_none_or(str::is_empty) {
            return Err(refused(
                "locator.dataset",
                "an openobserve locator needs its stream in dataset",
            ));
        }
        if let (Some(from), Some(to)) = (locator.from, locator.to) {
            if from > to {
                return Err(refused("locator.from", "from is after to"));
            }
        }
    }
    let context = request_context(caller.principal, None);
    let (evidence, created) = sensor
        .add_evidence(case_id, new, &context)
        .await
        .map_err(problem_of)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(evidence)).into_response())
}

/// A case's evidence, oldest first, each with an `href` to click through to (the URL, or the
/// locator's query in Grafana Explore or OpenObserve when `[sensor.links]` names them).
#[utoipa::path(get, path = "/v1/cases/{id}/evidence", tag = "evidence",
    params(("id" = Uuid, Path, description = "Case id")),
    responses(
        (status = 200, description = "The case's evidence", body = EvidencePage),
        Malformed, CaseNotFound,
    ))]
pub async fn list_evidence(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    id: PathId,
) -> Result<Json<EvidencePage>, Problem> {
    let case_id = extract::parse_uuid("id", &id.0)?;
    let sensor = sensor_of(&app)?;
    let context = request_context(caller.principal, None);
    let items = sensor
        .evidence_of(case_id, &context)
        .await
        .map_err(problem_of)?;
    Ok(Json(EvidencePage { items }))
}

/// A case's findings.
#[derive(Debug, Serialize, ToSchema)]
pub struct FindingsPage {
    pub items: Vec<analyst::store::StoredFinding>,
    /// A model's summary of each run's findings, when a model is configured and answered.
    pub summaries: Vec<analyst::store::FindingsSummary>,
}

/// What the analyst found about a case, run by run (oldest first), each finding strongest
/// first within its run, with the rows that show it (`evidence[].ref`).
#[utoipa::path(get, path = "/v1/cases/{id}/findings", tag = "evidence",
    params(("id" = Uuid, Path, description = "Case id")),
    responses(
        (status = 200, description = "The case's findings", body = FindingsPage),
        Malformed, CaseNotFound,
    ))]
pub async fn list_findings(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    id: PathId,
) -> Result<Json<FindingsPage>, Problem> {
    let case_id = extract::parse_uuid("id", &id.0)?;
    let context = request_context(caller.principal, None);
    app.orchestrator.get_case(case_id, &context).await?;
    let store = analyst::store::AnalysisStore::new(app.orchestrator.store().pool());
    let items = store.findings_of(case_id).await.map_err(Problem::from)?;
    let summaries = store.summaries_of(case_id).await.map_err(Problem::from)?;
    Ok(Json(FindingsPage { items, summaries }))
}

/// A case's model calls.
#[derive(Debug, Serialize, ToSchema)]
pub struct LlmCallsPage {
    pub items: Vec<llm::LlmCall>,
}

/// Every call opscase made to a model for a case, oldest first: purpose, model, attempts,
/// the redacted prompt and answer (capped), their digests, tokens, latency and outcome. The
/// audit of what left the process and what came back.
#[utoipa::path(get, path = "/v1/cases/{id}/llm-calls", tag = "evidence",
    params(("id" = Uuid, Path, description = "Case id")),
    responses(
        (status = 200, description = "The case's model calls", body = LlmCallsPage),
        Malformed, CaseNotFound,
    ))]
pub async fn list_llm_calls(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    id: PathId,
) -> Result<Json<LlmCallsPage>, Problem> {
    let case_id = extract::parse_uuid("id", &id.0)?;
    let context = request_context(caller.principal, None);
    app.orchestrator.get_case(case_id, &context).await?;
    let items = llm::CallStore::new(app.orchestrator.store().pool())
        .of_case(case_id)
        .await
        .map_err(Problem::from)?;
    Ok(Json(LlmCallsPage { items }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LinesQuery {
    /// Lines to fetch, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The log lines behind a piece of evidence whose locator points at Loki or OpenObserve,
/// fetched from the log store now, oldest first, with secrets masked.
#[utoipa::path(get, path = "/v1/evidence/{id}/lines", tag = "evidence",
    params(("id" = Uuid, Path, description = "Evidence id"), LinesQuery),
    responses(
        (status = 200, description = "The lines", body = sensor::logs::Lines),
        Malformed,
        (status = 404, description = "No such evidence (or not one this key's tenant may see)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The evidence has no Loki or OpenObserve locator, or that store is not configured", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The log store answered with an error", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The log store did not answer in time", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn evidence_lines(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    id: PathId,
    QueryParams(query): QueryParams<LinesQuery>,
) -> Result<Json<sensor::logs::Lines>, Problem> {
    let evidence_id = extract::parse_uuid("id", &id.0)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid("limit", "limit must be 1 to 1000"));
    }
    let sensor = sensor_of(&app)?;
    let context = request_context(caller.principal, None);
    let evidence = sensor
        .evidence_by_id(evidence_id, &context)
        .await
        .map_err(problem_of)?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("evidence {evidence_id} does not exist"),
            )
        })?;
    let locator = evidence.locator.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-log-locator",
            "No log locator",
            "this evidence has no locator to fetch lines from",
        )
    })?;
    let lines = app
        .log_stores
        .fetch(locator, limit as usize)
        .await
        .map_err(|error| {
            use sensor::logs::LogError;
            let (status, slug, title) = match &error {
                LogError::NotConfigured(_) | LogError::Unsupported(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "no-log-store",
                    "No log store for this locator",
                ),
                LogError::Timeout(_) => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "log-store-timeout",
                    "The log store did not answer in time",
                ),
                LogError::Failed(_) => (
                    StatusCode::BAD_GATEWAY,
                    "log-store-failed",
                    "The log store failed",
                ),
            };
            Problem::new(status, slug, title, error.to_string())
        })?;
    Ok(Json(lines))
}

fn sensor_of(app: &AppState) -> Result<&sensor::Sensor, Problem> {
    app.sensor.as_deref().ok_or_else(|| {
        tracing::error!("evidence route called without a sensor configured");
        Problem::internal()
    })
}

fn problem_of(error: IngestError) -> Problem {
    match error {
        IngestError::Invalid(error) => Problem::invalid(error.field.clone(), error.to_string()),
        IngestError::Forbidden { field, message } => {
            let mut problem =
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", message);
            problem.field = Some(field);
            problem
        }
        IngestError::Orchestrator(error) => Problem::from(error),
    }
}
