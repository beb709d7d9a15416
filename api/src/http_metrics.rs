//! HTTP RED metrics: requests by method, route template and status, and their durations
//! (with the request's trace as exemplar). Routes are labelled by template (`/v1/cases/{id}`),
//! never by a case id or key, so the label space stays small.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use orchestrator::exposition::{TraceExemplar, TracedHistogram};
use orchestrator::Metrics;
use prometheus::{IntCounterVec, Opts};
use prometheus_client::encoding::EncodeLabelSet;

use crate::request_id;

/// Requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// The labels of `http_request_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    durations: TracedHistogram<RouteLabels>,
}

impl HttpMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by method, route template and status.",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let durations = metrics.traced_histogram(
            "http_request_duration_seconds",
            "HTTP request durations by method and route template.",
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
        );
        // A second registration (several routers on one registry, as in tests) leaves the
        // first in place.
        let _ = metrics.registry.register(Box::new(requests.clone()));
        Self {
            requests,
            durations,
        }
    }
}

pub async fn observe(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let trace = request_id::current_trace().map(|trace| TraceExemplar::of(&trace));
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED.to_string(), |path| path.as_str().to_string());
    // The request's span is named by its route template, as OpenTelemetry names HTTP spans.
    bus::trace::rename(&tracing::Span::current(), format!("{method} {route}"));
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .inc();
    metrics.durations.observe(
        &RouteLabels { method, route },
        started.elapsed().as_secs_f64(),
        trace,
    );
    response
}
