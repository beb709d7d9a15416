//! The request contract in one place: the bounds and patterns the handlers validate with, and
//! the pieces of the OpenAPI document built from them.
//!
//! `#[schema(...)]` and `#[param(...)]` take only literals, so a bound written there would be a
//! second copy of the one the handler checks. Instead the document takes its schemas for
//! validated fields from the functions here (`schema_with = ...`, hand-written `IntoParams`),
//! and the handlers check with the same constants and, for patterns, the same regular
//! expressions. The patterns stay within what ECMA-262 (the document's dialect) and the `regex`
//! crate (the server's) read alike: ASCII classes, `\uXXXX` escapes, anchors, counted
//! repetition; no `\s`, `\d` or `\w`, whose meaning differs between engines.
//!
//! The rule the document and the server keep: **400** means the request does not match this
//! document (a malformed id, query parameter, header or body field; `field` names it), so a
//! request the document allows is never answered 400. **422** means it matches, but its content
//! is refused (a guard, the gate policy, an Idempotency-Key reused for another request, a
//! combination of fields that makes no sense).

use std::ops::RangeInclusive;
use std::sync::LazyLock;

use regex::Regex;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat,
    SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr, Required};
use utoipa::{IntoParams, IntoResponses, ToSchema};

use crate::problem::Problem;

/// `limit` of a listed page.
pub const PAGE_LIMIT: RangeInclusive<u32> = 1..=200;
pub const PAGE_LIMIT_DEFAULT: u32 = 50;

/// Free text the server trims and stores: a case's title, an actor, a key's name. At most this
/// many characters (Unicode scalar values, as JSON Schema's `maxLength` counts), and at least
/// one that is not whitespace.
pub const TITLE_MAX_CHARS: usize = 200;
pub const ACTOR_MAX_CHARS: usize = 200;
pub const KEY_NAME_MAX_CHARS: usize = 100;

pub const MAX_LABELS: usize = 32;
pub const LABEL_VALUE_MAX_CHARS: usize = 256;
pub const MAX_EVIDENCE: usize = 50;

/// An ad-hoc step's `timeout_s` (`POST /v1/adapter/exec`), and its default.
pub const ADHOC_TIMEOUT_S: RangeInclusive<u32> = 10..=3600;
pub const ADHOC_TIMEOUT_DEFAULT_S: u32 = 60;

/// Points in one `POST /v1/metrics/1m`.
pub const MAX_METRIC_POINTS: usize = 10_000;

/// Tenant names: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub const TENANT_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// Label keys: 1 to 63 of `A-Z a-z 0-9 - _ . /`.
pub const LABEL_KEY_PATTERN: &str = "^[A-Za-z0-9._/-]{1,63}$";
/// The `label` filter of `GET /v1/cases`: `key=value`, the key as above, the value anything.
pub const LABEL_FILTER_PATTERN: &str = "^[A-Za-z0-9._/-]{1,63}=";
/// `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]+$";
/// `If-Match`: `*`, or a version as the ETag sends it (`"3"`, also `W/"3"`). Mirrors
/// [`crate::extract::if_match`]; a test compares the two.
pub const IF_MATCH_PATTERN: &str = r#"^[ \t]*(\*|[ \t,]*(W/"[^"]*"|"[+-]?[0-9]{1,18}")([ \t]*,[ \t,]*(W/"[^"]*"|"[+-]?[0-9]{1,18}"))*[ \t,]*)[ \t]*$"#;
/// `metric` of a metric point: a name a threshold can refer to.
pub const METRIC_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";

/// What `char::is_whitespace` (and so `str::trim` and `split_whitespace`) takes for whitespace,
/// as the inside of a character class: Unicode's `White_Space` property.
const WHITESPACE_CLASS: &str =
    r"\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";
/// What `char::is_control` takes for a control character (general category Cc).
const CONTROL_CLASS: &str = r"\u0000-\u001F\u007F-\u009F";

