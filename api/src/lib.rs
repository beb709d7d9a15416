//! The HTTP API of opscase: routes, problem+json errors, request ids, OpenAPI.

// `Problem` (~200 bytes) is the error of request handlers; boxing it would buy nothing next to
// the I/O each request does.
#![allow(clippy::result_large_err)]

pub mod cases;
pub mod extract;
pub mod openapi;
pub mod problem;
pub mod request_id;
pub mod system;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use orchestrator::Orchestrator;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::problem::Problem;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    /// Answer 428 to a transition with neither If-Match nor expected_version.
    pub require_precondition: bool,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            require_precondition: false,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Arc<Orchestrator>,
    pub settings: Arc<ApiSettings>,
}

/// The whole HTTP surface of opscase.
pub fn app(state: AppState) -> Router {
    let settings = state.settings.clone();
    let v1 = Router::new()
        .route("/v1/cases", post(cases::open_case).get(cases::list_cases))
        .route("/v1/cases/{id}", get(cases::get_case))
        .route("/v1/cases/{id}/timeline", get(cases::timeline))
        .route("/v1/cases/{id}/transition", patch(cases::transition))
        .route("/v1/cases/{id}/plans", get(cases::plans))
        .route("/v1/cases/{id}/decisions", get(cases::decisions))
        .route("/v1/schemas/change-plan", get(system::change_plan_schema));
    let seed_aliases = Router::new()
        .route("/case/create", post(cases::open_case_alias))
        .route("/case/{id}", get(cases::get_case_alias))
        .route("/case/{id}/timeline", get(cases::timeline_alias))
        .route("/case/{id}/transition", patch(cases::transition_alias));
    let system = Router::new()
        .route("/livez", get(system::livez))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics));
    Router::new()
        .merge(v1)
        .merge(seed_aliases)
        .merge(system)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(middleware::from_fn_with_state(settings, timeout))
        .layer(middleware::from_fn(request_id::middleware))
}

async fn timeout(
    State(settings): State<Arc<ApiSettings>>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(settings.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Request timed out",
            format!(
                "the request took longer than {}s and was abandoned; an unfinished transaction was rolled back",
                settings.request_timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

async fn not_found(request: Request) -> Problem {
    Problem::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!(
            "{} is not supported on {}",
            request.method(),
            request.uri().path()
        ),
    )
}
