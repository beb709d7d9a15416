//! The HTTP API of opscase: routes, problem+json errors, request ids, OpenAPI.

// `Problem` (~200 bytes) is the error of request handlers; boxing it would buy nothing next to
// the I/O each request does.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod cases;
pub mod commands;
pub mod contract;
pub mod events;
pub mod evidence;
pub mod extract;
pub mod http_metrics;
pub mod ingest;
pub mod kb;
pub mod keys;
pub mod openapi;
mod policy;
pub mod problem;
pub mod request_id;
pub mod signals;
pub mod system;
pub mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::Router;
use orchestrator::Orchestrator;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::RateLimiter;
use crate::problem::Problem;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub body_limit_bytes: usize,
    /// Request-body bytes larger bodies may hold at once while they are read and parsed (see
    /// [`extract::BodyBudget`]); at least `body_limit_bytes`.
    pub body_buffer_bytes: usize,
    pub request_timeout: Duration,
    /// A body not read completely this long after its request arrived is answered 408.
    pub body_read_timeout: Duration,
    /// Answer 428 to a transition with neither If-Match nor expected_version.
    pub require_precondition: bool,
    /// Requests handled at once before new ones are refused with 503.
    pub max_in_flight: usize,
    /// Per-key token bucket: sustained requests per second (0 = unlimited) and burst.
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: f64,
    /// Origins browsers may call from; empty = no CORS headers at all.
    pub cors_allowed_origins: Vec<String>,
    /// The console's link to a trace (`{trace_id}` replaced).
    pub trace_url: Option<String>,
    /// `/metrics` needs the `metrics` or `admin` role; false opens it (an explicit choice).
    pub metrics_auth: bool,
    /// How long a command endpoint waits for the worker's answer by default (and at most).
    pub command_wait: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            body_buffer_bytes: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(10),
            require_precondition: false,
            max_in_flight: 1024,
            rate_limit_per_second: 200.0,
            rate_limit_burst: 400.0,
            cors_allowed_origins: Vec::new(),
            trace_url: None,
            metrics_auth: true,
            command_wait: Duration::from_secs(20),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Arc<Orchestrator>,
    pub settings: Arc<ApiSettings>,
    pub rate_limiter: Arc<RateLimiter>,
    /// The bus the outbox is relayed to, when there is one (for readiness).
    pub bus: Option<Arc<dyn bus::Transport>>,
    /// The gate policy, for ad-hoc steps.
    pub policy: Arc<gatekeeper::PolicySource>,
    /// Where `POST /v1/metrics/1m` writes (the verifier reads the same table).
    pub metric_store: Option<Arc<verifier::Metric1mStore>>,
    /// Signals in, evidence of cases (the sensor).
    pub sensor: Option<Arc<sensor::Sensor>>,
    /// Where evidence's log lines are read from.
    pub log_stores: Arc<sensor::logs::LogStores>,
    /// The analyst's live path, poked with the series each metric ingest writes.
    pub analyst: Option<Arc<analyst::live::Watcher>>,
    /// `kb_documents`, `kb_chunks`, `kb_search_seconds` in the service's registry.
    pub kb_metrics: Arc<librarian::KbMetrics>,
    /// The knowledge base: lexical search, hybrid when embeddings are configured.
    pub kb: Arc<librarian::KnowledgeBase>,
}

impl AppState {
    pub fn new(
        orchestrator: Arc<Orchestrator>,
        settings: ApiSettings,
        bus: Option<Arc<dyn bus::Transport>>,
    ) -> Self {
        let rate_limiter = Arc::new(RateLimiter::new(
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
        ));
        let kb_metrics = Arc::new(librarian::KbMetrics::register(
            &orchestrator.metrics().registry,
        ));
        let kb = Arc::new(librarian::KnowledgeBase::lexical(
            orchestrator.store().pool(),
            kb_metrics.clone(),
        ));
        Self {
            orchestrator,
            kb_metrics,
            kb,
            settings: Arc::new(settings),
            rate_limiter,
            bus,
            policy: Arc::new(gatekeeper::PolicySource::builtin()),
            metric_store: None,
            sensor: None,
            log_stores: Arc::new(sensor::logs::LogStores::default()),
            analyst: None,
        }
    }

    /// Take signals and evidence with `sensor`, reading log lines from `log_stores`.
    pub fn with_sensor(
        mut self,
        sensor: Arc<sensor::Sensor>,
        log_stores: Arc<sensor::logs::LogStores>,
    ) -> Self {
        self.sensor = Some(sensor);
        self.log_stores = log_stores;
        self
    }

    /// Judge ingested buckets with the analyst's rules as they arrive.
    pub fn with_analyst(mut self, analyst: Arc<analyst::live::Watcher>) -> Self {
        self.analyst = Some(analyst);
        self
    }

    /// Use `librarian` (and its metrics) for the knowledge base.
    pub fn with_librarian(mut self, librarian: Arc<librarian::KnowledgeBase>) -> Self {
        self.kb_metrics = librarian.metrics().clone();
        self.kb = librarian;
        self
    }

    pub fn with_metric_store(mut self, store: Arc<verifier::Metric1mStore>) -> Self {
        self.metric_store = Some(store);
        self
    }

    /// Use `policy` (the same file the gatekeeper reads) for ad-hoc steps.
    pub fn with_policy(mut self, policy: Arc<gatekeeper::PolicySource>) -> Self {
        self.policy = policy;
        self
    }
}