/// At least one character that is not whitespace.
pub static NON_BLANK_PATTERN: LazyLock<String> = LazyLock::new(|| format!("[^{WHITESPACE_CLASS}]"));
/// No control characters, and at least one character that is not whitespace.
pub static PRINTABLE_NAME_PATTERN: LazyLock<String> = LazyLock::new(|| {
    format!("^[^{CONTROL_CLASS}]*[^{CONTROL_CLASS}{WHITESPACE_CLASS}][^{CONTROL_CLASS}]*$")
});

fn compiled(pattern: &str) -> Regex {
    Regex::new(pattern).expect("the contract's patterns compile")
}

static TENANT: LazyLock<Regex> = LazyLock::new(|| compiled(TENANT_PATTERN));
static LABEL_KEY: LazyLock<Regex> = LazyLock::new(|| compiled(LABEL_KEY_PATTERN));
static IDEMPOTENCY_KEY: LazyLock<Regex> = LazyLock::new(|| compiled(IDEMPOTENCY_KEY_PATTERN));

pub fn is_tenant(text: &str) -> bool {
    TENANT.is_match(text)
}

pub fn is_label_key(text: &str) -> bool {
    LABEL_KEY.is_match(text)
}

pub fn is_idempotency_key(text: &str) -> bool {
    text.len() <= IDEMPOTENCY_KEY_MAX_LEN && IDEMPOTENCY_KEY.is_match(text)
}

/// Free text (see [`TITLE_MAX_CHARS`]): checked as sent, stored trimmed.
pub fn text(field: &str, value: &str, max_chars: usize) -> Result<String, Problem> {
    let blank = value.chars().all(char::is_whitespace);
    if blank || value.chars().count() > max_chars {
        return Err(Problem::invalid(
            field,
            format!("{field} must be 1 to {max_chars} characters, not all whitespace"),
        ));
    }
    Ok(value.trim().to_string())
}

/// `limit`, defaulted and checked against [`PAGE_LIMIT`].
pub fn page_limit(limit: Option<u32>) -> Result<u32, Problem> {
    match limit {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(n) if PAGE_LIMIT.contains(&n) => Ok(n),
        Some(n) => Err(Problem::invalid(
            "limit",
            format!(
                "limit {n} is outside {}..={}",
                PAGE_LIMIT.start(),
                PAGE_LIMIT.end()
            ),
        )),
    }
}

// ---- Schemas ------------------------------------------------------------------------------

fn nullable(kind: Type, nullable: bool) -> SchemaType {
    if nullable {
        SchemaType::Array(vec![kind, Type::Null])
    } else {
        SchemaType::Type(kind)
    }
}

fn text_schema(max_chars: usize, is_nullable: bool, description: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String, is_nullable))
        .min_length(Some(1))
        .max_length(Some(max_chars))
        .pattern(Some(NON_BLANK_PATTERN.as_str()))
        .description(Some(description))
        .into()
}

fn pattern_schema(pattern: &str, is_nullable: bool, description: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String, is_nullable))
        .pattern(Some(pattern))
        .description(Some(description))
        .into()
}

pub fn title_schema() -> Schema {
    let mut schema = text_schema(
        TITLE_MAX_CHARS,
        false,
        "What happened (trimmed; not all whitespace).",
    );
    if let Schema::Object(object) = &mut schema {
        object.examples = vec!["p95 spike on checkout".into()];
    }
    schema
}

pub fn actor_schema() -> Schema {
    text_schema(
        ACTOR_MAX_CHARS,
        true,
        "Who does it, as the client names it (trimmed; the key is recorded next to it). Defaults to the key's name.",
    )
}

pub fn key_name_schema() -> Schema {
    text_schema(
        KEY_NAME_MAX_CHARS,
        false,
        "A name for the key (trimmed; not all whitespace).",
    )
}

/// A tenant name, `description` saying what it does where it is used.
pub fn tenant_schema(description: &str) -> Schema {
    let mut schema = pattern_schema(
        TENANT_PATTERN,
        true,
        &format!("{description} 1 to 64 of `A-Z a-z 0-9 - _ .`."),
    );
    if let Schema::Object(object) = &mut schema {
        object.examples = vec!["t-001".into()];
    }
    schema
}

