//! Traces: every `tracing` span is an OpenTelemetry span (the `tracing-opentelemetry` layer
//! on the SDK's tracer), exported over OTLP/HTTP with protobuf when an endpoint is configured.
//!
//! [`Telemetry::start`] builds the tracer provider. With an endpoint, spans go through the
//! SDK's `BatchSpanProcessor`: a bounded queue (2,048 spans, `OTEL_BSP_MAX_QUEUE_SIZE`) that
//! never blocks the span's thread, drained by a thread of its own which POSTs batches of up to
//! 512 spans every 5 s (`OTEL_BSP_*`) to `{endpoint}/v1/traces`. A full queue drops the span;
//! the SDK does not say how many (it logs the first drop and, on shutdown, the total), so
//! [`TelemetryStats`] counts what ended and what the exporter was handed. Without an endpoint
//! the provider has no processor: spans still get their ids (log lines, the timeline and
//! exemplars use them) and nothing is sent.
//!
//! Before export, names, attribute values, event attributes and status messages go through the
//! service's [`Redactor`], as in the logs. Ids, parents, kinds (`otel.kind`), names
//! (`otel.name`) and status (ERROR for an ERROR event inside the span) are
//! `tracing-opentelemetry`'s; how the trace context crosses HTTP and the bus is `bus::trace`'s.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context as _};
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry::{KeyValue, Value as OtelValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor, Tracer,
};
use opentelemetry_sdk::Resource;
use orchestrator::redact::Redactor;

/// One POST's timeout, unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last batch.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
const SCOPE_NAME: &str = "opscase";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where and how to export. [`TelemetryConfig::from_env`] reads the standard variables.
#[derive(Clone)]
pub struct TelemetryConfig {
    /// The full URL spans are POSTed to (`.../v1/traces`).
    pub traces_url: String,
    /// `service.name` (`OTEL_SERVICE_NAME`, else "opscase").
    pub service_name: String,
    /// `service.version`.
    pub service_version: String,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. a collector's API key.
    pub headers: Vec<(String, String)>,
    /// One POST's timeout.
    pub timeout: Duration,
    /// Masks secrets in names, attribute values and status messages, as in the logs.
    pub redactor: Option<Redactor>,
}

impl TelemetryConfig {
    /// Export to `traces_url` (the full URL, `.../v1/traces`) with the defaults.
    pub fn new(traces_url: impl Into<String>) -> Self {
        Self {
            traces_url: traces_url.into(),
            service_name: "opscase".into(),
            service_version: VERSION.into(),
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            redactor: None,
        }
    }

    /// From the process environment; see [`TelemetryConfig::from_lookup`].
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `None` (export off) unless an endpoint is set, first found of:
    /// - `OPSCASE_OTLP_ENDPOINT`: the collector's base URL; `/v1/traces` is appended (unless the
    ///   URL already ends with it);
    /// - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full URL, used as it is;
    /// - `OTEL_EXPORTER_OTLP_ENDPOINT`: the base URL; `/v1/traces` is appended.
    ///
    /// Also read: `OTEL_SERVICE_NAME` (else a `service.name` in `OTEL_RESOURCE_ATTRIBUTES`,
    /// else "opscase"); `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or else `OTEL_EXPORTER_OTLP_HEADERS`
    /// (`key=value,key2=value2`, values percent-decoded); `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or
    /// else `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds); `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
    /// else `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` is refused: opscase is built with OTLP/HTTP,
    /// and sends protobuf, which every OTLP/HTTP receiver accepts, whichever `http/...` is
    /// named); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn export off. Empty
    /// variables count as unset. Errors name the variable. The SDK itself reads the rest:
    /// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` and the
    /// batch processor's `OTEL_BSP_*`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let var = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let (name, url) = if let Some(base) = var("OPSCASE_OTLP_ENDPOINT") {
            let url = if base.trim_end_matches('/').ends_with("/v1/traces") {
                base
            } else {
                traces_url_of(&base)
            };
            ("OPSCASE_OTLP_ENDPOINT", url)
        } else if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_ENDPOINT", traces_url_of(&base))
        } else {
            return Ok(None);
        };
        match reqwest::Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            _ => bail!("{name}: {url:?} is not an http:// or https:// URL"),
        }
        let mut config = Self::new(url);
        if let Some(service) = var("OTEL_SERVICE_NAME").or_else(|| {
            var("OTEL_RESOURCE_ATTRIBUTES")?
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| key.trim() == "service.name")
                .map(|(_, value)| value.trim().to_string())
        }) {
            config.service_name = service;
        }
        let signal_first = |specific: &'static str, general: &'static str| {
            var(specific)
                .map(|v| (specific, v))
                .or_else(|| var(general).map(|v| (general, v)))
        };
        if let Some((name, protocol)) = signal_first(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            if !protocol.starts_with("http/") {
                bail!("{name}: {protocol:?} is not supported; opscase exports OTLP/HTTP (http/protobuf)");
            }
        }
        if let Some((name, text)) = signal_first(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            config.headers = parse_headers(&text).with_context(|| name.to_string())?;
        }
        if let Some((name, text)) = signal_first(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            match text.parse::<u64>() {
                Ok(ms) if ms > 0 => config.timeout = Duration::from_millis(ms),
                _ => bail!("{name}: {text:?} is not a positive number of milliseconds"),
            }
        }
        Ok(Some(config))
    }

    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Some(redactor);
        self
    }
}

