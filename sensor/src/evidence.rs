//! Evidence of a case: what is checked before it is kept, its content hash (adding the same
//! evidence twice keeps one), and the link an operator clicks through to.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::intake::IntakeError;
use crate::store::{Evidence, Locator, LogSystem};

pub const KINDS: [&str; 6] = ["log", "metric", "trace", "alert", "runbook", "url"];

/// `POST /v1/cases/{id}/evidence`: one of `locator`, `ref` or `url` (a locator or a reference
/// may carry a `url` too).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvidence {
    /// `log`, `metric`, `trace`, `alert`, `runbook` or `url`.
    pub kind: String,
    pub title: String,
    pub note: Option<String>,
    pub locator: Option<Locator>,
    /// A row opscase holds: `{"table": "event_envelope", "keys": {"id": "..."}}`.
    #[serde(rename = "ref")]
    #[schema(value_type = Option<Object>)]
    pub reference: Option<Value>,
    pub url: Option<String>,
}

impl NewEvidence {
    /// Check it and make the evidence `who` adds to `case_id`.
    pub fn into_evidence(
        self,
        case_id: Uuid,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<Evidence, IntakeError> {
        if !KINDS.contains(&self.kind.as_str()) {
            return Err(IntakeError::new(
                "kind",
                format!("is {:?}; expected one of {}", self.kind, KINDS.join(", ")),
            ));
        }
        let title = self.title.trim().to_string();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(IntakeError::new("title", "must be 1 to 200 characters"));
        }
        if self
            .note
            .as_ref()
            .is_some_and(|note| note.chars().count() > 4096)
        {
            return Err(IntakeError::new("note", "is longer than 4096 characters"));
        }
        if self.locator.is_none() && self.reference.is_none() && self.url.is_none() {
            return Err(IntakeError::new(
                "locator",
                "one of locator, ref or url is required",
            ));
        }
        if self.locator.is_some() && self.reference.is_some() {
            return Err(IntakeError::new("ref", "give a locator or a ref, not both"));
        }
        if let Some(url) = &self.url {
            let web = url.starts_with("http://") || url.starts_with("https://");
            if url.chars().count() > 4096 || !web {
                return Err(IntakeError::new(
                    "url",
                    "must be an http:// or https:// URL of at most 4096 characters",
                ));
            }
        }
        let mut locator = self.locator;
        if let Some(locator) = &mut locator {
            check_locator(locator)?;
            if locator.attributes.is_null() {
                locator.attributes = Value::Object(Default::default());
            }
        }
        if let Some(reference) = &self.reference {
            check_reference(reference)?;
        }
        let mut evidence = Evidence {
            id: Uuid::now_v7(),
            case_id,
            kind: self.kind,
            title,
            note: self.note,
            locator,
            reference: self.reference,
            url: self.url,
            href: None,
            created_by: who.to_string(),
            created_at: now,
            content_hash: String::new(),
        };
        evidence.content_hash = content_hash(&evidence);
        Ok(evidence)
    }
}

fn check_locator(locator: &Locator) -> Result<(), IntakeError> {
    let system = locator.system().ok_or_else(|| {
        IntakeError::new(
            "locator.system",
            format!(
                "is {:?}; expected loki, openobserve or prometheus",
                locator.system
            ),
        )
    })?;
    if locator.query.trim().is_empty() || locator.query.chars().count() > 4096 {
        return Err(IntakeError::new(
            "locator.query",
            "must be 1 to 4096 characters, not all whitespace",
        ));
    }
    if let (Some(from), Some(to)) = (locator.from, locator.to) {
        if from > to {
            return Err(IntakeError::new("locator.from", "is after locator.to"));
        }
    }
    if system == LogSystem::OpenObserve && locator.dataset.as_deref().is_none_or(|d| d.is_empty()) {
        return Err(IntakeError::new(
            "locator.dataset",
            "is required for openobserve (the stream)",
        ));
    }
    for (field, value) in [("dataset", &locator.dataset), ("org", &locator.org)] {
        if value.as_ref().is_some_and(|v| v.chars().count() > 256) {
            return Err(IntakeError::new(
                format!("locator.{field}"),
                "is longer than 256 characters",
            ));
        }
    }
    match &locator.attributes {
        Value::Null => {}
        Value::Object(attributes) => {
            if attributes.len() > 32 {
                return Err(IntakeError::new(
                    "locator.attributes",
                    "has more than 32 entries",
                ));
            }
            for (name, value) in attributes {
                if !is_key_value(value) {
                    return Err(IntakeError::new(
                        format!("locator.attributes.{name}"),
                        "must be a string (at most 256 characters), an integer (at most 2^53 \
                         in magnitude) or a boolean",
                    ));
                }
            }
        }
        _ => return Err(IntakeError::new("locator.attributes", "must be an object")),
    }
    Ok(())
}

