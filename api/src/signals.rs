//! Signals in: `POST /v1/signals/alertmanager`, `/v1/signals/grafana` and `/v1/signals/events`;
//! deploys and configuration changes in: `POST /v1/signals/changes`.
//! Each payload is taken in one transaction and answered 2xx only once it is committed, so a
//! sender that retries after a failure (Alertmanager does, on 5xx) loses nothing, and a repeat
//! of what was committed writes nothing new.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use sensor::{Caller, IngestError, IntakeError, Signal, SignalOutcome, Source};

use crate::auth::{Allowed, Ingest};
use crate::cases::request_context;
use crate::contract::{BodyLimit, Malformed};
use crate::extract::JsonBody;
use crate::problem::Problem;
use crate::AppState;

/// What became of a payload's alerts.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignalsTaken {
    /// Alerts in the payload.
    pub received: usize,
    /// Of those, repeats of an alert state already received (nothing written).
    pub duplicates: usize,
    /// One per alert, in payload order.
    pub items: Vec<SignalOutcome>,
}

/// The answer to an event, as PagerDuty's Events API v2 gives it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventAccepted {
    /// `success`.
    pub status: String,
    pub message: String,
    /// The event's `dedup_key`, or the one made for a trigger that had none.
    pub dedup_key: String,
    /// What became of it in opscase.
    pub outcome: SignalOutcome,
}

/// 403 for a signal naming a tenant the key may not post into.
#[derive(utoipa::IntoResponses)]
pub enum TenantRefused {
    /// The key is scoped to another tenant than a signal's `tenant` label (`field` names it)
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
}

/// Alertmanager's webhook (version 4): `receiver`, `status`, `groupKey`, `alerts` with each
/// alert's `status`, `labels` and `startsAt` are required; everything else, known or not, is
/// accepted. Configure a receiver with `webhook_configs: [{url: .../v1/signals/alertmanager,
/// http_config: {authorization: {credentials: <a sensor key>}}}]`.
#[utoipa::path(post, path = "/v1/signals/alertmanager", tag = "signals",
    request_body(content = Object, content_type = "application/json",
        description = "Alertmanager's webhook payload, version 4",
        example = json!({"version": "4", "receiver": "opscase", "status": "firing",
            "groupKey": "{}:{alertname=\"HighLatency\"}", "truncatedAlerts": 0,
            "groupLabels": {"alertname": "HighLatency"},
            "commonLabels": {"alertname": "HighLatency", "service": "checkout"},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
            "alerts": [{"status": "firing",
                "labels": {"alertname": "HighLatency", "service": "checkout", "severity": "critical"},
                "annotations": {"summary": "p95 above 300 ms on checkout"},
                "startsAt": "2026-12-02T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=x", "fingerprint": "4f1c2a"}]})),
    responses(
        (status = 200, description = "Taken: each alert opened or joined a case, resolved, or was a repeat", body = SignalsTaken),
        Malformed, TenantRefused, BodyLimit,
    ))]
pub async fn alertmanager(
    State(app): State<AppState>,
    caller: Allowed<Ingest>,
    body: JsonBody<Value>,
) -> Result<Json<SignalsTaken>, Problem> {
    let sensor = sensor_of(&app)?;
    let signals = sensor::intake::alertmanager(&body.value, &sensor.settings().limits)
        .map_err(|e| refused(sensor, Source::Alertmanager, e))?;
    take_alerts(&app, caller, Source::Alertmanager, signals).await
}

