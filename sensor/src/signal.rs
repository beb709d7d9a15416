//! A signal: one alert or event, whatever sent it, in the one shape correlation works on.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Who sent a signal (the `source` of its envelope and of the case it opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Alertmanager,
    Grafana,
    /// PagerDuty Events API v2-shaped events.
    Events,
    /// The analyst's anomaly findings.
    Analyst,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::Alertmanager,
        Source::Grafana,
        Source::Events,
        Source::Analyst,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Alertmanager => "alertmanager",
            Source::Grafana => "grafana",
            Source::Events => "events",
            Source::Analyst => "analyst",
        }
    }

    /// The envelope `kind` of what this source sends.
    pub fn kind(self) -> &'static str {
        match self {
            Source::Alertmanager | Source::Grafana => "alert",
            Source::Events => "event",
            Source::Analyst => "anomaly",
        }
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Firing,
    Resolved,
    /// Someone is on it (PagerDuty's `acknowledge`): noted, changes nothing.
    Acknowledged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
            Status::Acknowledged => "acknowledged",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "firing" => Some(Status::Firing),
            "resolved" => Some(Status::Resolved),
            "acknowledged" => Some(Status::Acknowledged),
            _ => None,
        }
    }
}

/// A link a sender attached (Grafana's dashboard and panel, PagerDuty's `links`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub href: String,
    pub text: String,
}

/// One alert or event, normalised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    pub source: Source,
    pub status: Status,
    /// As sent (lower-cased): `critical`, `warning`, `error`, `info`, ...; empty when none.
    pub severity: String,
    pub title: String,
    pub summary: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Identifies the alert across its deliveries (Alertmanager's fingerprint, PagerDuty's
    /// `dedup_key`).
    pub fingerprint: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub generator_url: Option<String>,
    pub links: Vec<Link>,
    /// Rows opscase holds that back the signal up (the analyst's metric window), kept as
    /// evidence of the case it goes to.
    pub references: Vec<Reference>,
    /// The route to take instead of the configured ones (the analyst's rule says it).
    #[serde(skip)]
    pub route: Option<crate::route::Route>,
    /// The alert as received, for the envelope (capped in size by the store).
    pub raw: Value,
}

/// A reference to a row opscase holds, and what it is evidence of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reference {
    /// An evidence kind: `metric`, `log`, ...
    pub kind: String,
    pub title: String,
    /// `{"table": ..., "keys": {...}}`.
    pub reference: Value,
}

impl Signal {
    /// What a repeated delivery of the same alert state repeats: the start and the status.
    pub fn state_key(&self) -> String {
        let start = self
            .starts_at
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into());
        format!("{start}|{}", self.status.as_str())
    }

    /// The tenant the signal names (its `tenant` label), if any.
    pub fn tenant_label(&self) -> Option<&str> {
        self.labels
            .get("tenant")
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }

    /// `alertname`, or the title when the sender has no such label.
    pub fn name(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .filter(|name| !name.is_empty())
            .unwrap_or(&self.title)
    }
}

/// A stable fingerprint of a label set, for senders that give none: the SHA-256 of the
/// sorted `name=value` pairs, 16 bytes in hex.
pub fn fingerprint_of(labels: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (name, value) in labels {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_depends_on_every_label_and_not_on_their_order() {
        let a: BTreeMap<_, _> = [("alertname", "X"), ("job", "api")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut b = a.clone();
        assert_eq!(fingerprint_of(&a), fingerprint_of(&b));
        b.insert("job".into(), "web".into());
        assert_ne!(fingerprint_of(&a), fingerprint_of(&b));
        // No ambiguity between a=bc and ab=c.
        let one: BTreeMap<_, _> = [("a".to_string(), "bc".to_string())].into();
        let two: BTreeMap<_, _> = [("ab".to_string(), "c".to_string())].into();
        assert_ne!(fingerprint_of(&one), fingerprint_of(&two));
    }
}