pub fn kb_title_schema() -> Schema {
    text_schema(
        TITLE_MAX_CHARS,
        false,
        "Trimmed; not all whitespace. A runbook's alert name is a good title.",
    )
}

pub fn kb_content_schema() -> Schema {
    text_schema(
        crate::kb::CONTENT_MAX_CHARS,
        false,
        "The Markdown text; not all whitespace.",
    )
}

pub fn kb_url_schema() -> Schema {
    text_schema(
        crate::kb::URL_MAX_CHARS,
        true,
        "Where the document lives (trimmed); posting the same `url` again replaces that document.",
    )
}

pub fn kb_tenant_schema() -> Schema {
    tenant_schema("Absent: a global document (or the key's tenant for a scoped key).")
}

pub fn case_tenant_schema() -> Schema {
    tenant_schema("Defaults to the key's tenant, or `default` for an unscoped key.")
}

pub fn key_tenant_schema() -> Schema {
    tenant_schema("Confine the key to one tenant's cases.")
}

pub fn labels_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Object, true))
        .max_properties(Some(MAX_LABELS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(LABEL_KEY_PATTERN)),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(LABEL_VALUE_MAX_CHARS)),
        ))
        .description(Some(
            "Keys: 1 to 63 of `A-Z a-z 0-9 - _ . /`; values: strings of at most 256 characters.",
        ))
        .into()
}

pub fn evidence_schema() -> Schema {
    ArrayBuilder::new()
        .schema_type(nullable(Type::Array, true))
        .items(ObjectBuilder::new().schema_type(SchemaType::AnyValue))
        .max_items(Some(MAX_EVIDENCE))
        .description(Some(
            "Free-form evidence links or snippets supplied when the case is opened.",
        ))
        .into()
}

pub fn label_filter_schema() -> Schema {
    pattern_schema(
        LABEL_FILTER_PATTERN,
        false,
        "`key=value`: cases carrying this label.",
    )
}

pub fn page_limit_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(*PAGE_LIMIT.start()))
        .maximum(Some(*PAGE_LIMIT.end()))
        .default(Some(PAGE_LIMIT_DEFAULT.into()))
        .description(Some("Page size."))
        .into()
}

pub fn adhoc_timeout_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Integer, true))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(*ADHOC_TIMEOUT_S.start()))
        .maximum(Some(*ADHOC_TIMEOUT_S.end()))
        .default(Some(ADHOC_TIMEOUT_DEFAULT_S.into()))
        .description(Some(
            "The ad-hoc step's timeout in seconds (needs `adapter`).",
        ))
        .into()
}

/// The names `POST /v1/plan/generate` takes for `template`: the planner's templates.
pub fn template_names() -> Vec<&'static str> {
    planner::templates().iter().map(|t| t.name).collect()
}

pub fn template_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String, true))
        .enum_values(Some(
            template_names()
                .into_iter()
                .map(serde_json::Value::from)
                .chain([serde_json::Value::Null]),
        ))
        .description(Some(
            "A template (`GET /v1/templates`); by default the case's `template` label, else `noop.check`.",
        ))
        .examples(["k8s.rollout.canary"])
        .into()
}

/// The short name of `script.exec` for an ad-hoc step, as the seed's demo sends it.
pub const SCRIPT_SHORTHAND: &str = "script";

/// The names `POST /v1/adapter/exec` takes for `adapter`: the adapters, and `script`.
pub fn adapter_names() -> Vec<&'static str> {
    std::iter::once(SCRIPT_SHORTHAND)
        .chain(workflow::adapters::ADAPTERS.iter().map(|a| a.action))
        .collect()
}

pub fn adapter_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String, true))
        .enum_values(Some(
            adapter_names()
                .into_iter()
                .map(serde_json::Value::from)
                .chain([serde_json::Value::Null]),
        ))
        .description(Some(
            "An adapter to run in place of the plan's steps (`script` is short for `script.exec`).",
        ))
        .examples([SCRIPT_SHORTHAND])
        .into()
}