/// Grafana's alerting webhook: the same alert shape as Alertmanager's, plus `values`,
/// `valueString` and links to the dashboard, panel and silence.
#[utoipa::path(post, path = "/v1/signals/grafana", tag = "signals",
    request_body(content = Object, content_type = "application/json",
        description = "Grafana's alerting webhook payload",
        example = json!({"receiver": "opscase", "status": "firing", "orgId": 1,
            "groupKey": "{}/{}:{alertname=\"HighLatency\"}", "groupLabels": {"alertname": "HighLatency"},
            "alerts": [{"status": "firing",
                "labels": {"alertname": "HighLatency", "service": "checkout"},
                "annotations": {"summary": "p95 above 300 ms"},
                "startsAt": "2026-12-02T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "values": {"B": 412.5}, "valueString": "[ var='B' value=412.5 ]",
                "dashboardURL": "https://grafana.example/d/abc", "panelURL": "https://grafana.example/d/abc?viewPanel=2",
                "silenceURL": "https://grafana.example/alerting/silence/new", "fingerprint": "9b2f"}]})),
    responses(
        (status = 200, description = "Taken", body = SignalsTaken),
        Malformed, TenantRefused, BodyLimit,
    ))]
pub async fn grafana(
    State(app): State<AppState>,
    caller: Allowed<Ingest>,
    body: JsonBody<Value>,
) -> Result<Json<SignalsTaken>, Problem> {
    let sensor = sensor_of(&app)?;
    let signals = sensor::intake::grafana(&body.value, &sensor.settings().limits)
        .map_err(|e| refused(sensor, Source::Grafana, e))?;
    take_alerts(&app, caller, Source::Grafana, signals).await
}

/// An event in the shape of PagerDuty's Events API v2: `event_action` (`trigger`,
/// `acknowledge`, `resolve`), `dedup_key`, `payload` (`summary`, `source`, `severity` required
/// to trigger), `links`. Answered 202 with the `dedup_key`, as PagerDuty does.
#[utoipa::path(post, path = "/v1/signals/events", tag = "signals",
    request_body(content = Object, content_type = "application/json",
        description = "A PagerDuty Events API v2 event",
        example = json!({"event_action": "trigger", "dedup_key": "disk-db-3",
            "payload": {"summary": "disk 95% full on db-3", "source": "db-3", "severity": "warning",
                        "component": "postgres", "class": "disk", "custom_details": {"free_gb": 2}},
            "links": [{"href": "https://grafana.example/d/disk", "text": "disk dashboard"}]})),
    responses(
        (status = 202, description = "Taken", body = EventAccepted),
        Malformed, TenantRefused, BodyLimit,
    ))]
pub async fn events(
    State(app): State<AppState>,
    caller: Allowed<Ingest>,
    body: JsonBody<Value>,
) -> Result<Response, Problem> {
    let sensor = sensor_of(&app)?;
    let parsed = sensor::intake::events(&body.value, &sensor.settings().limits, || {
        uuid::Uuid::now_v7().simple().to_string()
    })
    .map_err(|e| refused(sensor, Source::Events, e))?;
    let outcome = ingest(
        &app,
        caller,
        Source::Events,
        vec![parsed.signal],
        &["event".into()],
    )
    .await?
    .pop()
    .ok_or_else(Problem::internal)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(EventAccepted {
            status: "success".into(),
            message: "Event processed".into(),
            dedup_key: parsed.dedup_key,
            outcome,
        }),
    )
        .into_response())
}

/// A change recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeRecorded {
    /// `success`, as PagerDuty's Change Events API answers.
    pub status: String,
    /// The envelope written (`kind` `deploy` or `config`).
    pub envelope_id: uuid::Uuid,
    pub tenant: String,
    pub kind: String,
    pub service: String,
}

/// Record a deploy or a configuration change (PagerDuty Change Events API v2 shape, plus
/// `kind` and `service`). It opens no case; the analyst reports the recent changes of a case's
/// service and of its dependencies when it examines the case.
#[utoipa::path(post, path = "/v1/signals/changes", tag = "signals",
    request_body(content = Object, content_type = "application/json",
        description = "A PagerDuty Change Events API v2 event with `kind` and `service`",
        example = json!({"kind": "deploy", "service": "checkout",
            "payload": {"summary": "checkout 1.4.2 rolled out", "source": "argo-cd",
                        "timestamp": "2026-12-02T10:00:00Z",
                        "custom_details": {"version": "1.4.2"}},
            "links": [{"href": "https://ci.example/run/7", "text": "pipeline"}]})),
    responses(
        (status = 202, description = "Recorded", body = ChangeRecorded),
        Malformed, TenantRefused, BodyLimit,
    ))]