fn check_reference(reference: &Value) -> Result<(), IntakeError> {
    let fields = reference
        .as_object()
        .ok_or_else(|| IntakeError::new("ref", "must be an object"))?;
    if let Some(unknown) = fields
        .keys()
        .find(|k| !["table", "keys"].contains(&k.as_str()))
    {
        return Err(IntakeError::new(
            format!("ref.{unknown}"),
            "is not a field of ref (table, keys)",
        ));
    }
    let table = reference
        .get("table")
        .and_then(Value::as_str)
        .ok_or_else(|| IntakeError::new("ref.table", "is required (a table name)"))?;
    let identifier = (1..=63).contains(&table.len())
        && table
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !identifier {
        return Err(IntakeError::new("ref.table", "is not a table name"));
    }
    let keys = reference
        .get("keys")
        .and_then(Value::as_object)
        .filter(|keys| !keys.is_empty() && keys.len() <= 8)
        .ok_or_else(|| IntakeError::new("ref.keys", "must be an object of 1 to 8 keys"))?;
    for (name, value) in keys {
        if !is_key_value(value) {
            return Err(IntakeError::new(
                format!("ref.keys.{name}"),
                "must be a string (at most 256 characters), an integer (at most 2^53 in \
                 magnitude) or a boolean",
            ));
        }
    }
    Ok(())
}

/// The largest integer every JSON reader (and PostgreSQL's jsonb) round-trips exactly.
pub const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// A key of a row: a short string, a safe integer, or a boolean.
fn is_key_value(value: &Value) -> bool {
    match value {
        Value::String(text) => text.chars().count() <= 256,
        Value::Bool(_) => true,
        Value::Number(number) => number
            .as_f64()
            .is_some_and(|n| n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER),
        _ => false,
    }
}

