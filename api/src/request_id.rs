//! `X-Request-Id`: taken from the client when it is sane, made up otherwise, echoed on every
//! response and available to error bodies and logs while the request runs.

use std::collections::HashMap;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
    static TRACE: bus::TraceContext;
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The trace context of the request being handled (its own span), if any.
pub fn current_trace() -> Option<bus::TraceContext> {
    TRACE.try_with(Clone::clone).ok()
}

/// The `traceparent` of the request being handled (its own span, in the caller's trace or a
/// new one): what the timeline and the outbox record, and the parent of what it causes.
pub fn current_traceparent() -> Option<String> {
    TRACE.try_with(bus::TraceContext::traceparent).ok()
}

/// The `tracestate` that goes with [`current_traceparent`], if the caller sent one.
pub fn current_tracestate() -> Option<String> {
    TRACE.try_with(bus::TraceContext::tracestate).ok().flatten()
}

pub async fn middleware(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable(v))
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_string);
    // The caller's trace context: W3C `traceparent`/`tracestate`, or B3.
    let carrier: HashMap<String, String> = bus::trace::HEADERS
        .iter()
        .filter_map(|name| {
            let value = request.headers().get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    // `otel.name` becomes "METHOD /route/{template}" once routing matched (http_metrics).
    let span = tracing::info_span!(
        "request",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let trace = bus::trace::continue_span(&span, &carrier);
    let handled = tracing::Instrument::instrument(TRACE.scope(trace, next.run(request)), span);
    let mut response = REQUEST_ID.scope(id.clone(), handled).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

fn is_acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}