pub async fn changes(
    State(app): State<AppState>,
    caller: Allowed<Ingest>,
    body: JsonBody<Value>,
) -> Result<Response, Problem> {
    let sensor = sensor_of(&app)?;
    let change = sensor::intake::changes(&body.value)
        .map_err(|error| Problem::invalid(error.field.clone(), error.to_string()))?;
    let service = change.service.clone();
    let caller = Caller {
        tenant: caller.principal.tenant.clone(),
        context: request_context(caller.principal, None),
    };
    let envelope = sensor
        .record_change(change, &caller)
        .await
        .map_err(problem_of)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ChangeRecorded {
            status: "success".into(),
            envelope_id: envelope.id,
            tenant: envelope.tenant,
            kind: envelope.kind,
            service,
        }),
    )
        .into_response())
}

async fn take_alerts(
    app: &AppState,
    caller: Allowed<Ingest>,
    source: Source,
    signals: Vec<Signal>,
) -> Result<Json<SignalsTaken>, Problem> {
    let fields: Vec<String> = (0..signals.len()).map(|i| format!("alerts[{i}]")).collect();
    let received = signals.len();
    let items = ingest(app, caller, source, signals, &fields).await?;
    let duplicates = items.iter().filter(|i| i.outcome == "duplicate").count();
    Ok(Json(SignalsTaken {
        received,
        duplicates,
        items,
    }))
}

async fn ingest(
    app: &AppState,
    caller: Allowed<Ingest>,
    source: Source,
    signals: Vec<Signal>,
    fields: &[String],
) -> Result<Vec<SignalOutcome>, Problem> {
    let sensor = sensor_of(app)?;
    let tenant = caller.principal.tenant.clone();
    let caller = Caller {
        tenant,
        context: request_context(caller.principal, None),
    };
    sensor
        .ingest(source, signals, fields, &caller)
        .await
        .map_err(problem_of)
}

fn problem_of(error: IngestError) -> Problem {
    match error {
        IngestError::Invalid(error) => Problem::invalid(error.field.clone(), error.to_string()),
        IngestError::Forbidden { field, message } => {
            let mut problem =
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", message);
            problem.field = Some(field);
            problem
        }
        IngestError::Orchestrator(error) => Problem::from(error),
    }
}

fn sensor_of(app: &AppState) -> Result<&sensor::Sensor, Problem> {
    app.sensor.as_deref().ok_or_else(|| {
        tracing::error!("signal intake called without a sensor configured");
        Problem::internal()
    })
}

fn refused(sensor: &sensor::Sensor, source: Source, error: IntakeError) -> Problem {
    sensor.metrics().received(source, "invalid");
    Problem::invalid(error.field.clone(), error.to_string())
}

// ---- The documented shapes of the payloads ----------------------------------------------------
//
// The intake reads payloads by hand (to name the exact field that is wrong and to accept what
// newer senders add), so their schemas are written here, beside it, and checked against the
// server by the contract test and schemathesis.

/// `schema`, or `null` (the intake takes an explicit `null` as absent).
fn or_null(schema: serde_json::Value) -> serde_json::Value {
    json!({"oneOf": [{"type": "null"}, schema]})
}

/// A map of labels as the intake takes them.
fn labels_schema(max_value: usize) -> serde_json::Value {
    json!({
        "type": "object",
        "maxProperties": 64,
        "propertyNames": {"minLength": 1, "maxLength": 128},
        "additionalProperties": {"type": "string", "maxLength": max_value},
    })
}

