//! Payloads in: Alertmanager's webhook (v4), Grafana's alerting webhook and PagerDuty Events
//! API v2-shaped events, each read into [`Signal`]s. Unknown fields are accepted (newer senders
//! add some); a missing or mistyped required field, or one over a limit, is an
//! [`IntakeError`] naming it (`alerts[3].labels.service`), and nothing of the payload is used.

mod alertmanager;
mod changes;
mod events;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

pub use alertmanager::{alertmanager, grafana};
pub use changes::{changes, ChangeEvent, CHANGE_KINDS};
pub use events::{events, EventAction, ParsedEvent, MAX_PAYLOAD_TEXT};

/// What a payload may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Alerts in one payload (`sensor.max_alerts_per_payload`).
    pub max_alerts: usize,
    /// Labels (and, separately, annotations) of one alert.
    pub max_labels: usize,
    /// Characters of one label value.
    pub max_label_value: usize,
    /// Characters of one annotation value.
    pub max_annotation_value: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_alerts: 1000,
            max_labels: 64,
            max_label_value: 1024,
            max_annotation_value: 16 * 1024,
        }
    }
}

/// A payload that cannot be used, and the field that says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct IntakeError {
    /// A path into the payload: `status`, `alerts[2].startsAt`, `payload.severity`.
    pub field: String,
    pub message: String,
}

impl IntakeError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

pub(crate) fn object<'a>(
    value: &'a Value,
    path: &str,
) -> Result<&'a Map<String, Value>, IntakeError> {
    value.as_object().ok_or_else(|| {
        IntakeError::new(
            if path.is_empty() { "body" } else { path },
            "must be a JSON object",
        )
    })
}

pub(crate) fn required<'a>(
    map: &'a Map<String, Value>,
    path: &str,
    name: &str,
) -> Result<&'a Value, IntakeError> {
    match map.get(name) {
        None | Some(Value::Null) => Err(IntakeError::new(join(path, name), "is required")),
        Some(value) => Ok(value),
    }
}

pub(crate) fn string<'a>(value: &'a Value, field: &str) -> Result<&'a str, IntakeError> {
    value
        .as_str()
        .ok_or_else(|| IntakeError::new(field, "must be a string"))
}

pub(crate) fn optional_string<'a>(
    map: &'a Map<String, Value>,
    path: &str,
    name: &str,
) -> Result<Option<&'a str>, IntakeError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => string(value, &join(path, name)).map(Some),
    }
}

pub(crate) fn time(value: &Value, field: &str) -> Result<DateTime<Utc>, IntakeError> {
    let text = string(value, field)?;
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| IntakeError::new(field, format!("is not an RFC 3339 time: {e}")))
}

/// A map of strings (labels, annotations), within the limits.
pub(crate) fn string_map(
    value: &Value,
    field: &str,
    max_entries: usize,
    max_value: usize,
) -> Result<BTreeMap<String, String>, IntakeError> {
    let map = value
        .as_object()
        .ok_or_else(|| IntakeError::new(field, "must be an object of strings"))?;
    if map.len() > max_entries {
        return Err(IntakeError::new(
            field,
            format!("has {} entries; at most {max_entries}", map.len()),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in map {
        let entry = join(field, name);
        if name.is_empty() || name.chars().count() > 128 {
            return Err(IntakeError::new(entry, "names are 1 to 128 bytes"));
        }
        let text = value
            .as_str()
            .ok_or_else(|| IntakeError::new(&entry, "must be a string"))?;
        let chars = text.chars().count();
        if chars > max_value {
            return Err(IntakeError::new(
                entry,
                format!("is {chars} characters; at most {max_value}"),
            ));
        }
        out.insert(name.clone(), text.to_string());
    }
    Ok(out)
}

/// An optional map of strings.
pub(crate) fn optional_string_map(
    map: &Map<String, Value>,
    path: &str,
    name: &str,
    max_entries: usize,
    max_value: usize,
) -> Result<BTreeMap<String, String>, IntakeError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(value) => string_map(value, &join(path, name), max_entries, max_value),
    }
}

/// An http(s) URL, or an error naming the field.
pub(crate) fn url(text: &str, field: &str) -> Result<String, IntakeError> {
    if text.chars().count() > 4096 {
        return Err(IntakeError::new(field, "is longer than 4096 characters"));
    }
    if text.is_empty() || text.starts_with("http://") || text.starts_with("https://") {
        Ok(text.to_string())
    } else {
        Err(IntakeError::new(
            field,
            "must be an http:// or https:// URL",
        ))
    }
}
