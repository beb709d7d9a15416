//! Span export over OTLP/HTTP with the JSON encoding, when an endpoint is configured.
//!
//! [`OtlpLayer`] is a `tracing_subscriber` layer: it turns every closed span into an OTLP span
//! and hands it to a bounded queue without ever blocking (a full queue drops the span and counts
//! it). A background thread with a runtime of its own drains the queue and POSTs batches of up
//! to 512 spans, at least once a second, to `{endpoint}/v1/traces` as the protobuf-JSON mapping
//! of `ExportTraceServiceRequest` (ids as lowercase hex, enums as integers, 64-bit integers as
//! decimal strings). A failed POST is retried once (transport errors, 429, 502, 503, 504, as the
//! OTLP specification says; other answers are not retried), then the batch is dropped and counted.
//! [`Telemetry`] is the handle: `flush`, `shutdown` (or `Drop`, or [`shutdown_global`] for the one
//! that `logging::init` installs) send what is queued before returning.
//!
//! Identity: trace context travels as span fields, not as an OpenTelemetry context.
//! - A span with its own `trace_id` (32 hex digits) keeps it, with its own `span_id` (16 hex
//!   digits) or a fresh one. Its parent is its `parent_span_id` field (the caller's span, from a
//!   `traceparent`) when it has one; otherwise the nearest ancestor span when that one is in the
//!   same trace; otherwise it is a root.
//! - A span without a `trace_id` (`transition`, `step`, ...) inherits the trace of the nearest
//!   exported ancestor, whose span becomes its parent, and keeps its `span_id` field or gets a
//!   fresh one.
//! - A span without a `trace_id` and no ancestor (a `relay_batch` at the root) starts a new trace.
//! - Ids are read when the span is created; recording them later changes nothing.
//!
//! Name: the `otel.name` field if recorded (also later, with `Span::record`), else the span's
//! name. Kind: the `otel.kind` field if recorded (`server`, `client`, `producer`, `consumer`,
//! `internal`), else SERVER for `request`, CONSUMER for `consume`, INTERNAL otherwise. Status:
//! `otel.status_code` (`ok`/`error`) and `otel.status_message` if recorded, else ERROR with the
//! message of the first ERROR-level event inside the span, else UNSET. Attributes: every other
//! field, recorded at creation or later (`trace_id`, `span_id`, `parent_span_id` and `otel.*` are
//! not attributes), as string, int, bool or double values, masked by the service's redactor.
//!
//! Spans created on the exporter's own threads (its HTTP client) are never exported, so an
//! export cannot cause more exports.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use orchestrator::redact::Redactor;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A batch is sent once it holds this many spans.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// ... or when it is this old, whichever comes first.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Closed spans waiting for the exporter; beyond this they are dropped (and counted).
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// One POST's timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`'s default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before the one retry, unless the server's `Retry-After` asks for longer (capped).
const RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The most a blocking shutdown (`Drop`, `shutdown_global`) holds the process up.
const MAX_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// The exporter says that it failed or dropped spans at most this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// OTLP `SpanKind` values.
pub const KIND_INTERNAL: i64 = 1;
pub const KIND_SERVER: i64 = 2;
pub const KIND_CLIENT: i64 = 3;
pub const KIND_PRODUCER: i64 = 4;
pub const KIND_CONSUMER: i64 = 5;