/// An alert's labels: its `tenant` label, if any, must be a tenant name.
fn alert_labels_schema(max_value: usize) -> serde_json::Value {
    let mut schema = labels_schema(max_value);
    // An empty label is no label (Prometheus's rule): the key's tenant, else `default`.
    schema["properties"] = json!({"tenant": {"type": "string",
        "pattern": format!("^$|{}", crate::contract::TENANT_PATTERN)}});
    schema
}

fn annotations_schema() -> serde_json::Value {
    json!({
        "type": "object", "maxProperties": 64,
        "propertyNames": {"minLength": 1, "maxLength": 128},
        "additionalProperties": {"type": "string",
                                 "maxLength": sensor::Limits::default().max_annotation_value},
    })
}

fn web_url_schema() -> serde_json::Value {
    json!({"type": "string", "maxLength": 4096, "pattern": "^(https?://.*)?$"})
}

/// Alertmanager's webhook payload (v4); Grafana's when `grafana`.
fn alert_payload_schema(grafana: bool) -> serde_json::Value {
    let limits = sensor::Limits::default();
    let labels = alert_labels_schema(limits.max_label_value);
    let date_time = json!({"type": "string", "format": "date-time"});
    let mut alert = json!({
        "type": "object",
        "required": ["status", "labels", "startsAt"],
        "properties": {
            "status": {"type": "string", "enum": ["firing", "resolved"]},
            "labels": labels,
            "annotations": or_null(annotations_schema()),
            "startsAt": date_time,
            "endsAt": or_null(date_time.clone()),
            "generatorURL": or_null(web_url_schema()),
            "fingerprint": or_null(json!({"type": "string", "maxLength": 128})),
        },
        "additionalProperties": true,
    });
    if grafana {
        let properties = alert["properties"].as_object_mut().expect("an object");
        for link in ["dashboardURL", "panelURL", "silenceURL"] {
            properties.insert(link.into(), or_null(web_url_schema()));
        }
        properties.insert("values".into(), or_null(json!({"type": "object"})));
        properties.insert(
            "valueString".into(),
            or_null(json!({"type": "string", "maxLength": limits.max_annotation_value})),
        );
    }
    json!({
        "type": "object",
        "required": ["receiver", "status", "groupKey", "alerts"],
        "properties": {
            "version": or_null(json!({"type": "string"})),
            "receiver": {"type": "string"},
            "status": {"type": "string", "enum": ["firing", "resolved"]},
            "groupKey": {"type": "string"},
            "truncatedAlerts": or_null(json!({"type": "integer", "minimum": 0})),
            "groupLabels": or_null(labels_schema(limits.max_label_value)),
            "commonLabels": or_null(labels_schema(limits.max_label_value)),
            "commonAnnotations": or_null(annotations_schema()),
            "externalURL": or_null(web_url_schema()),
            "alerts": {"type": "array", "maxItems": limits.max_alerts, "items": alert},
        },
        "additionalProperties": true,
    })
}