/// The whole HTTP surface of opscase. Everything needs an API key except health and the API
/// description.
pub fn app(state: AppState) -> Router {
    let settings = state.settings.clone();
    let http_metrics = http_metrics::HttpMetrics::register(state.orchestrator.metrics());
    let v1 = Router::new()
        .route("/v1/cases", post(cases::open_case).get(cases::list_cases))
        .route("/v1/cases/{id}", get(cases::get_case))
        .route("/v1/cases/{id}/timeline", get(cases::timeline))
        .route("/v1/cases/{id}/events", get(events::case_events))
        .route("/v1/cases/{id}/transition", patch(cases::transition))
        .route("/v1/cases/{id}/plans", get(cases::plans))
        .route("/v1/cases/{id}/decisions", get(cases::decisions))
        .route("/v1/cases/{id}/executions", get(cases::executions))
        .route("/v1/cases/{id}/verifications", get(cases::verifications))
        .route("/v1/cases/{id}/related", get(kb::related))
        .route("/v1/schemas/change-plan", get(system::change_plan_schema))
        .route("/v1/adapters", get(system::adapters))
        .route("/v1/metrics/1m", post(ingest::ingest_metric_1m))
        .route("/v1/metrics/calls5m", post(ingest::ingest_calls_5m))
        .route("/v1/signals/alertmanager", post(signals::alertmanager))
        .route("/v1/signals/grafana", post(signals::grafana))
        .route("/v1/signals/events", post(signals::events))
        .route("/v1/signals/changes", post(signals::changes))
        .route("/v1/cases/{id}/findings", get(evidence::list_findings))
        .route("/v1/cases/{id}/llm-calls", get(evidence::list_llm_calls))
        .route(
            "/v1/cases/{id}/evidence",
            post(evidence::add_evidence).get(evidence::list_evidence),
        )
        .route("/v1/evidence/{id}/lines", get(evidence::evidence_lines))
        .route("/v1/kb/docs", post(kb::add_doc).get(kb::list_docs))
        .route("/v1/kb/docs/{id}", get(kb::get_doc).delete(kb::delete_doc))
        .route("/v1/kb/search", get(kb::search))
        .route("/v1/templates", get(system::templates))
        .route("/v1/analysis/run", post(commands::analysis_run))
        .route("/v1/plan/generate", post(commands::plan_generate))
        .route("/v1/gate/eval", post(commands::gate_eval))
        .route("/v1/adapter/exec", post(commands::adapter_exec))
        .route("/v1/verify/run", post(commands::verify_run))
        .route("/v1/me", get(keys::me))
        .route("/v1/events", get(events::all_events));
    let seed_aliases = Router::new()
        .route("/case/create", post(cases::open_case_alias))
        .route("/case/{id}", get(cases::get_case_alias))
        .route("/case/{id}/timeline", get(cases::timeline_alias))
        .route("/case/{id}/transition", patch(cases::transition_alias))
        .route("/plan/generate", post(commands::plan_generate_alias))
        .route("/gate/eval", post(commands::gate_eval_alias))
        .route("/adapter/exec", post(commands::adapter_exec_alias))
        .route("/verify/run", post(commands::verify_run_alias));
    let admin = Router::new()
        .route("/v1/keys", post(keys::create_key).get(keys::list_keys))
        .route("/v1/keys/{id}", delete(keys::revoke_key));
    let (protected_metrics, open_metrics) = if settings.metrics_auth {
        (
            Router::new().route("/metrics", get(system::metrics)),
            Router::new(),
        )
    } else {
        (
            Router::new(),
            Router::new().route("/metrics", get(system::open_metrics)),
        )
    };
    let protected = Router::new()
        .merge(v1)
        .merge(seed_aliases)
        .merge(admin)
        .merge(protected_metrics)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    let open = Router::new().merge(open_metrics).merge(ui::routes()).merge(
        SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", openapi::document()),
    );
    // Work is refused (503) beyond `max_in_flight` requests at once.
    let work = Router::new()
        .merge(protected)
        .merge(open)
        .layer(middleware::from_fn_with_state(
            Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            auth::limit_in_flight,
        ));
    // Health is not work: a probe refused while the server is busy (or while slow clients
    // hold every slot) would get a healthy server restarted or taken out of service.
    let health = Router::new()
        .route("/livez", get(system::livez))
        .route("/readyz", get(system::readyz));
    let mut router = Router::new()
        .merge(work)
        .merge(health)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(axum::Extension(extract::BodyBudget::new(
            settings.body_buffer_bytes.max(settings.body_limit_bytes),
            settings.body_limit_bytes,
        )))
        .layer(middleware::from_fn_with_state(
            http_metrics,
            http_metrics::observe,
        ));
    if let Some(cors) = cors_layer(&settings.cors_allowed_origins) {
        router = router.layer(cors);
    }
    router
        .layer(middleware::from_fn_with_state(settings.clone(), timeout))
        .layer(middleware::from_fn(request_id::middleware))
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("tracestate"),
                HeaderName::from_static("b3"),
                HeaderName::from_static("x-b3-traceid"),
                HeaderName::from_static("x-b3-spanid"),
                HeaderName::from_static("x-b3-sampled"),
            ])
            .expose_headers([
                header::ETAG,
                header::RETRY_AFTER,
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("idempotent-replayed"),
            ]),
    )
}

/// The request timeout, and the deadline for the request's body (see [`extract::BodyDeadline`]),
/// both counted from when the request arrives.
async fn timeout(
    State(settings): State<Arc<ApiSettings>>,
    mut request: Request,
    next: Next,
) -> Response {
    request
        .extensions_mut()
        .insert(extract::BodyDeadline::after(settings.body_read_timeout));
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
