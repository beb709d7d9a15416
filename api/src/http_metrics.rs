//! HTTP RED metrics: requests by method, route template and status, and their durations.
//! Routes are labelled by template (`/v1/cases/{id}`), never by a case id or key, so the label
//! space stays small.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Requests that matched no route.
const UNMATCHED: &str = "unmatched";

#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    durations: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by method, route template and status.",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request durations by method and route template.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        // A second registration (several routers on one registry, as in tests) reuses the first.
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(durations.clone()));
        Self {
            requests,
            durations,
        }
    }
}

pub async fn observe(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED.to_string(), |path| path.as_str().to_string());
    // The request's span is named by its route template, as OpenTelemetry names HTTP spans.
    tracing::Span::current().record("otel.name", format!("{method} {route}"));
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .inc();
    metrics
        .durations
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}
