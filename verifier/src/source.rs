//! Where measurements come from: the `metric_1m` table or a Prometheus HTTP API.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Metric1mStore, Stat};
use crate::threshold::Threshold;

/// The name of the `metric_1m` source in a check.
pub const METRIC_1M: &str = "metric_1m";
/// The name of the Prometheus source in a check.
pub const PROMETHEUS: &str = "prometheus";

/// One check of a plan's `verify` section, its threshold parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The check's `name`, or `check-N` (1-based) when it has none.
    pub name: String,
    /// `metric_1m` or `prometheus`.
    pub source: String,
    pub query: String,
    pub threshold: Threshold,
}

/// One measurement of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The instant measured (the end of the window).
    pub at: DateTime<Utc>,
    /// The value seen; `null` when there was none (or it was not a finite number).
    pub value: Option<f64>,
    /// Whether the value met the threshold; `null` for an inconclusive measurement.
    pub passed: Option<bool>,
    /// What was read and how, or why there is no value.
    pub note: String,
}

impl Measurement {
    /// A value a source read (not yet compared with the threshold).
    pub fn value(at: DateTime<Utc>, value: f64, note: impl Into<String>) -> Self {
        Self {
            at,
            value: Some(value),
            passed: None,
            note: note.into(),
        }
    }

    /// No usable value, with the reason.
    pub fn inconclusive(at: DateTime<Utc>, note: impl Into<String>) -> Self {
        Self {
            at,
            value: None,
            passed: None,
            note: note.into(),
        }
    }

    /// Compare the value with `threshold`: a finite value passes or fails; a missing, NaN or
    /// infinite value makes the measurement inconclusive (its value is then `null`).
    pub fn judged(mut self, threshold: &Threshold) -> Self {
        let note = std::mem::take(&mut self.note);
        let join = |extra: String| {
            if note.is_empty() {
                extra
            } else {
                format!("{note}; {extra}")
            }
        };
        match self.value {
            Some(value) if value.is_finite() => {
                let passed = threshold.holds(value);
                self.passed = Some(passed);
                self.note = join(format!(
                    "{} = {value} {} {threshold}",
                    threshold.metric,
                    if passed { "meets" } else { "violates" }
                ));
            }
            Some(value) => {
                self.value = None;
                self.passed = None;
                self.note = join(format!(
                    "{} = {value} is not a finite number: inconclusive",
                    threshold.metric
                ));
            }
            None => {
                self.passed = None;
                self.note = note;
            }
        }
        self
    }
}

/// A source of measurements.
#[async_trait]
pub trait MetricSource: Send + Sync {
    /// Measure `check` for `tenant` over the `window` ending at `at`. Never fails: a problem
    /// is an inconclusive measurement with the reason in its note. The verifier compares the
    /// value with the threshold (see [`Measurement::judged`]).
    async fn measure(
        &self,
        tenant: &str,
        check: &Check,
        window: Duration,
        at: DateTime<Utc>,
    ) -> Measurement;
}

/// A parsed `metric_1m` query: `resource=<name>[,stat=avg|max|p95]` (`service` is accepted
/// for `resource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric1mQuery {
    pub resource: String,
    pub stat: Option<Stat>,
}

impl Metric1mQuery {
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut resource = None;
        let mut stat = None;
        for part in query.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "resource" | "service" => {
                    if resource.is_some() {
                        return Err("resource given twice".into());
                    }
                    if value.is_empty() {
                        return Err("resource is empty".into());
                    }
                    resource = Some(value.to_string());
                }
                "stat" => {
                    if stat.is_some() {
                        return Err("stat given twice".into());
                    }
                    stat = Some(value.parse::<Stat>()?);
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?}: expected resource=<name>[,stat=avg|max|p95]"
                    ))
                }
            }
        }
        let resource = resource.ok_or_else(|| {
            "no resource: expected resource=<name>[,stat=avg|max|p95]".to_string()
        })?;
        Ok(Self { resource, stat })
    }
}

