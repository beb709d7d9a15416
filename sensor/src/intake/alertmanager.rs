//! Prometheus Alertmanager's webhook payload (version 4), and Grafana's alerting webhook, which
//! has the same alert shape plus `values`, `valueString` and links to its UI.
//!
//! Required: `receiver`, `status`, `groupKey`, `alerts`, and for each alert `status`,
//! `labels` and `startsAt`. Everything else is optional; unknown fields are ignored.

use serde_json::{json, Map, Value};

use super::{
    join, object, optional_string, optional_string_map, required, string, string_map, time, url,
    IntakeError, Limits,
};
use crate::signal::{fingerprint_of, Link, Signal, Source, Status};

/// Alertmanager sends this year for an alert that has not ended.
const NO_END_YEAR: i32 = 1;

pub fn alertmanager(body: &Value, limits: &Limits) -> Result<Vec<Signal>, IntakeError> {
    read(body, limits, Source::Alertmanager)
}

pub fn grafana(body: &Value, limits: &Limits) -> Result<Vec<Signal>, IntakeError> {
    read(body, limits, Source::Grafana)
}

fn read(body: &Value, limits: &Limits, source: Source) -> Result<Vec<Signal>, IntakeError> {
    let top = object(body, "")?;
    optional_string(top, "", "version")?;
    if let Some(truncated) = top.get("truncatedAlerts").filter(|v| !v.is_null()) {
        // JSON Schema's integers include 279.0.
        let integral = truncated
            .as_f64()
            .is_some_and(|n| n >= 0.0 && n.fract() == 0.0);
        if !integral {
            return Err(IntakeError::new(
                "truncatedAlerts",
                "must be an integer of at least 0",
            ));
        }
    }
    string(required(top, "", "receiver")?, "receiver")?;
    group_status(required(top, "", "status")?, "status")?;
    string(required(top, "", "groupKey")?, "groupKey")?;
    let group_labels = optional_string_map(
        top,
        "",
        "groupLabels",
        limits.max_labels,
        limits.max_label_value,
    )?;
    let common_annotations = optional_string_map(
        top,
        "",
        "commonAnnotations",
        limits.max_labels,
        limits.max_annotation_value,
    )?;
    optional_string_map(
        top,
        "",
        "commonLabels",
        limits.max_labels,
        limits.max_label_value,
    )?;
    if let Some(external) = optional_string(top, "", "externalURL")? {
        url(external, "externalURL")?;
    }
    let alerts = required(top, "", "alerts")?
        .as_array()
        .ok_or_else(|| IntakeError::new("alerts", "must be an array"))?;
    if alerts.len() > limits.max_alerts {
        return Err(IntakeError::new(
            "alerts",
            format!(
                "holds {} alerts; at most {} in one payload",
                alerts.len(),
                limits.max_alerts
            ),
        ));
    }
    alerts
        .iter()
        .enumerate()
        .map(|(index, alert)| {
            read_alert(
                alert,
                &format!("alerts[{index}]"),
                limits,
                source,
                &group_labels,
                &common_annotations,
            )
        })
        .collect()
}

fn group_status(value: &Value, field: &str) -> Result<Status, IntakeError> {
    match string(value, field)? {
        "firing" => Ok(Status::Firing),
        "resolved" => Ok(Status::Resolved),
        other => Err(IntakeError::new(
            field,
            format!("is {other:?}; expected firing or resolved"),
        )),
    }
}

