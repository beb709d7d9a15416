//! W3C trace context (`traceparent`). Every request and every message belongs to a trace: a
//! request continues the caller's trace or starts one, and each unit of work (a request, a
//! consumed message, a step) is a span of its own whose id becomes the parent of what it sends.

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits: the span this context names.
    pub span_id: String,
    pub sampled: bool,
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
        })
    }

    /// A new trace.
    pub fn root() -> Self {
        Self {
            trace_id: Uuid::new_v4().simple().to_string(),
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// A span inside this one's trace.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: new_span_id(),
            sampled: self.sampled,
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
}

/// The span of one consumed message: a child of the message's trace context, named by the
/// consumer and the message, so everything logged while handling it carries its trace.
pub fn consume_span(consumer: &str, envelope: &crate::Envelope) -> tracing::Span {
    let parent = envelope
        .traceparent
        .as_deref()
        .and_then(TraceContext::parse);
    let trace = parent
        .as_ref()
        .map_or_else(TraceContext::root, TraceContext::child);
    tracing::info_span!(
        "consume",
        otel.name = %format!("consume {}", envelope.kind),
        consumer = %consumer,
        message_id = %envelope.id,
        kind = %envelope.kind,
        case_id = %envelope.subject,
        trace_id = %trace.trace_id,
        span_id = %trace.span_id,
        parent_span_id = parent.as_ref().map(|p| p.span_id.as_str()),
    )
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
}
