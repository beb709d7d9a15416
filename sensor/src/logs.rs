//! Log stores opscase reads and writes: Grafana Loki (`query_range`, `push`) and OpenObserve
//! (`_search`), over their HTTP APIs. Lines are masked by the service's redactor before they
//! are shown, and capped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::store::{Locator, LogSystem};

/// The longest line kept (bytes); longer ones are cut.
pub const MAX_LINE: usize = 8 * 1024;

/// Masks secrets in text (the service's redactor).
pub type Redact = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// `[sensor.loki]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LokiConfig {
    /// Loki's base URL (`http://loki:3100`): lines are read from `/loki/api/v1/query_range`.
    pub url: Option<String>,
    /// Where executor step output is pushed (`http://loki:3100/loki/api/v1/push`); unset: not
    /// pushed.
    pub push_url: Option<String>,
    /// Sent as `X-Scope-OrgID` (multi-tenant Loki).
    pub tenant: Option<String>,
    /// Seconds a request may take (default 10).
    pub timeout_s: Option<u64>,
}

/// `[sensor.openobserve]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenObserveConfig {
    /// OpenObserve's base URL (`http://openobserve:5080`).
    pub url: Option<String>,
    /// The organisation searched when a locator names none (default `default`).
    pub org: Option<String>,
    pub user: Option<String>,
    /// The user's password or API token (HTTP basic authentication).
    pub password: Option<String>,
    pub timeout_s: Option<u64>,
}

/// Lines fetched for a locator.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Lines {
    /// `loki` or `openobserve`.
    pub system: String,
    pub lines: Vec<Line>,
    /// The store had more than the limit asked for (or a line was cut).
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Line {
    pub at: DateTime<Utc>,
    pub text: String,
    /// Loki's stream labels, or OpenObserve's other fields.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("{0} is not configured")]
    NotConfigured(String),
    #[error("lines cannot be fetched from {0}")]
    Unsupported(String),
    #[error("the log store did not answer within {0}")]
    Timeout(String),
    #[error("the log store failed: {0}")]
    Failed(String),
}

/// The log stores configured, with one HTTP client.
#[derive(Clone)]
pub struct LogStores {
    http: reqwest::Client,
    loki: LokiConfig,
    openobserve: OpenObserveConfig,
    redact: Redact,
}

impl std::fmt::Debug for LogStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStores")
            .field("loki", &self.loki.url)
            .field("openobserve", &self.openobserve.url)
            .finish()
    }
}

impl Default for LogStores {
    fn default() -> Self {
        Self::new(
            LokiConfig::default(),
            OpenObserveConfig::default(),
            Arc::new(|text: &str| text.to_string()),
        )
    }
}

impl LogStores {
    pub fn new(loki: LokiConfig, openobserve: OpenObserveConfig, redact: Redact) -> Self {
        Self {
            http: reqwest::Client::new(),
            loki,
            openobserve,
            redact,
        }
    }

    pub fn loki(&self) -> &LokiConfig {
        &self.loki
    }

    /// Up to `limit` lines of the locator's query and range, oldest first.
    pub async fn fetch(&self, locator: &Locator, limit: usize) -> Result<Lines, LogError> {
        match locator.system() {
            Some(LogSystem::Loki) => self.loki_lines(locator, limit).await,
            Some(LogSystem::OpenObserve) => self.openobserve_lines(locator, limit).await,
            _ => Err(LogError::Unsupported(locator.system.clone())),
        }
    }

