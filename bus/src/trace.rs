//! Trace context. Every request and every message belongs to a trace: a request continues the
//! caller's trace or starts one, and each unit of work (a request, a relayed or consumed
//! message, a step) is a span of its own whose context becomes the parent of what it sends.
//!
//! Spans are `tracing` spans; with the OpenTelemetry layer installed (`opscase serve` always
//! installs it, exporting or not) each is an OpenTelemetry span and its ids are the SDK's. The
//! context crosses boundaries through the OpenTelemetry propagators ([`propagator`]): W3C
//! `traceparent` and `tracestate`, written and read; B3 (`b3`, `X-B3-TraceId`/`X-B3-SpanId`/
//! `X-B3-Sampled`), read only, for callers that still send it. Without the layer (a service
//! embedded in a test), [`continue_span`] still makes up ids the same way, so the timeline,
//! outbox headers and exemplars carry a trace whatever the subscriber.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// The headers (lowercase) the propagators read: collect these from a request or message.
pub const HEADERS: [&str; 6] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits: the span this context names.
    pub span_id: String,
    pub sampled: bool,
    /// The W3C `tracestate` that goes with it (empty when there is none).
    pub tracestate: String,
}

impl TraceContext {
    /// A valid `traceparent` (version 00 layout; other versions are read the same way, as the
    /// spec asks), or `None`.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let text = traceparent.trim().to_ascii_lowercase();
        let parts: Vec<&str> = text.split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = parts.len() >= 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && (parts[0] != "00" || parts.len() == 4)
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && parts[2] != "0".repeat(16)
            && hex(parts[3], 2);
        valid.then(|| Self {
            trace_id: parts[1].to_string(),
            span_id: parts[2].to_string(),
            sampled: u8::from_str_radix(parts[3], 16).is_ok_and(|flags| flags & 1 == 1),
            tracestate: String::new(),
        })
    }

    /// A new trace.
    pub fn root() -> Self {
        Self {
            trace_id: Uuid::new_v4().simple().to_string(),
            span_id: new_span_id(),
            sampled: true,
            tracestate: String::new(),
        }
    }

    /// A span inside this one's trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// A child of the `traceparent` given (when valid), else a new trace.
    pub fn continue_from(traceparent: Option<&str>) -> Self {
        traceparent
            .and_then(Self::parse)
            .map_or_else(Self::root, |parent| parent.child())
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }

    /// `tracestate`, when there is one.
    pub fn tracestate(&self) -> Option<String> {
        (!self.tracestate.is_empty()).then(|| self.tracestate.clone())
    }

    /// The context of an OpenTelemetry span, when it is valid.
    pub fn of_span_context(context: &SpanContext) -> Option<Self> {
        context.is_valid().then(|| Self {
            trace_id: context.trace_id().to_string(),
            span_id: context.span_id().to_string(),
            sampled: context.is_sampled(),
            tracestate: context.trace_state().header(),
        })
    }

    /// The context of a `tracing` span, when the OpenTelemetry layer made it one.
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        Self::of_span_context(span.context().span().span_context())
    }

    /// This context as a remote parent.
    pub fn to_otel(&self) -> Context {
        let trace_state = self
            .tracestate
            .parse()
            .unwrap_or_else(|_| TraceState::default());
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = SpanContext::new(
            TraceId::from_hex(&self.trace_id).unwrap_or(TraceId::INVALID),
            SpanId::from_hex(&self.span_id).unwrap_or(SpanId::INVALID),
            flags,
            true,
            trace_state,
        );
        Context::new().with_remote_span_context(context)
    }
}

/// W3C trace context, plus B3 accepted from callers. Installed as the global propagator by
/// `opscase serve`; the bus and the API use it directly, so they work without that.
pub fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(|| {
        // Later ones win: W3C over B3 when a caller sends both.
        TextMapCompositePropagator::new(vec![
            Box::new(B3Accepted),
            Box::new(TraceContextPropagator::new()),
        ])
    })
}

/// The remote parent found in `carrier` (lowercase header names; see [`HEADERS`]).
pub fn extract(carrier: &HashMap<String, String>) -> Context {
    propagator().extract(carrier)
}

/// Make `span` (created with empty `trace_id` and `span_id` fields) a child of the context in
/// `carrier`, or the root of a new trace; records its ids in those fields (so its log lines
/// carry them) and returns its context.
pub fn continue_span(span: &tracing::Span, carrier: &HashMap<String, String>) -> TraceContext {
    let parent = extract(carrier);
    let _ = span.set_parent(parent.clone());
    let trace = TraceContext::of_span(span).unwrap_or_else(|| {
        TraceContext::of_span_context(parent.span().span_context())
            .map_or_else(TraceContext::root, |parent| parent.child())
    });
    span.record("trace_id", trace.trace_id.as_str());
    span.record("span_id", trace.span_id.as_str());
    trace
}

/// Name `span` `name` (also once it started, which recording `otel.name` does not do).
pub fn rename(span: &tracing::Span, name: String) {
    span.record("otel.name", name.as_str());
    span.context().span().update_name(name);
}

/// The headers that carry `trace` onward (`traceparent`, and `tracestate` when there is one).
pub fn headers_of(trace: &TraceContext) -> HashMap<String, String> {
    let mut headers = HashMap::new();
    propagator().inject_context(&trace.to_otel(), &mut headers);
    headers
}