fn read_alert(
    alert: &Value,
    path: &str,
    limits: &Limits,
    source: Source,
    group_labels: &std::collections::BTreeMap<String, String>,
    common_annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Signal, IntakeError> {
    let map = object(alert, path)?;
    let status = group_status(required(map, path, "status")?, &join(path, "status"))?;
    let labels = string_map(
        required(map, path, "labels")?,
        &join(path, "labels"),
        limits.max_labels,
        limits.max_label_value,
    )?;
    let mut annotations = optional_string_map(
        map,
        path,
        "annotations",
        limits.max_labels,
        limits.max_annotation_value,
    )?;
    for (name, value) in common_annotations {
        annotations
            .entry(name.clone())
            .or_insert_with(|| value.clone());
    }
    let starts_at = time(required(map, path, "startsAt")?, &join(path, "startsAt"))?;
    let ends_at = match map.get("endsAt") {
        None | Some(Value::Null) => None,
        Some(value) => Some(time(value, &join(path, "endsAt"))?).filter(|at| {
            use chrono::Datelike;
            at.year() != NO_END_YEAR
        }),
    };
    let generator_url = optional_string(map, path, "generatorURL")?
        .map(|text| url(text, &join(path, "generatorURL")))
        .transpose()?
        .filter(|text| !text.is_empty());
    let fingerprint = match optional_string(map, path, "fingerprint")? {
        Some(given) if !given.is_empty() => {
            if given.chars().count() > 128 {
                return Err(IntakeError::new(
                    join(path, "fingerprint"),
                    "is longer than 128 characters",
                ));
            }
            given.to_string()
        }
        _ => fingerprint_of(&labels),
    };
    let mut links = Vec::new();
    if source == Source::Grafana {
        for (name, text) in [
            ("dashboardURL", "Grafana dashboard"),
            ("panelURL", "Grafana panel"),
            ("silenceURL", "Silence in Grafana"),
        ] {
            if let Some(href) = optional_string(map, path, name)? {
                let href = url(href, &join(path, name))?;
                if !href.is_empty() {
                    links.push(Link {
                        href,
                        text: text.into(),
                    });
                }
            }
        }
        if let Some(values) = map.get("values").filter(|v| !v.is_null()) {
            if !values.is_object() {
                return Err(IntakeError::new(
                    join(path, "values"),
                    "must be an object of numbers",
                ));
            }
        }
        if let Some(text) = optional_string(map, path, "valueString")? {
            if text.chars().count() > limits.max_annotation_value {
                return Err(IntakeError::new(join(path, "valueString"), "is too long"));
            }
            if !text.is_empty() {
                annotations.insert("valueString".into(), text.to_string());
            }
        }
    }
    let summary = annotations
        .get("summary")
        .or_else(|| annotations.get("title"))
        .cloned();
    let title = summary
        .clone()
        .unwrap_or_else(|| default_title(&labels, group_labels));
    let severity = labels
        .get("severity")
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    Ok(Signal {
        source,
        status,
        severity,
        title,
        summary,
        labels,
        annotations,
        fingerprint,
        starts_at: Some(starts_at),
        ends_at,
        generator_url,
        links,
        references: Vec::new(),
        route: None,
        raw: raw_alert(map),
    })
}

/// The alert name and the group's labels: `HighLatency (service=checkout)`.
fn default_title(
    labels: &std::collections::BTreeMap<String, String>,
    group_labels: &std::collections::BTreeMap<String, String>,
) -> String {
    let name = labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| "alert".into());
    let grouped: Vec<String> = group_labels
        .iter()
        .filter(|(key, _)| key.as_str() != "alertname")
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if grouped.is_empty() {
        name
    } else {
        format!("{name} ({})", grouped.join(", "))
    }
}