    async fn loki_lines(&self, locator: &Locator, limit: usize) -> Result<Lines, LogError> {
        let base = self
            .loki
            .url
            .as_deref()
            .ok_or_else(|| LogError::NotConfigured("sensor.loki.url".into()))?
            .trim_end_matches('/');
        let (from, to) = range(locator);
        let mut request = self
            .http
            .get(format!("{base}/loki/api/v1/query_range"))
            .query(&[
                ("query", locator.query.clone()),
                ("start", nanos(from).to_string()),
                ("end", nanos(to).to_string()),
                // One more than asked, to tell whether there were more.
                ("limit", (limit + 1).to_string()),
                ("direction", "forward".into()),
            ])
            .timeout(timeout(self.loki.timeout_s));
        if let Some(tenant) = &self.loki.tenant {
            request = request.header("X-Scope-OrgID", tenant);
        }
        for (name, value) in bus::trace::current_headers() {
            request = request.header(name, value);
        }
        let body = send(request, self.loki.timeout_s).await?;
        let mut lines = Vec::new();
        let result = body["data"]["result"]
            .as_array()
            .ok_or_else(|| LogError::Failed("the answer has no data.result".into()))?;
        for stream in result {
            let labels: BTreeMap<String, String> = stream["stream"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            for pair in stream["values"].as_array().into_iter().flatten() {
                let at = pair[0]
                    .as_str()
                    .and_then(|ns| ns.parse::<i64>().ok())
                    .map(|ns| Utc.timestamp_nanos(ns))
                    .ok_or_else(|| LogError::Failed("a value without a timestamp".into()))?;
                let text = pair[1].as_str().unwrap_or_default();
                lines.push((at, text.to_string(), labels.clone()));
            }
        }
        Ok(self.finish(LogSystem::Loki, lines, limit))
    }

    async fn openobserve_lines(&self, locator: &Locator, limit: usize) -> Result<Lines, LogError> {
        let config = &self.openobserve;
        let base = config
            .url
            .as_deref()
            .ok_or_else(|| LogError::NotConfigured("sensor.openobserve.url".into()))?
            .trim_end_matches('/');
        let org = locator
            .org
            .as_deref()
            .or(config.org.as_deref())
            .unwrap_or("default");
        let (from, to) = range(locator);
        let mut request = self
            .http
            .post(format!("{base}/api/{org}/_search"))
            .query(&[("type", "logs")])
            .json(&json!({"query": {
                "sql": locator.query,
                "start_time": from.timestamp_micros(),
                "end_time": to.timestamp_micros(),
                "from": 0,
                "size": limit + 1,
            }}))
            .timeout(timeout(config.timeout_s));
        if let Some(user) = &config.user {
            request = request.basic_auth(user, config.password.as_deref());
        }
        let body = send(request, config.timeout_s).await?;
        let hits = body["hits"]
            .as_array()
            .ok_or_else(|| LogError::Failed("the answer has no hits".into()))?;
        let mut lines = Vec::new();
        for hit in hits {
            let Some(fields) = hit.as_object() else {
                continue;
            };
            let at = fields
                .get("_timestamp")
                .and_then(Value::as_i64)
                .and_then(|us| Utc.timestamp_micros(us).single())
                .ok_or_else(|| LogError::Failed("a hit without _timestamp".into()))?;
            let text = ["log", "message", "msg", "body"]
                .iter()
                .find_map(|name| fields.get(*name).and_then(Value::as_str))
                .map(str::to_string)
                .unwrap_or_else(|| hit.to_string());
            let labels = fields
                .iter()
                .filter(|(k, _)| {
                    !["_timestamp", "log", "message", "msg", "body"].contains(&k.as_str())
                })
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect();
            lines.push((at, text, labels));
        }
        Ok(self.finish(LogSystem::OpenObserve, lines, limit))
    }

    /// Oldest first, at most `limit`, each line masked and cut.
    fn finish(
        &self,
        system: LogSystem,
        mut lines: Vec<(DateTime<Utc>, String, BTreeMap<String, String>)>,
        limit: usize,
    ) -> Lines {
        lines.sort_by_key(|(at, _, _)| *at);
        let mut truncated = lines.len() > limit;
        lines.truncate(limit);
        let lines = lines
            .into_iter()
            .map(|(at, text, labels)| {
                let mut text = (self.redact)(&text);
                if text.len() > MAX_LINE {
                    text = crate::route::clip(&text, MAX_LINE);
                    truncated = true;
                }
                let labels = labels
                    .into_iter()
                    .map(|(k, v)| (k, (self.redact)(&v)))
                    .collect();
                Line { at, text, labels }
            })
            .collect();
        Lines {
            system: system.as_str().into(),
            lines,
            truncated,
        }
    }

    /// Push lines to Loki as one stream with `labels`; the locator that finds them again.
    /// `None` when no `push_url` is configured.
    pub async fn push_to_loki(
        &self,
        labels: &BTreeMap<String, String>,
        lines: &[(DateTime<Utc>, String)],
    ) -> Option<Result<Locator, LogError>> {
        let url = self.loki.push_url.as_deref()?;
        if lines.is_empty() {
            return None;
        }
        let values: Vec<Value> = lines
            .iter()
            .map(|(at, text)| json!([nanos(*at).to_string(), (self.redact)(text)]))
            .collect();
        let mut request = self
            .http
            .post(url)
            .json(&json!({"streams": [{"stream": labels, "values": values}]}))
            .timeout(timeout(self.loki.timeout_s));
        if let Some(tenant) = &self.loki.tenant {
            request = request.header("X-Scope-OrgID", tenant);
        }
        let pushed = match request.send().await {
            Err(error) if error.is_timeout() => Err(LogError::Timeout(format!(
                "{}s",
                self.loki.timeout_s.unwrap_or(10)
            ))),
            Err(error) => Err(LogError::Failed(error.to_string())),
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(LogError::Failed(format!(
                "push answered {}",
                response.status()
            ))),
        };
        Some(pushed.map(|()| {
            let selector: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let first = lines
                .iter()
                .map(|(at, _)| *at)
                .min()
                .unwrap_or_else(Utc::now);
            let last = lines
                .iter()
                .map(|(at, _)| *at)
                .max()
                .unwrap_or_else(Utc::now);
            let mut locator = Locator::new(LogSystem::Loki, format!("{{{}}}", selector.join(", ")));
            // Whole microseconds, as databases keep times: from at or before the first line,
            // to past the last (Loki's end is exclusive).
            let micros = |at: DateTime<Utc>| {
                Utc.timestamp_micros(at.timestamp_micros())
                    .single()
                    .unwrap_or(at)
            };
            locator.from = Some(micros(first));
            locator.to = Some(micros(last) + chrono::Duration::microseconds(1));
            // The stream's labels, as the locator's attributes (flat strings, as evidence takes).
            locator.attributes = json!(labels);
            locator
        }))
    }
}

fn range(locator: &Locator) -> (DateTime<Utc>, DateTime<Utc>) {
    let to = locator.to.unwrap_or_else(Utc::now);
    let from = locator
        .from
        .unwrap_or_else(|| to - chrono::Duration::hours(1));
    (from, to)
}

fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn timeout(seconds: Option<u64>) -> Duration {
    Duration::from_secs(seconds.unwrap_or(10).max(1))
}

async fn send(
    mut request: reqwest::RequestBuilder,
    timeout_s: Option<u64>,
) -> Result<Value, LogError> {
    for (name, value) in bus::trace::current_headers() {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(|error| {
        if error.is_timeout() {
            LogError::Timeout(format!("{}s", timeout_s.unwrap_or(10)))
        } else {
            LogError::Failed(error.to_string())
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(LogError::Failed(format!(
            "answered {status}: {}",
            crate::route::clip(text.trim(), 512)
        )));
    }
    // Read at most 16 MiB: a thousand capped lines fit well inside it.
    let mut response = response;
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > 16 * 1024 * 1024 {
                    return Err(LogError::Failed("the answer is over 16 MiB".into()));
                }
            }
            Ok(None) => break,
            Err(error) if error.is_timeout() => {
                return Err(LogError::Timeout(format!("{}s", timeout_s.unwrap_or(10))))
            }
            Err(error) => return Err(LogError::Failed(error.to_string())),
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| LogError::Failed(format!("not JSON: {e}")))
}