/// The same content on the same case is the same evidence.
pub fn content_hash(evidence: &Evidence) -> String {
    let canonical = json!({
        "kind": evidence.kind, "title": evidence.title, "note": evidence.note,
        "locator": evidence.locator, "ref": evidence.reference, "url": evidence.url,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// Base URLs of the UIs evidence links point into.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSettings {
    /// Grafana, for Explore links to Loki and Prometheus queries.
    pub grafana_url: Option<String>,
    /// The uid of Grafana's Loki data source.
    pub grafana_loki_uid: Option<String>,
    /// The uid of Grafana's Prometheus data source.
    pub grafana_prometheus_uid: Option<String>,
    /// Prometheus itself, for graph links when there is no Grafana.
    pub prometheus_url: Option<String>,
    /// OpenObserve's web UI.
    pub openobserve_url: Option<String>,
}

impl LinkSettings {
    /// Where an operator clicks through to: the evidence's URL, else its locator's query
    /// opened in the configured UI, with the same time range.
    pub fn href(&self, evidence: &Evidence) -> Option<String> {
        if let Some(url) = &evidence.url {
            return Some(url.clone());
        }
        let locator = evidence.locator.as_ref()?;
        match locator.system()? {
            LogSystem::Loki => self.explore(locator, "loki", self.grafana_loki_uid.as_deref()),
            LogSystem::Prometheus => self
                .explore(
                    locator,
                    "prometheus",
                    self.grafana_prometheus_uid.as_deref(),
                )
                .or_else(|| self.prometheus_graph(locator)),
            LogSystem::OpenObserve => self.openobserve_logs(locator),
        }
    }

    /// Grafana Explore with the query and range in its `panes` state (Grafana 10 and later).
    fn explore(&self, locator: &Locator, kind: &str, uid: Option<&str>) -> Option<String> {
        let base = self.grafana_url.as_deref()?.trim_end_matches('/');
        let uid = uid?;
        let (from, to) = range_ms(locator);
        let panes = json!({"a": {
            "datasource": uid,
            "queries": [{"refId": "A", "expr": locator.query,
                         "datasource": {"type": kind, "uid": uid}}],
            "range": {"from": from, "to": to},
        }});
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("schemaVersion", "1")
            .append_pair("panes", &panes.to_string())
            .append_pair("orgId", "1")
            .finish();
        Some(format!("{base}/explore?{query}"))
    }

    fn prometheus_graph(&self, locator: &Locator) -> Option<String> {
        let base = self.prometheus_url.as_deref()?.trim_end_matches('/');
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("g0.expr", &locator.query)
            .append_pair("g0.tab", "0");
        if let (Some(from), Some(to)) = (locator.from, locator.to) {
            let seconds = (to - from).num_seconds().max(1);
            query
                .append_pair("g0.range_input", &format!("{seconds}s"))
                .append_pair("g0.end_input", &to.format("%Y-%m-%d %H:%M:%S").to_string());
        }
        Some(format!("{base}/graph?{}", query.finish()))
    }

    /// OpenObserve's logs page: stream, organisation, range in microseconds, and the SQL
    /// query base64-encoded, as its UI writes them.
    fn openobserve_logs(&self, locator: &Locator) -> Option<String> {
        let base = self.openobserve_url.as_deref()?.trim_end_matches('/');
        let (from, to) = range_ms(locator);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("stream", locator.dataset.as_deref().unwrap_or_default())
            .append_pair(
                "org_identifier",
                locator.org.as_deref().unwrap_or("default"),
            )
            .append_pair("stream_type", "logs")
            .append_pair("from", &(from * 1000).to_string())
            .append_pair("to", &(to * 1000).to_string())
            .append_pair("sql_mode", "true")
            .append_pair(
                "query",
                &base64::engine::general_purpose::STANDARD.encode(&locator.query),
            )
            .finish();
        Some(format!("{base}/web/logs?{query}"))
    }
}

/// The locator's range in Unix milliseconds; without one, the hour before `to` (or now).
fn range_ms(locator: &Locator) -> (i64, i64) {
    let to = locator.to.unwrap_or_else(Utc::now);
    let from = locator
        .from
        .unwrap_or_else(|| to - chrono::Duration::hours(1));
    (from.timestamp_millis(), to.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loki() -> Locator {
        Locator {
            system: "loki".into(),
            dataset: None,
            query: r#"{case_id="c1", step="restart"}"#.into(),
            from: Some("2026-12-02T10:00:00Z".parse().unwrap()),
            to: Some("2026-12-02T10:05:00Z".parse().unwrap()),
            org: None,
            attributes: json!({}),
        }
    }

    fn new(locator: Option<Locator>, reference: Option<Value>, url: Option<&str>) -> NewEvidence {
        NewEvidence {
            kind: "log".into(),
            title: "restart output".into(),
            note: None,
            locator,
            reference,
            url: url.map(String::from),
        }
    }

    #[test]
    fn evidence_needs_something_to_point_at_and_names_what_is_wrong() {
        let case = Uuid::now_v7();
        let now = Utc::now();
        let error = new(None, None, None)
            .into_evidence(case, "k", now)
            .unwrap_err();
        assert_eq!(error.field, "locator");
        let mut bad = loki();
        bad.system = "splunk".into();
        let error = new(Some(bad), None, None)
            .into_evidence(case, "k", now)
            .unwrap_err();
        assert_eq!(error.field, "locator.system");
        let error = new(
            None,
            Some(json!({"table": "x; drop", "keys": {"id": 1}})),
            None,
        )
        .into_evidence(case, "k", now)
        .unwrap_err();
        assert_eq!(error.field, "ref.table");
        let error = new(None, None, Some("ftp://x"))
            .into_evidence(case, "k", now)
            .unwrap_err();
        assert_eq!(error.field, "url");
        let mut o2 = loki();
        o2.system = "openobserve".into();
        let error = new(Some(o2), None, None)
            .into_evidence(case, "k", now)
            .unwrap_err();
        assert_eq!(error.field, "locator.dataset");
    }

    #[test]
    fn the_same_content_has_the_same_hash() {
        let case = Uuid::now_v7();
        let a = new(Some(loki()), None, None)
            .into_evidence(case, "k1", Utc::now())
            .unwrap();
        let b = new(Some(loki()), None, None)
            .into_evidence(case, "k2", Utc::now())
            .unwrap();
        assert_eq!(a.content_hash, b.content_hash);
        let c = new(Some(loki()), None, Some("https://x"))
            .into_evidence(case, "k1", Utc::now())
            .unwrap();
        assert_ne!(a.content_hash, c.content_hash);
    }

    #[test]
    fn links_open_the_query_in_the_configured_ui() {
        let settings = LinkSettings {
            grafana_url: Some("https://grafana.example/".into()),
            grafana_loki_uid: Some("loki-uid".into()),
            openobserve_url: Some("https://o2.example".into()),
            ..LinkSettings::default()
        };
        let evidence = new(Some(loki()), None, None)
            .into_evidence(Uuid::now_v7(), "k", Utc::now())
            .unwrap();
        let href = settings.href(&evidence).unwrap();
        assert!(href.starts_with("https://grafana.example/explore?schemaVersion=1&panes="));
        let panes: Value = serde_json::from_str(
            &form_urlencoded::parse(href.split_once('?').unwrap().1.as_bytes())
                .find(|(k, _)| k == "panes")
                .unwrap()
                .1,
        )
        .unwrap();
        assert_eq!(panes["a"]["queries"][0]["expr"], loki().query);
        assert_eq!(panes["a"]["range"]["from"], 1796205600000_i64);
        let mut o2 = loki();
        o2.system = "openobserve".into();
        o2.dataset = Some("opscase_steps".into());
        o2.query = "SELECT * FROM \"opscase_steps\"".into();
        let evidence = new(Some(o2), None, None)
            .into_evidence(Uuid::now_v7(), "k", Utc::now())
            .unwrap();
        let href = settings.href(&evidence).unwrap();
        assert!(href.starts_with("https://o2.example/web/logs?stream=opscase_steps"));
        assert!(href.contains("from=1796205600000000"), "{href}");
        let plain = new(None, None, Some("https://runbooks/x"))
            .into_evidence(Uuid::now_v7(), "k", Utc::now())
            .unwrap();
        assert_eq!(settings.href(&plain).as_deref(), Some("https://runbooks/x"));
        assert_eq!(LinkSettings::default().href(&evidence), None);
    }
}
