//! Events in the shape of PagerDuty's Events API v2, so scripts and tools that speak it can
//! send to opscase.
//!
//! `event_action` is required: `trigger`, `acknowledge` or `resolve`. A trigger needs
//! `payload.summary`, `payload.source` and `payload.severity` (`critical`, `error`, `warning`
//! or `info`); without a `dedup_key` it gets a new one, returned to the sender. `acknowledge`
//! and `resolve` need the `dedup_key` of the trigger. The event becomes a signal whose
//! fingerprint is the `dedup_key`; its labels are `alertname` (`class`, else the summary),
//! `service` (`component`, else `source`), `source`, `component`, `group`, `class`,
//! `severity`, and `tenant` when `custom_details.tenant` is a string.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{object, optional_string, required, string, time, url, IntakeError, Limits};
use crate::signal::{Link, Signal, Source, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    Trigger,
    Acknowledge,
    Resolve,
}

/// An event read, with the `dedup_key` to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent {
    pub action: EventAction,
    pub dedup_key: String,
    pub signal: Signal,
}

const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];
/// PagerDuty's limit on `dedup_key`.
const MAX_DEDUP_KEY: usize = 255;
const MAX_LINKS: usize = 20;
/// Characters of `payload.summary` (PagerDuty's limit) and of its other text fields.
pub const MAX_PAYLOAD_TEXT: usize = 1024;

/// Read one event. `new_key` makes the `dedup_key` of a trigger that has none.
pub fn events(
    body: &Value,
    limits: &Limits,
    new_key: impl FnOnce() -> String,
) -> Result<ParsedEvent, IntakeError> {
    let top = object(body, "")?;
    let action = match string(required(top, "", "event_action")?, "event_action")? {
        "trigger" => EventAction::Trigger,
        "acknowledge" => EventAction::Acknowledge,
        "resolve" => EventAction::Resolve,
        other => {
            return Err(IntakeError::new(
                "event_action",
                format!("is {other:?}; expected trigger, acknowledge or resolve"),
            ))
        }
    };
    let given_key = optional_string(top, "", "dedup_key")?;
    if let Some(key) = given_key {
        if key.is_empty() || key.chars().count() > MAX_DEDUP_KEY {
            return Err(IntakeError::new(
                "dedup_key",
                format!("must be 1 to {MAX_DEDUP_KEY} characters"),
            ));
        }
    }
    if let Some(routing_key) = optional_string(top, "", "routing_key")? {
        if routing_key.chars().count() > 128 {
            return Err(IntakeError::new(
                "routing_key",
                "is longer than 128 characters",
            ));
        }
    }
    let dedup_key = match (given_key, action) {
        (Some(key), _) => key.to_string(),
        (None, EventAction::Trigger) => new_key(),
        (None, _) => {
            return Err(IntakeError::new(
                "dedup_key",
                "is required to acknowledge or resolve",
            ))
        }
    };
    let links = read_links(top.get("links"))?;
    let status = match action {
        EventAction::Trigger => Status::Firing,
        EventAction::Acknowledge => Status::Acknowledged,
        EventAction::Resolve => Status::Resolved,
    };
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    let mut summary = None;
    let mut severity = String::new();
    let mut starts_at = None;
    match (top.get("payload").filter(|p| !p.is_null()), action) {
        (None, EventAction::Trigger) => {
            return Err(IntakeError::new("payload", "is required to trigger"))
        }
        (None, _) => {}
        (Some(payload), _) => {
            let payload = object(payload, "payload")?;
            let text = |name: &str, required_here: bool| -> Result<Option<String>, IntakeError> {
                let value = if required_here {
                    Some(string(
                        required(payload, "payload", name)?,
                        &format!("payload.{name}"),
                    )?)
                } else {
                    optional_string(payload, "payload", name)?
                };
                match value {
                    Some(text) if text.chars().count() > MAX_PAYLOAD_TEXT => Err(IntakeError::new(
                        format!("payload.{name}"),
                        format!("is longer than {MAX_PAYLOAD_TEXT} characters"),
                    )),
                    Some(text) => Ok(Some(text.to_string())),
                    None => Ok(None),
                }
            };
            let trigger = action == EventAction::Trigger;
            summary = text("summary", trigger)?;
            let source = text("source", trigger)?;
            if let Some(given) = text("severity", trigger)? {
                if !SEVERITIES.contains(&given.as_str()) {
                    return Err(IntakeError::new(
                        "payload.severity",
                        format!("is {given:?}; expected critical, error, warning or info"),
                    ));
                }
                severity = given;
            }
            if let Some(value) = payload.get("timestamp").filter(|v| !v.is_null()) {
                starts_at = Some(time(value, "payload.timestamp")?);
            }
            let component = text("component", false)?;
            let group = text("group", false)?;
            let class = text("class", false)?;
            let alertname = class.clone().or_else(|| summary.clone());
            let service = component.clone().or_else(|| source.clone());
            for (name, value) in [
                ("alertname", alertname),
                ("service", service),
                ("source", source),
                ("component", component),
                ("group", group),
                ("class", class),
            ] {
                if let Some(value) = value.filter(|v| !v.is_empty()) {
                    labels.insert(name.to_string(), value);
                }
            }
            if !severity.is_empty() {
                labels.insert("severity".into(), severity.clone());
            }
            if let Some(details) = payload.get("custom_details").filter(|d| !d.is_null()) {
                if !details.is_object() {
                    return Err(IntakeError::new(
                        "payload.custom_details",
                        "must be an object",
                    ));
                }
                match details.get("tenant") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(tenant)) => {
                        labels.insert("tenant".into(), tenant.clone());
                    }
                    Some(_) => {
                        return Err(IntakeError::new(
                            "payload.custom_details.tenant",
                            "must be a string (a tenant name)",
                        ))
                    }
                }
                let text = details.to_string();
                if text.chars().count() > limits.max_annotation_value {
                    return Err(IntakeError::new(
                        "payload.custom_details",
                        format!(
                            "is {} characters as JSON; at most {}",
                            text.chars().count(),
                            limits.max_annotation_value
                        ),
                    ));
                }
                annotations.insert("custom_details".into(), text);
            }
            if let Some(summary) = &summary {
                annotations.insert("summary".into(), summary.clone());
            }
        }
    }
    let title = summary.clone().unwrap_or_else(|| {
        format!(
            "{} of {dedup_key}",
            match action {
                EventAction::Acknowledge => "acknowledgement",
                _ => "resolution",
            }
        )
    });
    Ok(ParsedEvent {
        action,
        signal: Signal {
            source: Source::Events,
            status,
            severity,
            title,
            summary,
            labels,
            annotations,
            fingerprint: dedup_key.clone(),
            starts_at,
            ends_at: None,
            generator_url: None,
            links,
            references: Vec::new(),
            route: None,
            raw: json!(top),
        },
        dedup_key,
    })
}