/// Measurements from the `metric_1m` table.
///
/// The threshold's metric name is the `metric` looked up; the rows of the case's tenant and the
/// query's resource whose buckets start in `[at - window, at)` are read, in the column of the
/// query's `stat` (default [`Stat::default_for`] the metric), and combined by
/// [`Stat::aggregate`]: the maximum for `p95` and `max`, the mean for `avg`. No rows is
/// inconclusive.
///
/// The table is opscase's own: a failed read says nothing about the service, so it is tried
/// again with backoff for up to `retry_for` (default [`STORE_RETRY_FOR`]) before the
/// measurement is given up as inconclusive, with a note that says the store failed.
#[derive(Debug, Clone)]
pub struct Metric1mSource {
    store: Metric1mStore,
    retry_for: Duration,
}

/// How long a failing `metric_1m` read is retried by default: within the verifier's own
/// measurement timeout (60 s), so the note, not the timeout, explains a store that is down.
pub const STORE_RETRY_FOR: Duration = Duration::from_secs(45);

/// The first pause between two reads of a failing store, doubled each time up to the last.
const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

impl Metric1mSource {
    pub fn new(store: Metric1mStore) -> Self {
        Self {
            store,
            retry_for: STORE_RETRY_FOR,
        }
    }

    /// Retry a failing read for at most this long.
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// Read the rows, retrying store errors with backoff within `retry_for`; the error and the
    /// number of attempts when it never succeeded.
    async fn read(
        &self,
        tenant: &str,
        query: &Metric1mQuery,
        metric: &str,
        stat: Stat,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, f64)>, (String, u32)> {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut pause = STORE_RETRY_FIRST;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self
                .store
                .query(tenant, &query.resource, metric, stat, from, to)
                .await
            {
                Ok(rows) => return Ok(rows),
                Err(error) => {
                    let now = tokio::time::Instant::now();
                    if now + pause > deadline {
                        return Err((error.to_string(), attempts));
                    }
                    tracing::warn!(%error, attempts, retry_in_ms = pause.as_millis() as u64,
                        "reading metric_1m failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(STORE_RETRY_MAX);
                }
            }
        }
    }
}

#[async_trait]
impl MetricSource for Metric1mSource {
    async fn measure(
        &self,
        tenant: &str,
        check: &Check,
        window: Duration,
        at: DateTime<Utc>,
    ) -> Measurement {
        let query = match Metric1mQuery::parse(&check.query) {
            Ok(query) => query,
            Err(error) => {
                return Measurement::inconclusive(at, format!("invalid metric_1m query: {error}"))
            }
        };
        let metric = &check.threshold.metric;
        let stat = query.stat.unwrap_or_else(|| Stat::default_for(metric));
        let Ok(span) = TimeDelta::from_std(window) else {
            return Measurement::inconclusive(at, "window out of range");
        };
        let from = at - span;
        let what = format!(
            "{stat} of {metric} for resource {:?} of tenant {tenant:?} in [{}, {})",
            query.resource,
            from.to_rfc3339(),
            at.to_rfc3339()
        );
        match self.read(tenant, &query, metric, stat, from, at).await {
            Err((error, attempts)) => Measurement::inconclusive(
                at,
                format!(
                    "opscase's own database could not be read ({attempts} attempt(s) over up to \
                     {} s), so this says nothing about the service: reading {what} failed: \
                     {error}",
                    self.retry_for.as_secs()
                ),
            ),
            Ok(rows) if rows.is_empty() => {
                Measurement::inconclusive(at, format!("no data: no {what}"))
            }
            Ok(rows) => {
                let values: Vec<f64> = rows.iter().map(|(_, v)| *v).collect();
                let value = stat.aggregate(&values).unwrap_or(f64::NAN);
                Measurement::value(
                    at,
                    value,
                    format!(
                        "{} of {} minute(s) of {what}",
                        stat.aggregation(),
                        values.len()
                    ),
                )
            }
        }
    }
}

/// Most of a Prometheus answer read; a larger one is inconclusive.
pub const MAX_PROMETHEUS_RESPONSE: usize = 1024 * 1024;

/// Measurements from a Prometheus HTTP API (or anything that speaks it: Thanos, Mimir, ...).
///
/// The check's query is a PromQL expression sent as an instant query
/// (`GET {base_url}/api/v1/query?query=...&time=...`, `time` in Unix seconds with
/// milliseconds) at the measurement's instant; `$window` in it is replaced by the window in
/// seconds (e.g. `rate(errors_total[$window])` → `rate(errors_total[300s])`). The result must
/// be a scalar or a vector of exactly one sample; an empty vector, several series, another
/// result type, a non-finite value, an error status or an unreachable server is inconclusive.
#[derive(Debug, Clone)]
pub struct PrometheusSource {
    pub base_url: String,
    pub client: reqwest::Client,
    /// Per request.
    pub timeout: Duration,
}