/// A PagerDuty Events API v2 event: a trigger needs a payload; an acknowledgement or a
/// resolution needs the trigger's `dedup_key`.
fn event_schema() -> serde_json::Value {
    let text = json!({"type": "string", "maxLength": sensor::intake::MAX_PAYLOAD_TEXT});
    let payload = json!({
        "type": "object",
        "required": ["summary", "source", "severity"],
        "properties": {
            "summary": text, "source": text,
            "component": or_null(text.clone()), "group": or_null(text.clone()),
            "class": or_null(text.clone()),
            "severity": {"type": "string", "enum": ["critical", "error", "warning", "info"]},
            "timestamp": or_null(json!({"type": "string", "format": "date-time"})),
            "custom_details": or_null(json!({"type": "object",
                "description": "Anything, up to 16 KiB as JSON; a `tenant` string names the tenant.",
                "properties": {"tenant": or_null(json!({"type": "string",
                    "pattern": format!("^$|{}", crate::contract::TENANT_PATTERN)}))},
                "additionalProperties": true})),
        },
        "additionalProperties": true,
    });
    // Only a trigger needs summary, source and severity.
    let mut any_payload = payload.clone();
    any_payload
        .as_object_mut()
        .expect("an object")
        .remove("required");
    for field in ["summary", "source", "severity"] {
        let schema = any_payload["properties"][field].take();
        any_payload["properties"][field] = or_null(schema);
    }
    let links = or_null(json!({
        "type": "array", "maxItems": 20,
        "items": {"type": "object", "required": ["href"],
                  "properties": {"href": {"type": "string", "maxLength": 4096, "pattern": "^https?://"},
                                 "text": or_null(json!({"type": "string", "maxLength": 256}))}},
    }));
    let dedup_key = json!({"type": "string", "minLength": 1, "maxLength": 255});
    let routing_key = or_null(json!({"type": "string", "maxLength": 128}));
    json!({
        "oneOf": [
            {"type": "object", "title": "trigger",
             "required": ["event_action", "payload"],
             "properties": {"event_action": {"type": "string", "enum": ["trigger"]},
                            "dedup_key": or_null(dedup_key.clone()), "routing_key": routing_key,
                            "payload": payload, "links": links},
             "additionalProperties": true},
            {"type": "object", "title": "acknowledge or resolve",
             "required": ["event_action", "dedup_key"],
             "properties": {"event_action": {"type": "string", "enum": ["acknowledge", "resolve"]},
                            "dedup_key": dedup_key, "routing_key": routing_key,
                            "payload": or_null(any_payload), "links": links},
             "additionalProperties": true},
        ]
    })
}

/// A change event: PagerDuty's Change Events API v2 with opscase's `kind` and `service`.
fn change_schema() -> serde_json::Value {
    let text = json!({"type": "string", "maxLength": sensor::intake::MAX_PAYLOAD_TEXT});
    let name = json!({"type": "string", "minLength": 1, "maxLength": 200,
                      "pattern": crate::contract::NON_BLANK_PATTERN.as_str()});
    json!({
        "type": "object",
        "required": ["payload"],
        "description": "The service is `service`, else `payload.custom_details.service`: one \
            of them is required.",
        "anyOf": [
            {"required": ["service"], "properties": {"service": {"type": "string"}}},
            {"properties": {"payload": {"required": ["custom_details"],
                "properties": {"custom_details": {"type": "object", "required": ["service"],
                    "properties": {"service": {"type": "string"}}}}}}},
        ],
        "properties": {
            "kind": or_null(json!({"type": "string", "enum": sensor::intake::CHANGE_KINDS})),
            "service": or_null(name.clone()),
            "routing_key": or_null(json!({"type": "string", "maxLength": 128})),
            "payload": {
                "type": "object",
                "required": ["summary"],
                "properties": {
                    "summary": {"type": "string", "minLength": 1,
                                "maxLength": sensor::intake::MAX_PAYLOAD_TEXT,
                                "pattern": crate::contract::NON_BLANK_PATTERN.as_str()},
                    "source": or_null(text),
                    "timestamp": or_null(json!({"type": "string", "format": "date-time"})),
                    "custom_details": or_null(json!({"type": "object",
                        "properties": {
                            "service": or_null(name),
                            "tenant": or_null(json!({"type": "string",
                                "pattern": format!("^$|{}", crate::contract::TENANT_PATTERN)})),
                        },
                        "additionalProperties": true})),
                },
                "additionalProperties": true,
            },
            "links": or_null(json!({
                "type": "array", "maxItems": 20,
                "items": {"type": "object", "required": ["href"],
                          "properties": {"href": {"type": "string", "maxLength": 4096, "pattern": "^https?://"},
                                         "text": or_null(json!({"type": "string", "maxLength": 256}))}},
            })),
        },
        "additionalProperties": true,
    })
}