pub fn script_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String, true))
        .pattern(Some(NON_BLANK_PATTERN.as_str()))
        .description(Some(
            "With adapter `script`: the allowlisted executable and its arguments, split on whitespace \
             (no shell: quotes, `;`, `$()` are passed as plain text).",
        ))
        .examples(["echo ok"])
        .into()
}

pub fn roles_schema() -> Schema {
    ArrayBuilder::new()
        .items(Ref::from_schema_name("Role"))
        .min_items(Some(1))
        .description(Some("At least one role."))
        .into()
}

/// `POST /v1/metrics/1m`'s `points`: [`verifier::MetricPoint`] as its `validate` checks it.
pub fn metric_points_schema() -> Schema {
    let name = |max: usize, description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(max))
            .pattern(Some(PRINTABLE_NAME_PATTERN.as_str()))
            .description(Some(description))
    };
    let value = |description: &str| {
        ObjectBuilder::new()
            .schema_type(nullable(Type::Number, true))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
            .description(Some(description))
    };
    let point = ObjectBuilder::new()
        .property(
            "tenant",
            name(verifier::MAX_NAME_LEN, "Not blank, no control characters."),
        )
        .property(
            "resource",
            name(
                verifier::MAX_NAME_LEN,
                "What is measured, e.g. the service name. Not blank, no control characters.",
            ),
        )
        .property(
            "metric",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(verifier::MAX_METRIC_LEN))
                .pattern(Some(METRIC_NAME_PATTERN))
                .description(Some(
                    "The name a threshold refers to, e.g. `p95_ms`, `err_rate`.",
                )),
        )
        .property(
            "bucket",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .description(Some(
                    "Any instant in the minute (truncated to its start when stored).",
                )),
        )
        .property("avg", value("The minute's mean."))
        .property("max", value("The minute's maximum."))
        .property("p95", value("The minute's 95th percentile."))
        .property(
            "count",
            ObjectBuilder::new()
                .schema_type(nullable(Type::Integer, true))
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
                .description(Some("How many samples the minute aggregates.")),
        )
        .property(
            "labels",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some("A JSON object (default `{}`).")),
        )
        .required("tenant")
        .required("resource")
        .required("metric")
        .required("bucket")
        .additional_properties(Some(false_schema()));
    points_array(
        point,
        &["avg", "max", "p95"],
        "The aggregates of one metric of one resource over one minute.",
    )
}

/// An array of 1 to [`MAX_METRIC_POINTS`] of `point`, each stating at least one of `measures`
/// as a number.
fn points_array(point: ObjectBuilder, measures: &[&str], description: &str) -> Schema {
    let mut at_least_one = AnyOfBuilder::new();
    for measure in measures {
        at_least_one = at_least_one.item(
            ObjectBuilder::new()
                .property(*measure, ObjectBuilder::new().schema_type(Type::Number))
                .required(*measure),
        );
    }
    let listed: Vec<String> = measures.iter().map(|m| format!("`{m}`")).collect();
    let at_least_one =
        at_least_one.description(Some(format!("At least one of {}.", listed.join(", "))));
    ArrayBuilder::new()
        .items(
            AllOfBuilder::new()
                .item(point)
                .item(at_least_one)
                .description(Some(description)),
        )
        .min_items(Some(1))
        .max_items(Some(MAX_METRIC_POINTS))
        .into()
}

/// The body of `POST /v1/metrics/calls5m`: what [`analyst::store::CallPoint::validate`]
/// checks, field by field.
pub fn call_points_schema() -> Schema {
    let name = |description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(200))
            .pattern(Some(PRINTABLE_NAME_PATTERN.as_str()))
            .description(Some(description))
    };
    let measure = |description: &str, maximum: Option<f64>| {
        ObjectBuilder::new()
            .schema_type(nullable(Type::Number, true))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
            .minimum(Some(0.0))
            .maximum(maximum)
            .description(Some(description))
    };
    let point = ObjectBuilder::new()
        .property("tenant", name("Not blank, no control characters."))
        .property(
            "bucket",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .description(Some(
                    "Any instant in the five minutes (stored as their start).",
                )),
        )
        .property("src", name("The calling service."))
        .property("dst", name("The service called."))
        .property("rps", measure("Calls per second.", None))
        .property(
            "err_rate",
            measure("Share of calls that failed.", Some(1.0)),
        )
        .property("p50_ms", measure("Median latency.", None))
        .property("p95_ms", measure("95th percentile latency.", None))
        .required("tenant")
        .required("bucket")
        .required("src")
        .required("dst")
        .additional_properties(Some(false_schema()));
    points_array(
        point,
        &["rps", "err_rate", "p50_ms", "p95_ms"],
        "Calls from `src` to `dst` over five minutes.",
    )
}