impl PrometheusSource {
    /// With a default client and a 10 s timeout.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            client: reqwest::Client::new(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    fn endpoint(&self) -> String {
        format!("{}/api/v1/query", self.base_url.trim_end_matches('/'))
    }
}

/// `at` as Prometheus takes it: Unix seconds with three decimals.
pub fn prometheus_time(at: DateTime<Utc>) -> String {
    let millis = at.timestamp_millis();
    format!("{}.{:03}", millis.div_euclid(1000), millis.rem_euclid(1000))
}

/// Why a Prometheus answer gave no value.
struct NoValue(String);

impl fmt::Display for NoValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn sample_value(sample: &Value) -> Result<f64, NoValue> {
    // A sample is `[<unix time>, "<value>"]`.
    let text = sample
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(|| NoValue(format!("malformed sample {sample}")))?;
    text.parse::<f64>()
        .map_err(|_| NoValue(format!("sample value {text:?} is not a number")))
}

/// The single value of a Prometheus query answer (`status` `success`).
fn single_value(body: &Value) -> Result<f64, NoValue> {
    let data = body
        .get("data")
        .ok_or_else(|| NoValue("answer without data".into()))?;
    let kind = data.get("resultType").and_then(Value::as_str).unwrap_or("");
    let result = data.get("result").unwrap_or(&Value::Null);
    match kind {
        "scalar" => sample_value(result),
        "vector" => {
            let series = result
                .as_array()
                .ok_or_else(|| NoValue("vector result is not an array".into()))?;
            match series.as_slice() {
                [] => Err(NoValue("no data: the query returned an empty vector".into())),
                [one] => sample_value(one.get("value").unwrap_or(&Value::Null)),
                many => Err(NoValue(format!(
                    "the query returned {} series, expected exactly one (aggregate it, e.g. with sum or max): {}",
                    many.len(),
                    many.iter()
                        .take(3)
                        .map(|s| s.get("metric").map(Value::to_string).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
        other => Err(NoValue(format!(
            "result type {other:?} is not supported: expected a scalar or a one-sample vector"
        ))),
    }
}

fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(json) => {
            let kind = json.get("errorType").and_then(Value::as_str).unwrap_or("");
            let error = json.get("error").and_then(Value::as_str).unwrap_or("");
            match (kind.is_empty(), error.is_empty()) {
                (true, true) => json.to_string().chars().take(300).collect(),
                (true, false) => error.to_string(),
                (false, true) => kind.to_string(),
                (false, false) => format!("{kind}: {error}"),
            }
        }
        Err(_) => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

impl PrometheusSource {
    async fn fetch(&self, query: &str, at: DateTime<Utc>) -> Result<(f64, String), NoValue> {
        let time = prometheus_time(at);
        let mut response = self
            .client
            .get(self.endpoint())
            .query(&[("query", query), ("time", time.as_str())])
            .timeout(self.timeout)
            .headers(trace_headers())
            .send()
            .await
            .map_err(|e| NoValue(format!("prometheus unreachable: {e}")))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| NoValue(format!("reading the prometheus answer failed: {e}")))?
        {
            if body.len() + chunk.len() > MAX_PROMETHEUS_RESPONSE {
                return Err(NoValue(format!(
                    "the prometheus answer exceeds {MAX_PROMETHEUS_RESPONSE} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(NoValue(format!(
                "prometheus answered HTTP {}: {}",
                status.as_u16(),
                error_text(&body)
            )));
        }
        let json: Value = serde_json::from_slice(&body)
            .map_err(|e| NoValue(format!("the prometheus answer is not JSON: {e}")))?;
        if json.get("status").and_then(Value::as_str) != Some("success") {
            return Err(NoValue(format!(
                "prometheus answered status {}: {}",
                json.get("status").map(Value::to_string).unwrap_or_default(),
                error_text(&body)
            )));
        }
        let value = single_value(&json)?;
        Ok((
            value,
            format!("prometheus instant query {query:?} at {time}"),
        ))
    }
}

#[async_trait]
impl MetricSource for PrometheusSource {
    async fn measure(
        &self,
        _tenant: &str,
        check: &Check,
        window: Duration,
        at: DateTime<Utc>,
    ) -> Measurement {
        let query = check
            .query
            .replace("$window", &format!("{}s", window.as_secs()));
        match self.fetch(&query, at).await {
            Ok((value, note)) => Measurement::value(at, value, note),
            Err(NoValue(reason)) => Measurement::inconclusive(at, reason),
        }
    }
}

/// The current span's trace headers, so the query continues the verification's trace.
fn trace_headers() -> reqwest::header::HeaderMap {
    bus::trace::current_headers()
        .into_iter()
        .filter_map(|(name, value)| {
            Some((
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).ok()?,
                reqwest::header::HeaderValue::from_str(&value).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metric_1m_queries_parse() {
        assert_eq!(
            Metric1mQuery::parse("resource=checkout").unwrap(),
            Metric1mQuery {
                resource: "checkout".into(),
                stat: None
            }
        );
        assert_eq!(
            Metric1mQuery::parse(" service = checkout , stat = max ").unwrap(),
            Metric1mQuery {
                resource: "checkout".into(),
                stat: Some(Stat::Max)
            }
        );
        assert!(Metric1mQuery::parse("stat=p95")
            .unwrap_err()
            .contains("no resource"));
        assert!(Metric1mQuery::parse("resource=").is_err());
        assert!(Metric1mQuery::parse("resource=a,resource=b").is_err());
        assert!(Metric1mQuery::parse("resource=a,stat=p99")
            .unwrap_err()
            .contains("p99"));
        assert!(Metric1mQuery::parse("resource=a,host=b")
            .unwrap_err()
            .contains("host"));
        assert!(Metric1mQuery::parse("checkout").is_err());
    }

    #[test]
    fn prometheus_answers_give_one_value_or_a_reason() {
        let vector = |result: Value| json!({"status": "success", "data": {"resultType": "vector", "result": result}});
        assert_eq!(
            single_value(&vector(json!([{"metric": {}, "value": [1.0, "0.25"]}]))).ok(),
            Some(0.25)
        );
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "7"]}});
        assert_eq!(single_value(&scalar).ok(), Some(7.0));
        assert!(single_value(&vector(json!([])))
            .err()
            .unwrap()
            .0
            .contains("empty vector"));
        let two = vector(json!([
            {"metric": {"pod": "a"}, "value": [1.0, "1"]},
            {"metric": {"pod": "b"}, "value": [1.0, "2"]}
        ]));
        assert!(single_value(&two).err().unwrap().0.contains("2 series"));
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(single_value(&matrix).err().unwrap().0.contains("matrix"));
        let nan = single_value(&vector(json!([{"metric": {}, "value": [1.0, "NaN"]}]))).ok();
        assert!(nan.unwrap().is_nan());
        let inf = single_value(&vector(json!([{"metric": {}, "value": [1.0, "+Inf"]}]))).ok();
        assert_eq!(inf, Some(f64::INFINITY));
    }

    #[test]
    fn prometheus_time_is_unix_seconds_with_millis() {
        let at = DateTime::parse_from_rfc3339("2026-11-21T12:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(prometheus_time(at), format!("{}.250", at.timestamp()));
    }

    #[test]
    fn judging_compares_finite_values_only() {
        let at = Utc::now();
        let threshold = Threshold::parse("p95_ms < 300").unwrap();
        let pass = Measurement::value(at, 250.0, "read").judged(&threshold);
        assert_eq!(pass.passed, Some(true));
        assert!(
            pass.note.starts_with("read; p95_ms = 250 meets"),
            "{}",
            pass.note
        );
        let fail = Measurement::value(at, 300.0, "").judged(&threshold);
        assert_eq!(fail.passed, Some(false));
        let nan = Measurement::value(at, f64::NAN, "read").judged(&threshold);
        assert_eq!((nan.value, nan.passed), (None, None));
        assert!(nan.note.contains("NaN"), "{}", nan.note);
        let none = Measurement::inconclusive(at, "no data").judged(&threshold);
        assert_eq!(
            (none.value, none.passed, none.note.as_str()),
            (None, None, "no data")
        );
    }
}