fn raw_alert(map: &Map<String, Value>) -> Value {
    json!(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Value {
        json!({
            "version": "4", "receiver": "opscase", "status": "firing",
            "groupKey": "{}:{alertname=\"HighLatency\"}", "truncatedAlerts": 0,
            "groupLabels": {"alertname": "HighLatency", "service": "checkout"},
            "commonLabels": {"alertname": "HighLatency"},
            "commonAnnotations": {"runbook_url": "https://runbooks/x"},
            "externalURL": "http://alertmanager:9093",
            "somethingNew": {"added": "in a later version"},
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "HighLatency", "service": "checkout", "severity": "Critical"},
                "annotations": {"summary": "p95 above 300 ms on checkout"},
                "startsAt": "2026-12-02T10:00:00.123Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
                "fingerprint": "4f1c2a"
            }, {
                "status": "resolved",
                "labels": {"alertname": "HighLatency", "service": "cart"},
                "annotations": {},
                "startsAt": "2026-12-02T09:00:00Z",
                "endsAt": "2026-12-02T09:30:00Z"
            }]
        })
    }

    #[test]
    fn a_v4_payload_becomes_one_signal_per_alert() {
        let signals = alertmanager(&payload(), &Limits::default()).unwrap();
        assert_eq!(signals.len(), 2);
        let first = &signals[0];
        assert_eq!(first.status, Status::Firing);
        assert_eq!(first.title, "p95 above 300 ms on checkout");
        assert_eq!(first.severity, "critical");
        assert_eq!(first.fingerprint, "4f1c2a");
        assert_eq!(first.ends_at, None, "year 1 means not ended");
        assert_eq!(first.annotations["runbook_url"], "https://runbooks/x");
        assert_eq!(first.state_key(), "2026-12-02T10:00:00.123Z|firing");
        let second = &signals[1];
        assert_eq!(second.status, Status::Resolved);
        assert_eq!(second.title, "HighLatency (service=checkout)");
        assert_eq!(second.fingerprint, fingerprint_of(&second.labels));
        assert!(second.ends_at.is_some());
    }

    #[test]
    fn every_required_field_missing_in_turn_is_named() {
        for (pointer, field) in [
            ("/receiver", "receiver"),
            ("/status", "status"),
            ("/groupKey", "groupKey"),
            ("/alerts", "alerts"),
            ("/alerts/0/status", "alerts[0].status"),
            ("/alerts/0/labels", "alerts[0].labels"),
            ("/alerts/0/startsAt", "alerts[0].startsAt"),
        ] {
            let mut body = payload();
            let (parent, name) = pointer.rsplit_once('/').unwrap();
            let parent = if parent.is_empty() {
                &mut body
            } else {
                body.pointer_mut(parent).unwrap()
            };
            parent.as_object_mut().unwrap().remove(name);
            let error = alertmanager(&body, &Limits::default()).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert_eq!(error.message, "is required");
        }
    }

    #[test]
    fn wrong_types_and_limits_are_named() {
        let cases = [
            ("/status", json!("pending"), "status"),
            ("/alerts/0/labels", json!(["a"]), "alerts[0].labels"),
            (
                "/alerts/0/labels/service",
                json!(7),
                "alerts[0].labels.service",
            ),
            (
                "/alerts/1/startsAt",
                json!("yesterday"),
                "alerts[1].startsAt",
            ),
            (
                "/alerts/0/generatorURL",
                json!("javascript:alert(1)"),
                "alerts[0].generatorURL",
            ),
            (
                "/alerts/0/labels/service",
                json!("x".repeat(2000)),
                "alerts[0].labels.service",
            ),
        ];
        for (pointer, value, field) in cases {
            let mut body = payload();
            *body.pointer_mut(pointer).unwrap() = value;
            let error = alertmanager(&body, &Limits::default()).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
        let mut many = payload();
        let alert = many["alerts"][0].clone();
        many["alerts"] = Value::Array(vec![alert; 1001]);
        let error = alertmanager(&many, &Limits::default()).unwrap_err();
        assert_eq!(error.field, "alerts");
        assert!(error.message.contains("1001"), "{error}");
    }

    #[test]
    fn grafana_adds_its_links_and_value_string() {
        let mut body = payload();
        body["alerts"][0]["dashboardURL"] = json!("https://grafana/d/abc");
        body["alerts"][0]["panelURL"] = json!("https://grafana/d/abc?viewPanel=2");
        body["alerts"][0]["silenceURL"] = json!("");
        body["alerts"][0]["values"] = json!({"B": 412.5});
        body["alerts"][0]["valueString"] = json!("[ var='B' value=412.5 ]");
        let signals = grafana(&body, &Limits::default()).unwrap();
        let first = &signals[0];
        assert_eq!(first.source, Source::Grafana);
        assert_eq!(
            first
                .links
                .iter()
                .map(|l| l.text.as_str())
                .collect::<Vec<_>>(),
            ["Grafana dashboard", "Grafana panel"]
        );
        assert_eq!(first.annotations["valueString"], "[ var='B' value=412.5 ]");
    }
}