/// `false` as a schema (nothing matches): `additionalProperties: false`.
fn false_schema() -> utoipa::openapi::schema::AdditionalProperties<Schema> {
    utoipa::openapi::schema::AdditionalProperties::FreeForm(false)
}

// ---- Headers ------------------------------------------------------------------------------

fn header(name: &str, required: bool, schema: Schema, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .schema(Some(schema))
        .description(Some(description))
        .build()
}

fn idempotency_key(required: bool, description: &str) -> Parameter {
    let schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(IDEMPOTENCY_KEY_MAX_LEN))
        .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
        .description(Some("Visible ASCII characters"))
        .into();
    header("Idempotency-Key", required, schema, description)
}

/// `Idempotency-Key` on a transition: required.
pub struct TransitionHeaders;

impl IntoParams for TransitionHeaders {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            idempotency_key(
                true,
                "Required. The same key and body replay the first response",
            ),
            header(
                "If-Match",
                false,
                pattern_schema(
                    IF_MATCH_PATTERN,
                    false,
                    "`*`, or a list of entity tags like `\"<version>\"` (weak tags never match)",
                ),
                "\"<version>\" from the ETag; stale → 412",
            ),
            header(
                "traceparent",
                false,
                ObjectBuilder::new().schema_type(Type::String).into(),
                "W3C trace context, stored on the timeline and outbox",
            ),
        ]
    }
}

/// `Last-Event-ID` on an event stream: a timeline row id (`events::last_event_id` parses it).
pub struct LastEventId;

/// What `events::last_event_id` takes: an integer of at most 18 digits, spaces around it.
pub const LAST_EVENT_ID_PATTERN: &str = r"^[ \t]*[+-]?[0-9]{1,18}[ \t]*$";

impl IntoParams for LastEventId {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![header(
            "Last-Event-ID",
            false,
            pattern_schema(
                LAST_EVENT_ID_PATTERN,
                false,
                "A timeline row id; below every id means from the start",
            ),
            "The `id` of the last event received: the stream resumes after it",
        )]
    }
}

/// `Idempotency-Key` where it is optional (opening a case).
pub struct OptionalIdempotencyKey;

impl IntoParams for OptionalIdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![idempotency_key(
            false,
            "Replays the first response for the same key and body",
        )]
    }
}

// ---- Responses shared by every route of a kind --------------------------------------------

/// 400 on any route that reads a path id, query parameters, headers or a body.
#[derive(IntoResponses)]
pub enum Malformed {
    /// The request does not match this document: a malformed path id, query parameter, header
    /// or body field (`field` names it)
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
}

/// 413 on any route that reads a body.
#[derive(IntoResponses)]
pub enum BodyLimit {
    /// The body is larger than the server accepts (`server.body_limit_bytes`)
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
}

/// 404 on any route of one case (a case of another tenant does not exist for a scoped key).
#[derive(IntoResponses)]
pub enum CaseNotFound {
    /// No such case (or not one this key's tenant may see)
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
}