/// Header values (API keys) are not printed.
impl fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("TelemetryConfig")
            .field("traces_url", &self.traces_url)
            .field("service_name", &self.service_name)
            .field("service_version", &self.service_version)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("redactor", &self.redactor.is_some())
            .finish()
    }
}

/// `{base}/v1/traces`, as the OTel specification builds it from `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn traces_url_of(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// `key=value,key2=value2` with percent-encoded values (the W3C baggage format the OTel
/// specification uses for `OTEL_EXPORTER_OTLP_HEADERS`).
fn parse_headers(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            bail!("{item:?} is not key=value");
        };
        let key = key.trim();
        let value = percent_decode(value.trim())
            .with_context(|| format!("the value of {key:?} is not valid percent-encoded UTF-8"))?;
        reqwest::header::HeaderName::from_bytes(key.as_bytes())
            .with_context(|| format!("{key:?} is not a header name"))?;
        reqwest::header::HeaderValue::from_str(&value)
            .with_context(|| format!("the value of {key:?} is not a header value"))?;
        headers.push((key.to_string(), value));
    }
    Ok(headers)
}

fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).context("truncated %-escape")?;
            let hex = std::str::from_utf8(hex)?;
            decoded.push(u8::from_str_radix(hex, 16).context("bad %-escape")?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(decoded)?)
}

/// What export has done so far. The SDK's queue does not report its drops: spans that ended
/// but were not handed to the exporter are queued or dropped; after [`Telemetry::shutdown`]
/// (which sends what is queued) they are the dropped ones ([`TelemetryStats::dropped`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TelemetryStats {
    /// Sampled spans that ended.
    pub ended: u64,
    /// Spans in batches the endpoint accepted.
    pub exported: u64,
    /// Spans in batches whose POST failed.
    pub failed: u64,
}

impl TelemetryStats {
    /// Ended but never sent: still queued while running, dropped once shut down.
    pub fn dropped(&self) -> u64 {
        self.ended.saturating_sub(self.exported + self.failed)
    }
}

