//! Change events: deploys and configuration changes, in the shape of PagerDuty's Change Events
//! API v2 (`payload.summary`, `payload.timestamp`, `payload.source`, `payload.custom_details`,
//! `links`; `routing_key` is accepted and ignored), so that CI/CD tools that already send them
//! can send to opscase. Two fields are opscase's own: `kind` (`deploy`, the default, or
//! `config`) and the `service` changed, given as `service` or `payload.custom_details.service`.
//! A change opens no case: the analyst reads recent changes when it examines one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::events::{read_links, MAX_PAYLOAD_TEXT};
use super::{object, optional_string, required, string, time, IntakeError};
use crate::signal::Link;

/// The kinds of change, as their envelopes' `kind`.
pub const CHANGE_KINDS: [&str; 2] = ["deploy", "config"];

/// A change event read.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// `deploy` or `config`.
    pub kind: String,
    pub service: String,
    pub summary: String,
    /// What made the change (`payload.source`: `argo-cd`, `github-actions`, ...).
    pub source: Option<String>,
    /// When it happened (`payload.timestamp`; the time received when absent).
    pub at: Option<DateTime<Utc>>,
    /// `custom_details` strings (the rest is kept in the raw event), with `tenant` when given.
    pub details: BTreeMap<String, String>,
    pub links: Vec<Link>,
    pub raw: Value,
}

impl ChangeEvent {
    /// The tenant the change names (`custom_details.tenant`), if any.
    pub fn tenant_label(&self) -> Option<&str> {
        self.details
            .get("tenant")
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }
}

/// Read one change event.
pub fn changes(body: &Value) -> Result<ChangeEvent, IntakeError> {
    let top = object(body, "")?;
    // PagerDuty's integration key: not used, but bounded like the events' one.
    if optional_string(top, "", "routing_key")?.is_some_and(|key| key.chars().count() > 128) {
        return Err(IntakeError::new(
            "routing_key",
            "is longer than 128 characters",
        ));
    }
    let kind = optional_string(top, "", "kind")?.unwrap_or("deploy");
    if !CHANGE_KINDS.contains(&kind) {
        return Err(IntakeError::new(
            "kind",
            format!("is {kind:?}; expected deploy or config"),
        ));
    }
    let payload = object(required(top, "", "payload")?, "payload")?;
    let summary = string(required(payload, "payload", "summary")?, "payload.summary")?;
    if summary.trim().is_empty() || summary.chars().count() > MAX_PAYLOAD_TEXT {
        return Err(IntakeError::new(
            "payload.summary",
            format!("must be 1 to {MAX_PAYLOAD_TEXT} characters"),
        ));
    }
    let at = payload
        .get("timestamp")
        .filter(|v| !v.is_null())
        .map(|v| time(v, "payload.timestamp"))
        .transpose()?;
    let source = optional_string(payload, "payload", "source")?.map(str::to_string);
    if source
        .as_ref()
        .is_some_and(|source| source.chars().count() > MAX_PAYLOAD_TEXT)
    {
        return Err(IntakeError::new(
            "payload.source",
            format!("is longer than {MAX_PAYLOAD_TEXT} characters"),
        ));
    }
    let mut details = BTreeMap::new();
    if let Some(custom) = payload.get("custom_details").filter(|v| !v.is_null()) {
        let custom = object(custom, "payload.custom_details")?;
        // The two details opscase reads must be what they say; the rest is kept as sent.
        optional_string(custom, "payload.custom_details", "tenant")?;
        if let Some(service) = optional_string(custom, "payload.custom_details", "service")? {
            check_service(service, "payload.custom_details.service")?;
        }
        for (name, value) in custom {
            if let Some(text) = value.as_str() {
                details.insert(name.clone(), text.chars().take(MAX_PAYLOAD_TEXT).collect());
            }
        }
    }
    let service = match optional_string(top, "", "service")? {
        Some(service) => service.to_string(),
        None => details.get("service").cloned().ok_or_else(|| {
            IntakeError::new(
                "service",
                "is required (or payload.custom_details.service): the service that changed",
            )
        })?,
    };
    check_service(&service, "service")?;
    let service = service.trim().to_string();
    Ok(ChangeEvent {
        kind: kind.to_string(),
        service,
        summary: summary.trim().to_string(),
        source,
        at,
        details,
        links: read_links(top.get("links"))?,
        raw: body.clone(),
    })
}

/// A service name: 1 to 200 characters, not blank.
fn check_service(service: &str, field: &str) -> Result<(), IntakeError> {
    if service.trim().is_empty() || service.chars().count() > 200 {
        return Err(IntakeError::new(
            field,
            "must be 1 to 200 characters, not blank",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pagerduty_change_event_with_a_service_is_a_deploy() {
        let change = changes(&json!({
            "routing_key": "ignored",
            "payload": {"summary": "checkout 1.4.2 rolled out", "source": "argo-cd",
                        "timestamp": "2026-12-02T10:00:00Z",
                        "custom_details": {"service": "checkout", "version": "1.4.2", "n": 3}},
            "links": [{"href": "https://ci.example/run/7", "text": "pipeline"}]
        }))
        .unwrap();
        assert_eq!(change.kind, "deploy");
        assert_eq!(change.service, "checkout");
        assert_eq!(change.source.as_deref(), Some("argo-cd"));
        assert_eq!(change.details.get("version").unwrap(), "1.4.2");
        assert!(!change.details.contains_key("n"));
        assert_eq!(change.links.len(), 1);
        assert_eq!(change.at.unwrap().to_rfc3339(), "2026-12-02T10:00:00+00:00");
    }

    #[test]
    fn bad_changes_name_the_field() {
        let field = |body: Value| changes(&body).unwrap_err().field;
        assert_eq!(field(json!({"service": "a"})), "payload");
        assert_eq!(
            field(json!({"service": "a", "payload": {}})),
            "payload.summary"
        );
        assert_eq!(field(json!({"payload": {"summary": "x"}})), "service");
        assert_eq!(
            field(json!({"kind": "restart", "service": "a", "payload": {"summary": "x"}})),
            "kind"
        );
        assert_eq!(
            field(json!({"service": "a", "payload": {"summary": "x", "timestamp": "soon"}})),
            "payload.timestamp"
        );
        let config =
            changes(&json!({"kind": "config", "service": "a", "payload": {"summary": "x"}}));
        assert_eq!(config.unwrap().kind, "config");
    }
}