/// OTLP `Status.code` values.
const STATUS_UNSET: i64 = 0;
const STATUS_OK: i64 = 1;
const STATUS_ERROR: i64 = 2;

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
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub queue_capacity: usize,
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
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
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
    /// Also read: `OTEL_SERVICE_NAME`; `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or else
    /// `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,key2=value2`, values percent-decoded);
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or else `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds);
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or else `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` is
    /// refused: the payload is always JSON, which OTLP/HTTP receivers accept whatever
    /// `http/...` protocol is named); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
    /// turn export off. Empty variables count as unset. Errors name the variable.
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
        if let Some(service) = var("OTEL_SERVICE_NAME") {
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
                bail!("{name}: {protocol:?} is not supported; opscase exports OTLP/HTTP with JSON (http/json)");
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
            .field("batch_size", &self.batch_size)
            .field("flush_interval", &self.flush_interval)
            .field("queue_capacity", &self.queue_capacity)
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

/// What the exporter has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TelemetryStats {
    /// Spans the endpoint accepted.
    pub exported: u64,
    /// Spans dropped because the queue was full (or the exporter had shut down).
    pub dropped: u64,
    /// Spans whose POST failed (after its retry) or that the endpoint rejected.
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TelemetryStats {
        TelemetryStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

enum Ack {
    Async(oneshot::Sender<()>),
    Blocking(std::sync::mpsc::Sender<()>),
}

impl Ack {
    fn send(self) {
        match self {
            Ack::Async(sender) => {
                let _ = sender.send(());
            }
            Ack::Blocking(sender) => {
                let _ = sender.send(());
            }
        }
    }
}

enum Control {
    /// Send everything queued, then acknowledge.
    Flush(Ack),
    /// Send everything queued, acknowledge and stop.
    Shutdown(Ack),
}

/// The running exporter. Dropping it shuts it down (see [`Telemetry::shutdown_blocking`]);
/// in async code prefer `shutdown().await`, which does not block a runtime thread.
pub struct Telemetry {
    spans: mpsc::Sender<SpanRecord>,
    control: mpsc::UnboundedSender<Control>,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stopped: AtomicBool,
    /// How long a blocking shutdown waits for the last export.
    shutdown_wait: Duration,
    traces_url: String,
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
    /// Start the exporter thread. Needs no runtime (it brings its own), so it can run before
    /// the service's runtime exists. Fails on a bad header or when no HTTP client can be built.
    pub fn start(config: TelemetryConfig) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (key, value) in &config.headers {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(key.as_bytes())?,
                reqwest::header::HeaderValue::from_str(value)?,
            );
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(format!("opscase/{VERSION}"))
            .default_headers(headers)
            .build()
            .context("cannot build the OTLP HTTP client")?;
        let (spans, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let (control, control_receiver) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("opscase-otlp")
            .on_thread_start(|| EXPORTER_THREAD.with(|flag| flag.set(true)))
            .build()
            .context("cannot start the OTLP exporter's runtime")?;
        let exporter = Exporter {
            client,
            traces_url: config.traces_url.clone(),
            resource: resource_of(&config),
            redactor: config.redactor.clone(),
            counters: counters.clone(),
            last_warning: None,
            warned_dropped: 0,
        };
        let batch_size = config.batch_size.max(1);
        let flush_interval = config.flush_interval;
        let thread = std::thread::Builder::new()
            .name("opscase-otlp".into())
            .spawn(move || {
                EXPORTER_THREAD.with(|flag| flag.set(true));
                runtime.block_on(exporter.run(
                    receiver,
                    control_receiver,
                    batch_size,
                    flush_interval,
                ));
            })
            .context("cannot start the OTLP exporter's thread")?;
        Ok(Self {
            spans,
            control,
            counters,
            thread: Mutex::new(Some(thread)),
            stopped: AtomicBool::new(false),
            shutdown_wait: (config.timeout * 2 + MAX_RETRY_AFTER).min(MAX_SHUTDOWN_WAIT),
            traces_url: config.traces_url,
        })
    }

    /// A layer feeding this exporter (any number may be made; they share the queue).
    pub fn layer(&self) -> OtlpLayer {
        OtlpLayer {
            spans: self.spans.clone(),
            counters: self.counters.clone(),
        }
    }

    pub fn traces_url(&self) -> &str {
        &self.traces_url
    }

    pub fn stats(&self) -> TelemetryStats {
        self.counters.snapshot()
    }

    /// Send every span closed so far; returns once the endpoint answered (or the POST and its
    /// retry failed).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.control.send(Control::Flush(Ack::Async(ack))).is_ok() {
            let _ = done.await;
        }
    }

    /// Flush and stop the exporter; spans closed afterwards are dropped (and counted).
    pub async fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let (ack, done) = oneshot::channel();
        if self
            .control
            .send(Control::Shutdown(Ack::Async(ack)))
            .is_ok()
        {
            let _ = done.await;
        }
        // The thread ends on its own once it acknowledged: not joined, so that no runtime
        // thread blocks on it.
        drop(self.thread.lock().map(|mut t| t.take()));
    }

    /// As [`Telemetry::shutdown`], blocking the calling thread as long as the last export may
    /// take (twice the POST timeout plus the retry delay), but at most 5 s. For `main` after
    /// its runtime is done, and for `Drop`.
    pub fn shutdown_blocking(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let (ack, done) = std::sync::mpsc::channel();
        if self
            .control
            .send(Control::Shutdown(Ack::Blocking(ack)))
            .is_ok()
            && done.recv_timeout(self.shutdown_wait).is_ok()
        {
            self.join();
        }
    }

    fn join(&self) {
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown_blocking();
    }
}

static GLOBAL: OnceLock<Telemetry> = OnceLock::new();

/// Keep `telemetry` for the life of the process (what `logging::init` does with the exporter
/// it starts); gives it back if one is already installed.
pub fn set_global(telemetry: Telemetry) -> Result<(), Telemetry> {
    GLOBAL.set(telemetry)
}

/// The exporter `logging::init` started, if export is configured.
pub fn global() -> Option<&'static Telemetry> {
    GLOBAL.get()
}

/// Flush and stop the global exporter, if any (a static is never dropped: call this before the
/// process exits, or the spans of its last second are lost). Blocks; call it outside the runtime
/// or use `global()` and `shutdown().await` inside it.
pub fn shutdown_global() {
    if let Some(telemetry) = GLOBAL.get() {
        telemetry.shutdown_blocking();
    }
}

thread_local! {
    /// Set on the exporter's threads: their spans (the HTTP client's) are not exported.
    static EXPORTER_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn on_exporter_thread() -> bool {
    EXPORTER_THREAD.try_with(Cell::get).unwrap_or(true)
}

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq)]
enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl AttrValue {
    fn as_text(&self) -> String {
        match self {
            AttrValue::Str(text) => text.clone(),
            AttrValue::Int(n) => n.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::Double(x) => x.to_string(),
        }
    }

    /// The OTLP `AnyValue` (int64 as a decimal string, per the protobuf JSON mapping).
    fn to_json(&self, key: &str, redactor: Option<&Redactor>) -> Value {
        if let Some(redactor) = redactor {
            if redactor.is_secret_field(key) {
                return json!({ "stringValue": "***" });
            }
        }
        match self {
            AttrValue::Str(text) => json!({ "stringValue": redact(text, redactor) }),
            AttrValue::Int(n) => json!({ "intValue": n.to_string() }),
            AttrValue::Bool(b) => json!({ "boolValue": b }),
            // JSON has no NaN or infinity; protobuf JSON spells them as strings.
            AttrValue::Double(x) if x.is_nan() => json!({ "doubleValue": "NaN" }),
            AttrValue::Double(x) if x.is_infinite() => {
                json!({ "doubleValue": if *x > 0.0 { "Infinity" } else { "-Infinity" } })
            }
            AttrValue::Double(x) => json!({ "doubleValue": x }),
        }
    }
}

fn redact(text: &str, redactor: Option<&Redactor>) -> String {
    match redactor {
        Some(redactor) => redactor.text(text),
        None => text.to_string(),
    }
}

/// The fields of a span, as recorded at creation and later.
#[derive(Debug, Default)]
struct Fields {
    trace_id: Option<String>,
    span_id: Option<String>,
    parent_span_id: Option<String>,
    otel_name: Option<String>,
    otel_kind: Option<i64>,
    status_code: Option<i64>,
    status_message: Option<String>,
    attributes: Vec<(&'static str, AttrValue)>,
}

impl Fields {
    fn set(&mut self, name: &'static str, value: AttrValue) {
        match name {
            "trace_id" => self.trace_id = Some(value.as_text()),
            "span_id" => self.span_id = Some(value.as_text()),
            "parent_span_id" => self.parent_span_id = Some(value.as_text()),
            "otel.name" => self.otel_name = Some(value.as_text()),
            "otel.kind" => self.otel_kind = kind_of(&value.as_text()),
            "otel.status_code" => {
                self.status_code = match value.as_text().to_ascii_lowercase().as_str() {
                    "ok" => Some(STATUS_OK),
                    "error" => Some(STATUS_ERROR),
                    "unset" => Some(STATUS_UNSET),
                    _ => self.status_code,
                }
            }
            "otel.status_message" => self.status_message = Some(value.as_text()),
            _ if name.starts_with("otel.") => {}
            _ => match self.attributes.iter_mut().find(|(key, _)| *key == name) {
                Some((_, old)) => *old = value,
                None => self.attributes.push((name, value)),
            },
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), AttrValue::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), AttrValue::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        let value =
            i64::try_from(value).map_or_else(|_| AttrValue::Str(value.to_string()), AttrValue::Int);
        self.set(field.name(), value);
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        let value =
            i64::try_from(value).map_or_else(|_| AttrValue::Str(value.to_string()), AttrValue::Int);
        self.set(field.name(), value);
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        let value =
            i64::try_from(value).map_or_else(|_| AttrValue::Str(value.to_string()), AttrValue::Int);
        self.set(field.name(), value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), AttrValue::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), AttrValue::Double(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), AttrValue::Str(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field.name(), AttrValue::Str(format!("{value:?}")));
    }
}

fn kind_of(text: &str) -> Option<i64> {
    match text.to_ascii_lowercase().as_str() {
        "internal" => Some(KIND_INTERNAL),
        "server" => Some(KIND_SERVER),
        "client" => Some(KIND_CLIENT),
        "producer" => Some(KIND_PRODUCER),
        "consumer" => Some(KIND_CONSUMER),
        _ => None,
    }
}

/// `text` as a lowercase id of `digits` hex digits, unless it is not one (or is all zeros,
/// which W3C and OTLP call invalid).
fn valid_id(text: Option<&str>, digits: usize) -> Option<String> {
    let text = text?.trim();
    let valid = text.len() == digits
        && text.bytes().all(|b| b.is_ascii_hexdigit())
        && text.bytes().any(|b| b != b'0');
    valid.then(|| text.to_ascii_lowercase())
}

fn new_trace_id() -> String {
    format!("{:032x}", uuid::Uuid::new_v4().as_u128())
}

fn new_span_id() -> String {
    loop {
        // Each half of a v4 UUID has a few fixed bits, at different places: XOR-ed, all 64
        // bits are random.
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        let id = high ^ low;
        if id != 0 {
            return format!("{id:016x}");
        }
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Kept in the span's extensions while it is open.
struct SpanData {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    fields: Fields,
    /// The message of the first ERROR event inside the span.
    error: Option<String>,
    start_unix_nanos: u64,
    started: Instant,
}

/// A closed span, on its way to the exporter.
#[derive(Debug, Clone)]
struct SpanRecord {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    name: String,
    kind: i64,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
    attributes: Vec<(&'static str, AttrValue)>,
    status_code: i64,
    status_message: Option<String>,
}

/// Turns closed spans into OTLP spans for a [`Telemetry`] exporter; never blocks.
pub struct OtlpLayer {
    spans: mpsc::Sender<SpanRecord>,
    counters: Arc<Counters>,
}

impl OtlpLayer {
    fn send(&self, record: SpanRecord) {
        if self.spans.try_send(record).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if on_exporter_thread() {
            return;
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        // The nearest ancestor this layer exports: the trace to inherit, the span to hang on.
        let ancestor = span.scope().skip(1).find_map(|ancestor| {
            let extensions = ancestor.extensions();
            extensions
                .get::<SpanData>()
                .map(|data| (data.trace_id.clone(), data.span_id.clone()))
        });
        let own_trace = valid_id(fields.trace_id.as_deref(), 32);
        let own_parent = valid_id(fields.parent_span_id.as_deref(), 16);
        let (trace_id, parent_span_id) = match (own_trace, ancestor) {
            (Some(trace), ancestor) => {
                let parent = own_parent.or_else(|| {
                    ancestor.and_then(|(ancestor_trace, ancestor_span)| {
                        (ancestor_trace == trace).then_some(ancestor_span)
                    })
                });
                (trace, parent)
            }
            (None, Some((trace, parent))) => (trace, Some(parent)),
            (None, None) => (new_trace_id(), None),
        };
        let span_id = valid_id(fields.span_id.as_deref(), 16).unwrap_or_else(new_span_id);
        let data = SpanData {
            trace_id,
            span_id,
            parent_span_id,
            fields,
            error: None,
            start_unix_nanos: unix_nanos(SystemTime::now()),
            started: Instant::now(),
        };
        span.extensions_mut().insert(data);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if let Some(data) = extensions.get_mut::<SpanData>() {
            values.record(&mut data.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() != Level::ERROR {
            return;
        }
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if let Some(data) = extensions.get_mut::<SpanData>() {
            if data.error.is_none() {
                let mut message = Message(None);
                event.record(&mut message);
                data.error = Some(message.0.unwrap_or_default());
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(data) = span.extensions_mut().remove::<SpanData>() else {
            return;
        };
        let elapsed = u64::try_from(data.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let name = match data.fields.otel_name {
            Some(name) if !name.is_empty() => name,
            _ => span.name().to_string(),
        };
        let kind = data.fields.otel_kind.unwrap_or_else(|| match span.name() {
            "request" => KIND_SERVER,
            "consume" => KIND_CONSUMER,
            _ => KIND_INTERNAL,
        });
        let (status_code, status_message) = match (data.fields.status_code, data.error) {
            (Some(code), _) => (code, data.fields.status_message),
            (None, Some(message)) => (STATUS_ERROR, Some(message)),
            (None, None) => (STATUS_UNSET, None),
        };
        self.send(SpanRecord {
            trace_id: data.trace_id,
            span_id: data.span_id,
            parent_span_id: data.parent_span_id,
            name,
            kind,
            start_unix_nanos: data.start_unix_nanos,
            end_unix_nanos: data.start_unix_nanos.saturating_add(elapsed),
            attributes: data.fields.attributes,
            status_code,
            status_message,
        });
    }
}

/// An event's `message`.
struct Message(Option<String>);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// `resource.attributes`.
fn resource_of(config: &TelemetryConfig) -> Value {
    json!([
        { "key": "service.name", "value": { "stringValue": config.service_name } },
        { "key": "service.version", "value": { "stringValue": config.service_version } },
    ])
}

/// The `ExportTraceServiceRequest` for `spans`, in the OTLP protobuf-JSON mapping.
fn encode(spans: &[SpanRecord], resource: &Value, redactor: Option<&Redactor>) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| encode_span(span, redactor))
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": resource },
            "scopeSpans": [{
                "scope": { "name": SCOPE_NAME, "version": VERSION },
                "spans": spans,
            }],
        }],
    })
}

fn encode_span(span: &SpanRecord, redactor: Option<&Redactor>) -> Value {
    let attributes: Vec<Value> = span
        .attributes
        .iter()
        .map(|(key, value)| json!({ "key": key, "value": value.to_json(key, redactor) }))
        .collect();
    let mut status = serde_json::Map::new();
    status.insert("code".into(), span.status_code.into());
    if let Some(message) = &span.status_message {
        status.insert("message".into(), redact(message, redactor).into());
    }
    let mut encoded = json!({
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "name": redact(&span.name, redactor),
        "kind": span.kind,
        "startTimeUnixNano": span.start_unix_nanos.to_string(),
        "endTimeUnixNano": span.end_unix_nanos.to_string(),
        "attributes": attributes,
        "status": status,
    });
    // proto3 JSON leaves an empty `bytes` field out: a root span has no parentSpanId.
    if let Some(parent) = &span.parent_span_id {
        encoded["parentSpanId"] = parent.clone().into();
    }
    encoded
}

/// How one POST went.
enum Outcome {
    /// 2xx; the number of spans the endpoint said it rejected (`partialSuccess`).
    Sent {
        rejected: u64,
    },
    Retry {
        error: String,
        after: Duration,
    },
    Failed {
        error: String,
    },
}

/// The exporter thread's state.
struct Exporter {
    client: reqwest::Client,
    traces_url: String,
    resource: Value,
    redactor: Option<Redactor>,
    counters: Arc<Counters>,
    last_warning: Option<Instant>,
    warned_dropped: u64,
}

impl Exporter {
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<SpanRecord>,
        mut control: mpsc::UnboundedReceiver<Control>,
        batch_size: usize,
        flush_interval: Duration,
    ) {
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(batch_size);
        let mut ticker = tokio::time::interval(flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                biased;
                command = control.recv() => {
                    // Everything closed before the command was sent is in the queue by now.
                    while let Ok(record) = spans.try_recv() {
                        batch.push(record);
                        if batch.len() >= batch_size {
                            self.export(std::mem::take(&mut batch)).await;
                        }
                    }
                    if !batch.is_empty() {
                        self.export(std::mem::take(&mut batch)).await;
                    }
                    match command {
                        Some(Control::Flush(ack)) => ack.send(),
                        Some(Control::Shutdown(ack)) => {
                            // Close the queue first, so spans closed from now on count as
                            // dropped rather than waiting for ever.
                            spans.close();
                            while spans.try_recv().is_ok() {
                                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            ack.send();
                            return;
                        }
                        None => return,
                    }
                }
                received = spans.recv() => match received {
                    Some(record) => {
                        batch.push(record);
                        if batch.len() >= batch_size {
                            self.export(std::mem::take(&mut batch)).await;
                            ticker.reset();
                        }
                    }
                    None => {
                        if !batch.is_empty() {
                            self.export(std::mem::take(&mut batch)).await;
                        }
                        return;
                    }
                },
                _ = ticker.tick() => {
                    if !batch.is_empty() {
                        self.export(std::mem::take(&mut batch)).await;
                    }
                    self.warn_about_drops();
                }
            }
        }
    }

    async fn export(&mut self, batch: Vec<SpanRecord>) {
        let count = batch.len() as u64;
        let body = match serde_json::to_vec(&encode(&batch, &self.resource, self.redactor.as_ref()))
        {
            Ok(body) => body,
            Err(error) => {
                self.failed(count, &format!("cannot encode spans: {error}"));
                return;
            }
        };
        drop(batch);
        let mut outcome = self.post(body.clone()).await;
        if let Outcome::Retry { after, .. } = &outcome {
            tokio::time::sleep(*after).await;
            outcome = self.post(body).await;
        }
        match outcome {
            Outcome::Sent { rejected } => {
                let rejected = rejected.min(count);
                self.counters
                    .exported
                    .fetch_add(count - rejected, Ordering::Relaxed);
                if rejected > 0 {
                    self.failed(rejected, "the endpoint rejected some spans");
                }
            }
            Outcome::Retry { error, .. } | Outcome::Failed { error } => self.failed(count, &error),
        }
    }

    async fn post(&self, body: Vec<u8>) -> Outcome {
        let sent = self
            .client
            .post(&self.traces_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                return Outcome::Retry {
                    error: error.without_url().to_string(),
                    after: RETRY_DELAY,
                }
            }
        };
        let status = response.status();
        if status.is_success() {
            let rejected = response
                .bytes()
                .await
                .ok()
                .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
                .map_or(0, |body| rejected_spans(&body));
            return Outcome::Sent { rejected };
        }
        let error = format!("the endpoint answered {status}");
        if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
            let after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(RETRY_DELAY, |seconds| {
                    Duration::from_secs(seconds).min(MAX_RETRY_AFTER)
                });
            Outcome::Retry { error, after }
        } else {
            Outcome::Failed { error }
        }
    }

    fn failed(&mut self, count: u64, error: &str) {
        let total = self.counters.failed.fetch_add(count, Ordering::Relaxed) + count;
        if self.may_warn() {
            tracing::warn!(
                spans = count,
                failed_total = total,
                error,
                "OTLP span export failed; the spans are dropped"
            );
        }
    }

    fn warn_about_drops(&mut self) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        if dropped > self.warned_dropped && self.may_warn() {
            tracing::warn!(
                dropped_total = dropped,
                "OTLP span queue full; spans were dropped"
            );
            self.warned_dropped = dropped;
        }
    }

    fn may_warn(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARNING_INTERVAL);
        if due {
            self.last_warning = Some(now);
        }
        due
    }
}

/// `partialSuccess.rejectedSpans` of an `ExportTraceServiceResponse` (an int64: a string in
/// protobuf JSON, though numbers are accepted too).
fn rejected_spans(response: &Value) -> u64 {
    match &response["partialSuccess"]["rejectedSpans"] {
        Value::String(text) => text.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tracing_subscriber::layer::SubscriberExt;

    /// The attributes of an encoded span, `key -> value object`.
    fn attributes_of(span: &Value) -> BTreeMap<String, Value> {
        span["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((kv["key"].as_str()?.to_string(), kv["value"].clone())))
            .collect()
    }

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
    }

    #[test]
    fn ids_are_validated_and_lowercased() {
        assert_eq!(
            valid_id(Some("4BF92F3577B34DA6A3CE929D0E0E4736"), 32).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(valid_id(Some("00000000000000000000000000000000"), 32), None);
        assert_eq!(valid_id(Some("00f067aa0ba902b7"), 32), None);
        assert_eq!(valid_id(Some("00f067aa0ba902bz"), 16), None);
        assert_eq!(valid_id(None, 16), None);
        for _ in 0..100 {
            assert!(valid_id(Some(&new_span_id()), 16).is_some());
            assert!(valid_id(Some(&new_trace_id()), 32).is_some());
        }
    }

    /// A layer whose queue the test reads directly, without an exporter.
    fn capture(capacity: usize) -> (OtlpLayer, mpsc::Receiver<SpanRecord>, Arc<Counters>) {
        let (spans, receiver) = mpsc::channel(capacity);
        let counters = Arc::new(Counters::default());
        let layer = OtlpLayer {
            spans,
            counters: counters.clone(),
        };
        (layer, receiver, counters)
    }

    fn drain(receiver: &mut mpsc::Receiver<SpanRecord>) -> Vec<SpanRecord> {
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    #[test]
    fn fields_become_typed_attributes_and_otel_fields_do_not() {
        let (layer, mut receiver, _) = capture(16);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "work",
                otel.kind = "producer",
                otel.status_code = tracing::field::Empty,
                otel.status_message = tracing::field::Empty,
                text = "a",
                count = 3u32,
                negative = -4i64,
                huge = u64::MAX,
                ratio = 0.5f64,
                done = true,
                shown = %"display",
                debugged = ?vec![1, 2],
                later = tracing::field::Empty,
                never = tracing::field::Empty,
            );
            span.record("later", 7);
            span.record("text", "b");
            span.record("otel.status_code", "ok");
            span.record("otel.status_message", "fine");
        });
        let spans = drain(&mut receiver);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.name, "work");
        assert_eq!(span.kind, KIND_PRODUCER);
        assert_eq!(span.status_code, STATUS_OK);
        assert_eq!(span.status_message.as_deref(), Some("fine"));
        assert_eq!(
            span.attributes,
            vec![
                ("text", AttrValue::Str("b".into())),
                ("count", AttrValue::Int(3)),
                ("negative", AttrValue::Int(-4)),
                ("huge", AttrValue::Str(u64::MAX.to_string())),
                ("ratio", AttrValue::Double(0.5)),
                ("done", AttrValue::Bool(true)),
                ("shown", AttrValue::Str("display".into())),
                ("debugged", AttrValue::Str("[1, 2]".into())),
                ("later", AttrValue::Int(7)),
            ]
        );
        let encoded = encode_span(span, None);
        let attributes = attributes_of(&encoded);
        assert_eq!(attributes["count"], json!({ "intValue": "3" }));
        assert_eq!(attributes["done"], json!({ "boolValue": true }));
        assert_eq!(attributes["ratio"], json!({ "doubleValue": 0.5 }));
        assert_eq!(encoded["status"], json!({ "code": 1, "message": "fine" }));
        assert!(encoded.get("parentSpanId").is_none());
    }

    #[test]
    fn an_error_event_marks_its_span_and_not_the_parent() {
        let (layer, mut receiver, _) = capture(16);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("outer");
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner");
            let _inner = inner.enter();
            tracing::warn!("only a warning");
            tracing::error!(code = 7, "adapter failed");
            tracing::error!("a second error");
        });
        let spans = drain(&mut receiver);
        let inner = spans.iter().find(|s| s.name == "inner").unwrap();
        let outer = spans.iter().find(|s| s.name == "outer").unwrap();
        assert_eq!(inner.status_code, STATUS_ERROR);
        assert_eq!(inner.status_message.as_deref(), Some("adapter failed"));
        assert_eq!(outer.status_code, STATUS_UNSET);
        assert_eq!(encode_span(outer, None)["status"], json!({ "code": 0 }));
    }

    #[test]
    fn identity_rules() {
        let (layer, mut receiver, _) = capture(16);
        let subscriber = tracing_subscriber::registry().with(layer);
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let other = "0af7651916cd43dd8448eb211c80319c";
        tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("relay_batch", messages = 1);
            let _root = root.enter();
            let plain = tracing::info_span!("plain");
            drop(plain);
            // Own trace, no parent field, inside a span of another trace: a root.
            let foreign =
                tracing::info_span!("consume", trace_id = trace, span_id = "00f067aa0ba902b7");
            let _foreign = foreign.enter();
            // Own trace (the same), no parent field: hangs on the ancestor.
            let same = tracing::info_span!("same", trace_id = trace);
            drop(same);
            // Own trace, different, with a parent field: the field wins.
            let remote = tracing::info_span!(
                "remote",
                trace_id = other,
                span_id = "BADC0FFEE0DDF00D",
                parent_span_id = "b7ad6b7169203331",
            );
            drop(remote);
            // Invalid ids are ignored.
            let invalid =
                tracing::info_span!("invalid", trace_id = "nope", span_id = "0000000000000000");
            drop(invalid);
        });
        let spans = drain(&mut receiver);
        let by_name = |name: &str| spans.iter().find(|s| s.name == name).unwrap().clone();
        let root = by_name("relay_batch");
        assert!(valid_id(Some(&root.trace_id), 32).is_some());
        assert_eq!(root.parent_span_id, None);
        let plain = by_name("plain");
        assert_eq!(plain.trace_id, root.trace_id);
        assert_eq!(plain.parent_span_id.as_ref(), Some(&root.span_id));
        let foreign = by_name("consume");
        assert_eq!(foreign.trace_id, trace);
        assert_eq!(foreign.span_id, "00f067aa0ba902b7");
        assert_eq!(foreign.parent_span_id, None);
        assert_eq!(foreign.kind, KIND_CONSUMER);
        let same = by_name("same");
        assert_eq!(same.trace_id, trace);
        assert_eq!(same.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(same.span_id, "00f067aa0ba902b7");
        let remote = by_name("remote");
        assert_eq!(remote.trace_id, other);
        assert_eq!(remote.span_id, "badc0ffee0ddf00d");
        assert_eq!(remote.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
        let invalid = by_name("invalid");
        assert_eq!(invalid.trace_id, trace);
        assert_eq!(invalid.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(valid_id(Some(&invalid.span_id), 16).is_some());
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (layer, mut receiver, counters) = capture(4);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10 {
                drop(tracing::info_span!("work", i));
            }
        });
        assert_eq!(drain(&mut receiver).len(), 4);
        assert_eq!(counters.snapshot().dropped, 6);
    }

    #[test]
    fn spans_on_the_exporter_threads_are_ignored() {
        let (layer, mut receiver, _) = capture(4);
        let subscriber = tracing_subscriber::registry().with(layer);
        std::thread::spawn(move || {
            EXPORTER_THREAD.with(|flag| flag.set(true));
            tracing::subscriber::with_default(subscriber, || {
                drop(tracing::info_span!("hyper"));
            });
        })
        .join()
        .unwrap();
        assert!(drain(&mut receiver).is_empty());
    }

    #[test]
    fn secrets_are_masked_in_the_payload() {
        let span = SpanRecord {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent_span_id: None,
            name: "call osk_0123456789abcdefXYZ".into(),
            kind: KIND_INTERNAL,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![
                ("token", AttrValue::Str("plain".into())),
                ("header", AttrValue::Str("Bearer abcdefghijkl".into())),
                ("attempt", AttrValue::Int(1)),
            ],
            status_code: STATUS_ERROR,
            status_message: Some("key osk_0123456789abcdefXYZ refused".into()),
        };
        let encoded = encode_span(&span, Some(&Redactor::default()));
        assert_eq!(encoded["name"], "call ***");
        let attributes = attributes_of(&encoded);
        assert_eq!(attributes["token"], json!({ "stringValue": "***" }));
        assert_eq!(attributes["header"], json!({ "stringValue": "***" }));
        assert_eq!(attributes["attempt"], json!({ "intValue": "1" }));
        assert_eq!(encoded["status"]["message"], "key *** refused");
    }

    #[test]
    fn partial_success_counts_rejected_spans() {
        assert_eq!(rejected_spans(&json!({})), 0);
        assert_eq!(
            rejected_spans(&json!({ "partialSuccess": { "rejectedSpans": "3" } })),
            3
        );
        assert_eq!(
            rejected_spans(&json!({ "partialSuccess": { "rejectedSpans": 2 } })),
            2
        );
    }
}