#[derive(Debug, Default)]
struct Counters {
    ended: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TelemetryStats {
        TelemetryStats {
            ended: self.ended.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The tracer provider; export is on when it was started with a [`TelemetryConfig`].
pub struct Telemetry {
    provider: SdkTracerProvider,
    counters: Arc<Counters>,
    traces_url: Option<String>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces_url", &self.traces_url)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Telemetry {
    /// Export to `config`'s endpoint, or (`None`) only give spans their ids. Needs no runtime:
    /// the batch processor has a thread of its own. Fails on a bad header or when no HTTP
    /// client can be built.
    pub fn start(config: Option<TelemetryConfig>) -> anyhow::Result<Self> {
        let counters = Arc::new(Counters::default());
        let service_name = config
            .as_ref()
            .map_or("opscase", |config| config.service_name.as_str())
            .to_string();
        // The builder's detectors read OTEL_RESOURCE_ATTRIBUTES; the name and version win.
        let resource = Resource::builder()
            .with_service_name(service_name)
            .with_attribute(KeyValue::new("service.version", VERSION))
            .build();
        let mut provider = SdkTracerProvider::builder().with_resource(resource);
        let traces_url = config.as_ref().map(|config| config.traces_url.clone());
        if let Some(config) = config {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(config.traces_url.clone())
                .with_timeout(config.timeout)
                .with_headers(config.headers.iter().cloned().collect())
                .build()
                .context("cannot build the OTLP exporter")?;
            let exporter = Redacting {
                inner: exporter,
                redactor: config.redactor.clone(),
                counters: counters.clone(),
            };
            provider = provider.with_span_processor(Counting {
                inner: BatchSpanProcessor::builder(exporter).build(),
                counters: counters.clone(),
            });
        }
        Ok(Self {
            provider: provider.build(),
            counters,
            traces_url,
        })
    }

    /// The tracer for the `tracing-opentelemetry` layer.
    pub fn tracer(&self) -> Tracer {
        self.provider.tracer(SCOPE_NAME)
    }

    /// Where spans go, when export is on.
    pub fn traces_url(&self) -> Option<&str> {
        self.traces_url.as_deref()
    }

    pub fn stats(&self) -> TelemetryStats {
        self.counters.snapshot()
    }

    /// Send every span that ended so far; blocks until the endpoint answered or timed out.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// Send what is queued and stop; blocks at most 5 s.
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown_with_timeout(SHUTDOWN_WAIT);
    }
}

static GLOBAL: OnceLock<Telemetry> = OnceLock::new();

/// Keep `telemetry` for the life of the process (what `logging::init` does with the provider
/// it starts); gives it back if one is already installed.
pub fn set_global(telemetry: Telemetry) -> Result<(), Telemetry> {
    GLOBAL.set(telemetry)
}

/// The provider `logging::init` started.
pub fn global() -> Option<&'static Telemetry> {
    GLOBAL.get()
}

/// Send the last spans and stop the global provider, if any (a static is never dropped: call
/// this before the process exits, or the spans of its last seconds are lost). Blocks; call it
/// outside the runtime.
pub fn shutdown_global() {
    if let Some(telemetry) = GLOBAL.get() {
        if telemetry.traces_url.is_some() {
            telemetry.shutdown();
            let stats = telemetry.stats();
            if stats.dropped() > 0 || stats.failed > 0 {
                tracing::warn!(
                    exported = stats.exported,
                    failed = stats.failed,
                    dropped = stats.dropped(),
                    "some spans were not exported"
                );
            }
        }
    }
}

/// Counts the spans that end (sampled ones: the SDK calls processors only for those).
#[derive(Debug)]
struct Counting<P> {
    inner: P,
    counters: Arc<Counters>,
}

impl<P: SpanProcessor> SpanProcessor for Counting<P> {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        self.counters.ended.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Masks secrets in what leaves the process, and counts how batches went.
#[derive(Debug)]
struct Redacting<E> {
    inner: E,
    redactor: Option<Redactor>,
    counters: Arc<Counters>,
}

impl<E: SpanExporter> SpanExporter for Redacting<E> {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        if let Some(redactor) = &self.redactor {
            for span in &mut batch {
                redact_span(span, redactor);
            }
        }
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let counter = match result {
            Ok(()) => &self.counters.exported,
            Err(_) => &self.counters.failed,
        };
        counter.fetch_add(spans, Ordering::Relaxed);
        result
    }
    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

fn redact_span(span: &mut SpanData, redactor: &Redactor) {
    let name = redactor.text(&span.name);
    if name != span.name {
        span.name = name.into();
    }
    redact_attributes(&mut span.attributes, redactor);
    for event in span.events.events.iter_mut() {
        let name = redactor.text(&event.name);
        if name != event.name {
            event.name = name.into();
        }
        redact_attributes(&mut event.attributes, redactor);
    }
    if let Status::Error { description } = &mut span.status {
        let masked = redactor.text(description);
        if masked != *description {
            *description = masked.into();
        }
    }
}

fn redact_attributes(attributes: &mut [KeyValue], redactor: &Redactor) {
    for attribute in attributes {
        if redactor.is_secret_field(attribute.key.as_str()) {
            attribute.value = OtelValue::from("***");
        } else if let OtelValue::String(text) = &attribute.value {
            let masked = redactor.text(text.as_str());
            if masked != text.as_str() {
                attribute.value = OtelValue::from(masked);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn export_is_off_without_an_endpoint() {
        assert!(TelemetryConfig::from_lookup(lookup(&[])).unwrap().is_none());
        assert!(
            TelemetryConfig::from_lookup(lookup(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]))
                .unwrap()
                .is_none()
        );
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert!(TelemetryConfig::from_lookup(lookup(&disabled))
            .unwrap()
            .is_none());
        let none = [
            ("OPSCASE_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert!(TelemetryConfig::from_lookup(lookup(&none))
            .unwrap()
            .is_none());
    }

    #[test]
    fn endpoints_follow_the_otel_rules_and_opscase_wins() {
        let url = |vars: &[(&str, &str)]| {
            TelemetryConfig::from_lookup(lookup(vars))
                .unwrap()
                .unwrap()
                .traces_url
        };
        assert_eq!(
            url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/otlp/")]),
            "http://collector:4318/otlp/v1/traces"
        );
        assert_eq!(
            url(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://traces.example.com/ingest"
                ),
            ]),
            "https://traces.example.com/ingest"
        );
        assert_eq!(
            url(&[
                ("OPSCASE_OTLP_ENDPOINT", "http://localhost:4318/"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://traces.example.com/ingest"
                ),
            ]),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            url(&[("OPSCASE_OTLP_ENDPOINT", "http://localhost:4318/v1/traces")]),
            "http://localhost:4318/v1/traces"
        );
    }

    #[test]
    fn bad_settings_name_their_variable() {
        let error = |vars: &[(&str, &str)]| {
            TelemetryConfig::from_lookup(lookup(vars))
                .unwrap_err()
                .to_string()
        };
        assert!(error(&[("OPSCASE_OTLP_ENDPOINT", "collector:4318")])
            .starts_with("OPSCASE_OTLP_ENDPOINT"));
        assert!(error(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x")])
            .starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert!(error(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
            .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL"));
        assert!(error(&[base, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")])
            .starts_with("OTEL_EXPORTER_OTLP_HEADERS"));
        assert!(error(&[base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")])
            .starts_with("OTEL_EXPORTER_OTLP_TIMEOUT"));
    }

    #[test]
    fn service_name_headers_and_timeout_come_from_the_environment() {
        let config = TelemetryConfig::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "opscase-eu"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-other=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "x-api-key=abc%3D%3D, x-team = ops%20eu",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.service_name, "opscase-eu");
        assert_eq!(config.service_version, VERSION);
        assert_eq!(
            config.headers,
            vec![
                ("x-api-key".to_string(), "abc==".to_string()),
                ("x-team".to_string(), "ops eu".to_string()),
            ]
        );
        assert_eq!(config.timeout, Duration::from_millis(2500));
        let from_resource = TelemetryConfig::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=ops-eu",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(from_resource.service_name, "ops-eu");
    }

    #[test]
    fn secrets_are_masked_before_export() {
        let redactor = Redactor::default();
        let mut span = SpanData {
            span_context: opentelemetry::trace::SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: opentelemetry::trace::SpanKind::Internal,
            name: "request".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: vec![
                KeyValue::new("password", "hunter2"),
                KeyValue::new("note", "Authorization: Bearer abcdef0123456789"),
                KeyValue::new("attempt", 2),
            ],
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::error("key osk_abcdef0123456789 refused"),
            instrumentation_scope: Default::default(),
        };
        redact_span(&mut span, &redactor);
        let value = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
                .unwrap()
        };
        assert_eq!(value("password"), "***");
        assert!(
            !value("note").contains("abcdef0123456789"),
            "{}",
            value("note")
        );
        assert_eq!(value("attempt"), "2");
        let Status::Error { description } = &span.status else {
            panic!("status")
        };
        assert!(!description.contains("abcdef0123456789"), "{description}");
    }
}