/// The headers that carry the current span's context onward, for an outgoing HTTP request;
/// empty outside a traced span.
pub fn current_headers() -> Vec<(String, String)> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut headers = HashMap::new();
    propagator().inject_context(&context, &mut headers);
    headers.into_iter().collect()
}

/// The span of one consumed message: a child of the message's trace context, named by the
/// consumer and the message, so everything logged while handling it carries its trace.
pub fn consume_span(consumer: &str, envelope: &crate::Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("consume {}", envelope.kind),
        otel.kind = "consumer",
        consumer = %consumer,
        message_id = %envelope.id,
        kind = %envelope.kind,
        case_id = %envelope.subject,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    continue_span(&span, &envelope.trace_carrier());
    span
}

/// The context of the current span, when it has one, else `fallback`: what a message sent from
/// here carries.
pub fn current_or(fallback: Option<TraceContext>) -> Option<TraceContext> {
    TraceContext::of_span(&tracing::Span::current()).or(fallback)
}

/// Reads B3, single (`b3: {trace}-{span}-{sampled}`) or multi-header (`X-B3-TraceId`, ...);
/// writes nothing (opscase speaks W3C onward). A 64-bit trace id is left-padded to 128 bits.
#[derive(Debug)]
struct B3Accepted;

impl TextMapPropagator for B3Accepted {
    fn inject_context(&self, _cx: &Context, _injector: &mut dyn Injector) {}

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let single = extractor.get("b3").and_then(|b3| {
            let mut parts = b3.trim().split('-');
            let trace = parts.next()?;
            let span = parts.next()?;
            Some((
                trace.to_string(),
                span.to_string(),
                parts.next().map(str::to_string),
            ))
        });
        let (trace, span, sampled) = match single {
            Some(found) => found,
            None => match (extractor.get("x-b3-traceid"), extractor.get("x-b3-spanid")) {
                (Some(trace), Some(span)) => (
                    trace.trim().to_string(),
                    span.trim().to_string(),
                    extractor.get("x-b3-sampled").map(str::to_string),
                ),
                _ => return cx.clone(),
            },
        };
        let trace = if trace.len() == 16 {
            format!("{trace:0>32}")
        } else {
            trace
        };
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(&trace, 32) || !hex(&span, 16) {
            return cx.clone();
        }
        // Unset means "decide yourself": opscase records it; "0" is honoured.
        let sampled = !matches!(sampled.as_deref().map(str::trim), Some("0" | "false"));
        let context = SpanContext::new(
            TraceId::from_hex(&trace).unwrap_or(TraceId::INVALID),
            SpanId::from_hex(&span).unwrap_or(SpanId::INVALID),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        );
        if context.is_valid() {
            cx.with_remote_span_context(context)
        } else {
            cx.clone()
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<Vec<String>> = OnceLock::new();
        FieldIter::new(FIELDS.get_or_init(|| HEADERS[2..].iter().map(|h| h.to_string()).collect()))
    }
}

fn new_span_id() -> String {
    let id = Uuid::new_v4().simple().to_string();
    id[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let parent =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(TraceContext::parse(&child.traceparent()), Some(child));
    }

    #[test]
    fn invalid_context_starts_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        let a = TraceContext::continue_from(Some("garbage"));
        let b = TraceContext::continue_from(None);
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(a.trace_id.len(), 32);
        assert_eq!(a.span_id.len(), 16);
    }

    fn carrier(headers: &[(&str, &str)]) -> HashMap<String, String> {
        headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect()
    }

    fn parent_of(headers: &[(&str, &str)]) -> Option<TraceContext> {
        TraceContext::of_span_context(extract(&carrier(headers)).span().span_context())
    }

    #[test]
    fn w3c_with_tracestate_and_b3_both_ways_are_read() {
        let w3c = parent_of(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=abc,other=1"),
        ])
        .unwrap();
        assert_eq!(w3c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(w3c.span_id, "00f067aa0ba902b7");
        assert_eq!(w3c.tracestate, "vendor=abc,other=1");
        let multi = parent_of(&[
            ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("X-B3-SpanId", "e457b5a2e4d86bd1"),
            ("X-B3-Sampled", "1"),
        ])
        .unwrap();
        assert_eq!(multi.trace_id, "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(multi.span_id, "e457b5a2e4d86bd1");
        assert!(multi.sampled);
        let single = parent_of(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]).unwrap();
        assert_eq!(single.trace_id, "0000000000000000a3ce929d0e0e4736");
        assert!(!single.sampled);
        assert_eq!(parent_of(&[("b3", "garbage")]), None);
        // W3C wins over B3.
        let both = parent_of(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        ])
        .unwrap();
        assert_eq!(both.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn without_the_layer_a_span_still_continues_the_trace() {
        let span = tracing::info_span!(
            "request",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty
        );
        let trace = continue_span(
            &span,
            &carrier(&[
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "vendor=abc"),
            ]),
        );
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(trace.span_id, "00f067aa0ba902b7");
        assert_eq!(trace.tracestate, "vendor=abc");
        let headers = headers_of(&trace);
        assert_eq!(headers["traceparent"], trace.traceparent());
        assert_eq!(headers["tracestate"], "vendor=abc");
    }
}