/// Evidence: a `locator`, or a `ref`, either with an optional `url`; or a `url` alone.
fn evidence_schema() -> serde_json::Value {
    let safe = sensor::evidence::MAX_SAFE_INTEGER;
    let key_value = json!({"oneOf": [
        {"type": "string", "maxLength": 256},
        {"type": "integer", "minimum": -safe, "maximum": safe},
        {"type": "boolean"},
    ]});
    let locator = json!({
        "type": "object",
        "required": ["system", "query"],
        "properties": {
            "system": {"type": "string", "enum": ["loki", "openobserve", "prometheus"]},
            "query": {"type": "string", "maxLength": 4096,
                      "pattern": crate::contract::NON_BLANK_PATTERN.as_str()},
            "dataset": {"type": ["string", "null"], "maxLength": 256},
            "org": {"type": ["string", "null"], "maxLength": 256},
            "from": {"type": ["string", "null"], "format": "date-time"},
            "to": {"type": ["string", "null"], "format": "date-time"},
            "attributes": or_null(json!({"type": "object", "maxProperties": 32,
                                         "additionalProperties": key_value.clone()})),
        },
        "additionalProperties": false,
        "description": "An OpenObserve locator without a `dataset` (the stream), or one whose \
            `from` is after its `to`, is refused with 422.",
    });
    let reference = json!({
        "type": "object",
        "required": ["table", "keys"],
        "properties": {
            "table": {"type": "string", "pattern": "^[a-z0-9_]{1,63}$"},
            "keys": {"type": "object", "minProperties": 1, "maxProperties": 8,
                     "additionalProperties": key_value.clone()},
        },
        "additionalProperties": false,
    });
    let url = json!({"type": "string", "maxLength": 4096, "pattern": "^https?://"});
    let none = json!({"type": "null"});
    let variant = |locator: &serde_json::Value,
                   reference: &serde_json::Value,
                   url: &serde_json::Value,
                   required: &str| {
        json!({
            "type": "object",
            "required": ["kind", "title", required],
            "properties": {
                "kind": {"type": "string", "enum": sensor::evidence::KINDS},
                "title": serde_json::to_value(crate::contract::title_schema()).expect("a schema"),
                "note": {"type": ["string", "null"], "maxLength": 4096},
                "locator": locator, "ref": reference, "url": url,
            },
            "additionalProperties": false,
        })
    };
    json!({"oneOf": [
        variant(&locator, &none, &or_null(url.clone()), "locator"),
        variant(&none, &reference, &or_null(url.clone()), "ref"),
        variant(&none, &none, &url, "url"),
    ]})
}

/// Puts the payload schemas in the serialized document: components, and the request bodies
/// of the intake and evidence routes. (Written on the JSON: utoipa's schema type cannot hold
/// `propertyNames`, which the label maps need.)
pub fn add_payload_schemas(document: &mut Value) {
    let bodies = [
        (
            "/v1/signals/alertmanager",
            "AlertmanagerPayload",
            alert_payload_schema(false),
        ),
        (
            "/v1/signals/grafana",
            "GrafanaPayload",
            alert_payload_schema(true),
        ),
        ("/v1/signals/events", "EventsV2Event", event_schema()),
        ("/v1/signals/changes", "ChangeEvent", change_schema()),
        ("/v1/cases/{id}/evidence", "NewEvidence", evidence_schema()),
    ];
    for (path, name, schema) in bodies {
        document["components"]["schemas"][name] = schema;
        let content = document["paths"][path]["post"]["requestBody"]["content"]
            .as_object_mut()
            .unwrap_or_else(|| panic!("POST {path} has no request body"));
        for media in content.values_mut() {
            media["schema"] = json!({"$ref": format!("#/components/schemas/{name}")});
        }
    }
}