/// The schema component the error responses refer to, for tests and the modifiers.
pub fn problem_ref() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(Problem::name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whitespace_class_is_exactly_what_the_server_trims() {
        let class = compiled(&format!("^[{WHITESPACE_CLASS}]$"));
        let control = compiled(&format!("^[{CONTROL_CLASS}]$"));
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let text = c.to_string();
            assert_eq!(class.is_match(&text), c.is_whitespace(), "{:?}", c);
            assert_eq!(control.is_match(&text), c.is_control(), "{:?}", c);
        }
    }

    #[test]
    fn text_fields_accept_what_the_schema_allows() {
        let non_blank = compiled(&NON_BLANK_PATTERN);
        let samples = [
            "",
            " ",
            "\u{3000}\t",
            "\u{feff}",
            "x",
            " x ",
            "\u{1c}",
            &"é".repeat(200),
            &"é".repeat(201),
            &format!(" {}", "x".repeat(199)),
            &format!(" {}", "x".repeat(200)),
        ];
        for sample in samples {
            let documented = (1..=ACTOR_MAX_CHARS).contains(&sample.chars().count())
                && non_blank.is_match(sample);
            assert_eq!(
                text("actor", sample, ACTOR_MAX_CHARS).is_ok(),
                documented,
                "{sample:?}"
            );
        }
    }

    #[test]
    fn metric_point_names_are_checked_as_documented() {
        let printable = compiled(&PRINTABLE_NAME_PATTERN);
        let metric = compiled(METRIC_NAME_PATTERN);
        let point = |tenant: &str, name: &str| verifier::MetricPoint {
            tenant: tenant.into(),
            resource: "checkout".into(),
            metric: name.into(),
            bucket: chrono::Utc::now(),
            avg: Some(1.0),
            max: None,
            p95: None,
            count: None,
            labels: serde_json::json!({}),
        };
        let long = "t".repeat(verifier::MAX_NAME_LEN);
        let too_long = "t".repeat(verifier::MAX_NAME_LEN + 1);
        for tenant in [
            "t-001", "", " ", "\u{3000}", "a\u{7}", "a\u{85}b", "é", " x ", &long, &too_long,
        ] {
            let documented =
                tenant.chars().count() <= verifier::MAX_NAME_LEN && printable.is_match(tenant);
            assert_eq!(
                point(tenant, "p95_ms").validate().is_ok(),
                documented,
                "tenant {tenant:?}"
            );
        }
        let long = "m".repeat(verifier::MAX_METRIC_LEN);
        let too_long = "m".repeat(verifier::MAX_METRIC_LEN + 1);
        for name in ["p95_ms", "_x", "9x", "a-b", "", "é", &long, &too_long] {
            let documented =
                name.chars().count() <= verifier::MAX_METRIC_LEN && metric.is_match(name);
            assert_eq!(
                point("t-001", name).validate().is_ok(),
                documented,
                "metric {name:?}"
            );
        }
    }

    #[test]
    fn page_limits_are_the_documented_bounds() {
        let schema = serde_json::to_value(page_limit_schema()).unwrap();
        let (min, max) = (
            schema["minimum"].as_u64().unwrap() as u32,
            schema["maximum"].as_u64().unwrap() as u32,
        );
        assert!(page_limit(Some(min)).is_ok() && page_limit(Some(max)).is_ok());
        assert!(page_limit(Some(min - 1)).is_err() && page_limit(Some(max + 1)).is_err());
        assert_eq!(
            schema["default"].as_u64(),
            Some(u64::from(page_limit(None).unwrap()))
        );
    }

    #[test]
    fn the_if_match_pattern_is_what_the_parser_takes() {
        let pattern = compiled(IF_MATCH_PATTERN);
        for sample in [
            "*",
            "\"3\"",
            "W/\"3\"",
            "W/W/\"3\"",
            "\"+3\"",
            "\"-1\"",
            "\"\"",
            "3",
            "\"3",
            "\"x\"",
            "w/\"3\"",
            "**",
            "\"999999999999999999\"",
            "W/\"1\", \"3\"",
            "\"1\",",
            "W/\"\"",
            "W/\"x\" \"3\"",
            "\"1\", , W/\"abc\"",
        ] {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("if-match", sample.parse().unwrap());
            assert_eq!(
                crate::extract::if_match(&headers).is_ok(),
                pattern.is_match(sample),
                "If-Match {sample:?}: update IF_MATCH_PATTERN with extract::if_match"
            );
        }
    }
}