pub(crate) fn read_links(value: Option<&Value>) -> Result<Vec<Link>, IntakeError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let items = value
        .as_array()
        .ok_or_else(|| IntakeError::new("links", "must be an array"))?;
    if items.len() > MAX_LINKS {
        return Err(IntakeError::new(
            "links",
            format!("at most {MAX_LINKS} links"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let path = format!("links[{index}]");
            let map = object(item, &path)?;
            let href = string(required(map, &path, "href")?, &format!("{path}.href"))?;
            let href = url(href, &format!("{path}.href"))?;
            if href.is_empty() {
                return Err(IntakeError::new(
                    format!("{path}.href"),
                    "must be an http:// or https:// URL",
                ));
            }
            let text = match optional_string(map, &path, "text")? {
                Some(text) if text.chars().count() > 256 => {
                    return Err(IntakeError::new(
                        format!("{path}.text"),
                        "is longer than 256 characters",
                    ))
                }
                Some(text) => text.to_string(),
                None => href.chars().take(256).collect(),
            };
            Ok(Link { href, text })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger() -> Value {
        json!({
            "routing_key": "R0123456789abcdef0123456789abcdef",
            "event_action": "trigger",
            "dedup_key": "disk-db-3",
            "payload": {
                "summary": "disk 95% full on db-3", "source": "db-3", "severity": "warning",
                "timestamp": "2026-12-02T10:00:00Z", "component": "postgres", "group": "db",
                "class": "disk", "custom_details": {"tenant": "t-9", "free_gb": 2}
            },
            "links": [{"href": "https://grafana/d/disk", "text": "disk dashboard"}],
            "client": "cron"
        })
    }

    #[test]
    fn a_trigger_becomes_a_firing_signal() {
        let parsed = events(&trigger(), &Limits::default(), || unreachable!()).unwrap();
        assert_eq!(parsed.action, EventAction::Trigger);
        assert_eq!(parsed.dedup_key, "disk-db-3");
        let signal = parsed.signal;
        assert_eq!(signal.status, Status::Firing);
        assert_eq!(signal.fingerprint, "disk-db-3");
        assert_eq!(signal.title, "disk 95% full on db-3");
        assert_eq!(signal.labels["alertname"], "disk");
        assert_eq!(signal.labels["service"], "postgres");
        assert_eq!(signal.labels["tenant"], "t-9");
        assert_eq!(signal.severity, "warning");
        assert_eq!(signal.links[0].text, "disk dashboard");
    }

    #[test]
    fn a_trigger_without_a_key_gets_one_and_a_resolve_needs_one() {
        let mut body = trigger();
        body.as_object_mut().unwrap().remove("dedup_key");
        let parsed = events(&body, &Limits::default(), || "new-key".into()).unwrap();
        assert_eq!(parsed.dedup_key, "new-key");
        let resolve = json!({"event_action": "resolve"});
        let error = events(&resolve, &Limits::default(), || unreachable!()).unwrap_err();
        assert_eq!(error.field, "dedup_key");
        let resolve = json!({"event_action": "resolve", "dedup_key": "disk-db-3"});
        let parsed = events(&resolve, &Limits::default(), || unreachable!()).unwrap();
        assert_eq!(parsed.signal.status, Status::Resolved);
        assert!(parsed.signal.labels.is_empty());
    }

    #[test]
    fn required_fields_and_bad_values_are_named() {
        for (pointer, field) in [
            ("/event_action", "event_action"),
            ("/payload", "payload"),
            ("/payload/summary", "payload.summary"),
            ("/payload/source", "payload.source"),
            ("/payload/severity", "payload.severity"),
        ] {
            let mut body = trigger();
            let (parent, name) = pointer.rsplit_once('/').unwrap();
            let parent = if parent.is_empty() {
                &mut body
            } else {
                body.pointer_mut(parent).unwrap()
            };
            parent.as_object_mut().unwrap().remove(name);
            let error = events(&body, &Limits::default(), || "k".into()).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
        for (pointer, value, field) in [
            ("/event_action", json!("page"), "event_action"),
            ("/payload/severity", json!("high"), "payload.severity"),
            ("/payload/timestamp", json!(17), "payload.timestamp"),
            ("/links", json!({"href": "x"}), "links"),
            ("/dedup_key", json!("k".repeat(256)), "dedup_key"),
        ] {
            let mut body = trigger();
            *body.pointer_mut(pointer).unwrap() = value;
            let error = events(&body, &Limits::default(), || "k".into()).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }
}
