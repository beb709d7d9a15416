use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A CloudEvents 1.0 envelope in JSON format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub specversion: String,
    /// The message id: stable across retries, sent as `Nats-Msg-Id`.
    pub id: Uuid,
    /// Who produced it, e.g. `opscase/orchestrator`.
    pub source: String,
    /// The subject it is published on, e.g. `evt.case.transition.v1`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The case id.
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    /// W3C trace context of the request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    pub data: Value,
}

impl Envelope {
    pub fn new(
        id: Uuid,
        source: &str,
        kind: &str,
        subject: &str,
        time: DateTime<Utc>,
        data: Value,
    ) -> Self {
        Self {
            specversion: "1.0".into(),
            id,
            source: source.into(),
            kind: kind.into(),
            subject: subject.into(),
            time,
            datacontenttype: "application/json".into(),
            traceparent: None,
            tracestate: None,
            data,
        }
    }

    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn with_tracestate(mut self, tracestate: Option<String>) -> Self {
        self.tracestate = tracestate;
        self
    }

    /// Carry `trace` (its `traceparent` and `tracestate`).
    pub fn with_trace(mut self, trace: Option<&crate::TraceContext>) -> Self {
        self.traceparent = trace.map(crate::TraceContext::traceparent);
        self.tracestate = trace.and_then(crate::TraceContext::tracestate);
        self
    }

    /// The trace headers this message carries, for [`crate::trace::extract`].
    pub fn trace_carrier(&self) -> std::collections::HashMap<String, String> {
        [
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.clone()?)))
        .collect()
    }

    /// The trace context this message carries, if valid.
    pub fn trace(&self) -> Option<crate::TraceContext> {
        let mut trace = crate::TraceContext::parse(self.traceparent.as_deref()?)?;
        trace.tracestate = self.tracestate.clone().unwrap_or_default();
        Some(trace)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_cloudevents_json() {
        let id = Uuid::now_v7();
        let envelope = Envelope::new(
            id,
            "opscase/orchestrator",
            "evt.case.transition.v1",
            "case-1",
            Utc::now(),
            serde_json::json!({"to": "NEW"}),
        )
        .with_traceparent(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ));
        let json: Value = serde_json::from_slice(&envelope.to_json()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "evt.case.transition.v1");
        assert_eq!(json["id"], id.to_string());
        assert_eq!(json["subject"], "case-1");
        assert_eq!(json["data"]["to"], "NEW");
        assert_eq!(Envelope::from_json(&envelope.to_json()).unwrap(), envelope);
    }
}
