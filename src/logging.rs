//! Log lines: JSON objects with `timestamp`, `level`, `target`, `message`, the event's fields,
//! and the fields of the spans it happens in (so a request's lines carry its `request_id` at
//! the top level, where log queries expect it). `--log-format text` is for people.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use orchestrator::redact::Redactor;
use tracing_opentelemetry::OtelData;

use crate::config::{Config, LogFormat};
use crate::telemetry::{self, Telemetry, TelemetryConfig};

/// Install the global subscriber: log lines on stdout, filtered by `RUST_LOG` or `log.level`,
/// and the OpenTelemetry layer, which makes spans at INFO and above (whatever the log level,
/// so traces do not depend on how verbose the logs are) OpenTelemetry spans: their ids are in
/// the log lines, and they are exported when an OTLP endpoint is configured
/// (`OPSCASE_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_*`: see [`TelemetryConfig::from_lookup`]).
/// The provider is kept in [`telemetry::global`]; call [`telemetry::shutdown_global`] before
/// exiting to send the last spans.
pub fn init(config: &Config) {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let (otlp, mut problem) = match TelemetryConfig::from_env() {
        Ok(otlp) => (otlp.map(|otlp| otlp.with_redactor(config.redactor())), None),
        Err(error) => (None, Some(error)),
    };
    let telemetry = match Telemetry::start(otlp) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            problem = Some(error);
            Telemetry::start(None).expect("a tracer provider without export starts")
        }
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(telemetry.tracer())
        .with_filter(LevelFilter::INFO);
    let registry = tracing_subscriber::registry().with(spans);
    let stdout = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
    match config.log.format {
        LogFormat::Json => registry
            .with(
                stdout
                    .fmt_fields(JsonFields::new())
                    .event_format(FlatJson {
                        redactor: config.redactor(),
                    })
                    .with_filter(filter()),
            )
            .init(),
        LogFormat::Text => registry.with(stdout.with_filter(filter())).init(),
    }
    if let Some(error) = problem {
        tracing::warn!(error = format!("{error:#}"), "OTLP span export is off");
    }
    if let Some(endpoint) = telemetry.traces_url() {
        tracing::info!(endpoint, "exporting spans over OTLP/HTTP");
    }
    let _ = telemetry::set_global(telemetry);
}

/// One flat JSON object per event, with secrets masked.
pub struct FlatJson {
    redactor: Redactor,
}

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        // Outer spans first, so an inner span's field of the same name wins.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields);
                }
            }
        }
        // The ids of the innermost span: every line inside a span names its trace and span.
        if let Some(span) = ctx.event_scope().and_then(|mut scope| {
            scope.find(|span| {
                span.extensions()
                    .get::<OtelData>()
                    .is_some_and(|data| data.span_id().is_some())
            })
        }) {
            if let Some(data) = span.extensions().get::<OtelData>() {
                if let (Some(trace), Some(id)) = (data.trace_id(), data.span_id()) {
                    line.insert("trace_id".into(), trace.to_string().into());
                    line.insert("span_id".into(), id.to_string().into());
                }
            }
        }
        event.record(&mut Fields(&mut line));
        let mut line = Value::Object(line);
        self.redactor.json(&mut line);
        writeln!(writer, "{line}")
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}
