//! Configuration: defaults < file (`opscase.toml`) < environment (`OPSCASE_*`) < flags.
//! Every error names the key or variable that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub idempotency: IdempotencyConfig,
    pub auth: AuthConfig,
    pub bus: BusConfig,
    pub metrics: MetricsConfig,
    pub redaction: RedactionConfig,
    pub log: LogConfig,
    pub workers: WorkersConfig,
    pub planner: PlannerConfig,
    pub gatekeeper: GatekeeperConfig,
    pub executor: ExecutorConfig,
    pub verifier: VerifierConfig,
    pub watchdog: WatchdogConfig,
    pub sensor: SensorConfig,
    pub analyst: AnalystSection,
    pub llm: LlmConfig,
    pub librarian: LibrarianConfig,
}

/// `[librarian]`: the knowledge base.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibrarianConfig {
    /// `[librarian.embeddings]`: an OpenAI-compatible embeddings endpoint. Absent: search is
    /// lexical only.
    pub embeddings: Option<EmbeddingsConfig>,
}

/// `[librarian.embeddings]` (or the `OPSCASE_LIBRARIAN_EMBEDDINGS_*` variables). The API key
/// comes only from `OPSCASE_LIBRARIAN_EMBEDDINGS_API_KEY`, never from the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// The API root, usually ending in `/v1`: `POST {base_url}/embeddings` is called.
    pub base_url: String,
    pub model: String,
    /// The length of the model's vectors (768 for nomic-embed-text).
    pub dimensions: usize,
    /// Texts per request when chunks are embedded in the background (default 32).
    #[serde(default = "default_embedding_batch_size")]
    pub batch_size: usize,
    /// Seconds to wait for one answer; a search waits this long for its query's vector before
    /// answering from lexical search alone (default 5).
    #[serde(default = "default_embedding_timeout_s")]
    pub timeout_s: f64,
    /// Send `dimensions` with each request (default true). vLLM refuses it for models without
    /// Matryoshka support: set false there.
    #[serde(default = "default_true")]
    pub send_dimensions: bool,
    #[serde(skip)]
    pub api_key: Option<Secret>,
}

fn default_embedding_batch_size() -> usize {
    32
}

fn default_embedding_timeout_s() -> f64 {
    5.0
}

fn default_true() -> bool {
    true
}

impl LibrarianConfig {
    /// The embeddings client's settings, when configured.
    pub fn embedding_settings(&self) -> Option<librarian::EmbeddingSettings> {
        self.embeddings
            .as_ref()
            .map(|e| librarian::EmbeddingSettings {
                base_url: e.base_url.trim_end_matches('/').to_string(),
                model: e.model.clone(),
                dimensions: e.dimensions,
                send_dimensions: e.send_dimensions,
                batch_size: e.batch_size,
                timeout: std::time::Duration::from_secs_f64(e.timeout_s),
                api_key: e.api_key.as_ref().map(|k| k.expose().to_string()),
            })
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let given = |name: &str| env(name).filter(|v| !v.is_empty());
        if self.embeddings.is_none() {
            let base_url = given(EMBEDDINGS_BASE_URL);
            let model = given(EMBEDDINGS_MODEL);
            let dimensions = given(EMBEDDINGS_DIMENSIONS);
            if base_url.is_none() && model.is_none() && dimensions.is_none() {
                return Ok(());
            }
            let (Some(base_url), Some(model), Some(_)) = (base_url, model, dimensions) else {
                return Err(ConfigError(format!(
                    "{EMBEDDINGS_BASE_URL}, {EMBEDDINGS_MODEL} and {EMBEDDINGS_DIMENSIONS} turn \
                     embeddings on together (or write [librarian.embeddings] in the file)"
                )));
            };
            self.embeddings = Some(EmbeddingsConfig {
                base_url,
                model,
                dimensions: 0,
                batch_size: default_embedding_batch_size(),
                timeout_s: default_embedding_timeout_s(),
                send_dimensions: true,
                api_key: None,
            });
        }
        let Some(embeddings) = &mut self.embeddings else {
            return Ok(());
        };
        if let Some(url) = given(EMBEDDINGS_BASE_URL) {
            embeddings.base_url = url;
        }
        if let Some(model) = given(EMBEDDINGS_MODEL) {
            embeddings.model = model;
        }
        set(&mut embeddings.dimensions, EMBEDDINGS_DIMENSIONS, env)?;
        set(
            &mut embeddings.batch_size,
            "OPSCASE_LIBRARIAN_EMBEDDINGS_BATCH_SIZE",
            env,
        )?;
        set(
            &mut embeddings.timeout_s,
            "OPSCASE_LIBRARIAN_EMBEDDINGS_TIMEOUT_S",
            env,
        )?;
        set(
            &mut embeddings.send_dimensions,
            "OPSCASE_LIBRARIAN_EMBEDDINGS_SEND_DIMENSIONS",
            env,
        )?;
        if let Some(key) = given(EMBEDDINGS_API_KEY) {
            embeddings.api_key = Some(Secret(key));
        }
        Ok(())
    }

    fn validate(&self, request_timeout_s: f64) -> Result<(), ConfigError> {
        let Some(e) = &self.embeddings else {
            return Ok(());
        };
        if !(e.base_url.starts_with("http://") || e.base_url.starts_with("https://")) {
            return Err(ConfigError(format!(
                "librarian.embeddings.base_url ({EMBEDDINGS_BASE_URL}) must be an http:// or \
                 https:// URL, such as http://127.0.0.1:11434/v1"
            )));
        }
        if e.model.trim().is_empty() {
            return Err(ConfigError(format!(
                "librarian.embeddings.model ({EMBEDDINGS_MODEL}) must not be empty"
            )));
        }
        if !(1..=16_000).contains(&e.dimensions) {
            return Err(ConfigError(format!(
                "librarian.embeddings.dimensions ({EMBEDDINGS_DIMENSIONS}) must be 1 to 16000"
            )));
        }
        if !(1..=2048).contains(&e.batch_size) {
            return Err(ConfigError(
                "librarian.embeddings.batch_size (OPSCASE_LIBRARIAN_EMBEDDINGS_BATCH_SIZE) must \
                 be 1 to 2048"
                    .into(),
            ));
        }
        if !(e.timeout_s > 0.0 && e.timeout_s < request_timeout_s) {
            return Err(ConfigError(
                "librarian.embeddings.timeout_s (OPSCASE_LIBRARIAN_EMBEDDINGS_TIMEOUT_S) must be \
                 a positive number of seconds shorter than server.request_timeout_s \
                 (OPSCASE_REQUEST_TIMEOUT_S)"
                    .into(),
            ));
        }
        Ok(())
    }
}

const EMBEDDINGS_BASE_URL: &str = "OPSCASE_LIBRARIAN_EMBEDDINGS_BASE_URL";
const EMBEDDINGS_MODEL: &str = "OPSCASE_LIBRARIAN_EMBEDDINGS_MODEL";
const EMBEDDINGS_DIMENSIONS: &str = "OPSCASE_LIBRARIAN_EMBEDDINGS_DIMENSIONS";
const EMBEDDINGS_API_KEY: &str = "OPSCASE_LIBRARIAN_EMBEDDINGS_API_KEY";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// `opscase serve` runs the worker roles (analyst, planner, gatekeeper, executor, verifier)
    /// in-process
    /// (`--no-workers` turns this off when `opscase worker` processes do the work).
    pub in_process: bool,
    /// How long a command endpoint waits for the worker's answer (and the most a client's
    /// `Prefer: wait=N` may ask for).
    pub command_wait_s: u64,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            in_process: true,
            command_wait_s: 20,
        }
    }
}

/// The analyst's live path: rules over `metric_1m` (`[[analyst.rules]]`) and when it runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalystSection {
    pub rules: Vec<analyst::Rule>,
    /// Only a bucket this many seconds old or younger can open or join a case.
    pub max_age_s: u64,
    /// Seconds between sweeps for late or missing data.
    pub sweep_interval_s: u64,
    /// Days of history read when a rule first sees a series.
    pub warmup_days: u64,
    /// How a case in ANALYZING is examined (`cmd.analysis.run`).
    pub analysis: AnalysisConfig,
}

/// `[analyst.analysis]`: what the analysis of a case looks at.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Minutes before now examined (default 30).
    pub window_min: u64,
    /// Hours of history before the window a metric or dependency is compared with (default 24).
    pub baseline_h: u64,
    /// Minutes back deploy and config changes are looked for (default 120).
    pub change_lookback_min: u64,
    /// Buckets of history a metric needs before it is judged (default 60).
    pub min_history: usize,
    /// Robust z-score a bucket must pass to deviate (default 4).
    pub threshold: f64,
    /// Relative distance from the baseline a deviating bucket also needs (default 0.2).
    pub min_change: f64,
    /// Deviating buckets in one direction that make a finding (default 3).
    pub min_buckets: usize,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        let d = analyst::analysis::AnalysisSettings::default();
        Self {
            window_min: d.window.as_secs() / 60,
            baseline_h: d.baseline.as_secs() / 3600,
            change_lookback_min: d.change_lookback.as_secs() / 60,
            min_history: d.min_history,
            threshold: d.threshold,
            min_change: d.min_change,
            min_buckets: d.min_buckets,
        }
    }
}

impl AnalysisConfig {
    pub fn settings(&self) -> analyst::analysis::AnalysisSettings {
        use std::time::Duration;
        analyst::analysis::AnalysisSettings {
            window: Duration::from_secs(self.window_min * 60),
            baseline: Duration::from_secs(self.baseline_h * 3600),
            change_lookback: Duration::from_secs(self.change_lookback_min * 60),
            min_history: self.min_history,
            threshold: self.threshold,
            min_change: self.min_change,
            min_buckets: self.min_buckets,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let whole = [
            ("window_min", self.window_min as f64),
            ("baseline_h", self.baseline_h as f64),
            ("change_lookback_min", self.change_lookback_min as f64),
            ("min_buckets", self.min_buckets as f64),
            ("threshold", self.threshold),
        ];
        for (name, value) in whole {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError(format!(
                    "analyst.analysis.{name} must be greater than 0"
                )));
            }
        }
        if self.window_min > u64::from(analyst::worker::MAX_WINDOW_MINUTES) {
            return Err(ConfigError(format!(
                "analyst.analysis.window_min must be at most {}",
                analyst::worker::MAX_WINDOW_MINUTES
            )));
        }
        if !(self.min_change.is_finite() && self.min_change >= 0.0) {
            return Err(ConfigError(
                "analyst.analysis.min_change must be 0 or more".into(),
            ));
        }
        Ok(())
    }
}

impl Default for AnalystSection {
    fn default() -> Self {
        let live = analyst::live::LiveSettings::default();
        Self {
            rules: Vec::new(),
            max_age_s: live.max_age.as_secs(),
            sweep_interval_s: live.sweep_interval.as_secs(),
            warmup_days: live.warmup.as_secs() / 86_400,
            analysis: AnalysisConfig::default(),
        }
    }
}

impl AnalystSection {
    pub fn live_settings(&self) -> analyst::live::LiveSettings {
        analyst::live::LiveSettings {
            max_age: std::time::Duration::from_secs(self.max_age_s),
            sweep_interval: std::time::Duration::from_secs(self.sweep_interval_s),
            warmup: std::time::Duration::from_secs(self.warmup_days * 86_400),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        analyst::AnalystConfig {
            rules: self.rules.clone(),
        }
        .validate("analyst")
        .map_err(|error| ConfigError(error.to_string()))?;
        if self.max_age_s == 0 || self.sweep_interval_s == 0 || self.warmup_days == 0 {
            return Err(ConfigError(
                "analyst.max_age_s, analyst.sweep_interval_s and analyst.warmup_days must be at \
                 least 1"
                    .into(),
            ));
        }
        self.analysis.validate()
    }
}

/// The sensor: signal intake, routes, evidence links and log stores.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// Alerts one payload may hold; a larger one is refused (400) whole.
    pub max_alerts_per_payload: usize,
    /// `[[sensor.routes]]`, first match wins; the built-in default route after them.
    pub routes: Vec<sensor::RouteConfig>,
    /// `[sensor.links]`: Grafana, Prometheus and OpenObserve base URLs for evidence links.
    pub links: sensor::LinkSettings,
    /// `[sensor.loki]`: where evidence lines are read and step output is pushed.
    pub loki: sensor::logs::LokiConfig,
    /// `[sensor.openobserve]`.
    pub openobserve: OpenObserveSettings,
}

impl Default for SensorConfig {
    fn default() -> Self {
        Self {
            max_alerts_per_payload: sensor::Limits::default().max_alerts,
            routes: Vec::new(),
            links: sensor::LinkSettings::default(),
            loki: sensor::logs::LokiConfig::default(),
            openobserve: OpenObserveSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenObserveSettings {
    pub url: Option<String>,
    pub org: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub timeout_s: Option<u64>,
}

impl SensorConfig {
    /// The settings the sensor runs with (the routes were checked when the file loaded).
    pub fn settings(&self) -> sensor::SensorSettings {
        sensor::SensorSettings {
            routes: sensor::Routes::new(&self.routes).expect("routes were checked at load"),
            limits: sensor::Limits {
                max_alerts: self.max_alerts_per_payload,
                ..sensor::Limits::default()
            },
            links: self.links.clone(),
        }
    }

    pub fn openobserve(&self) -> sensor::logs::OpenObserveConfig {
        let o2 = &self.openobserve;
        sensor::logs::OpenObserveConfig {
            url: o2.url.clone(),
            org: o2.org.clone(),
            user: o2.user.clone(),
            password: o2.password.as_ref().map(|p| p.expose().to_string()),
            timeout_s: o2.timeout_s,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        sensor::Routes::new(&self.routes).map_err(ConfigError)?;
        if !(1..=10_000).contains(&self.max_alerts_per_payload) {
            return Err(ConfigError(
                "sensor.max_alerts_per_payload must be 1 to 10000".into(),
            ));
        }
        let urls = [
            ("sensor.links.grafana_url", &self.links.grafana_url),
            ("sensor.links.prometheus_url", &self.links.prometheus_url),
            ("sensor.links.openobserve_url", &self.links.openobserve_url),
            ("sensor.loki.url (OPSCASE_LOKI_URL)", &self.loki.url),
            (
                "sensor.loki.push_url (OPSCASE_LOKI_PUSH_URL)",
                &self.loki.push_url,
            ),
            (
                "sensor.openobserve.url (OPSCASE_OPENOBSERVE_URL)",
                &self.openobserve.url,
            ),
        ];
        for (key, url) in urls {
            if let Some(url) = url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError(format!(
                        "{key} must be an http:// or https:// URL"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The watchdog: cases stalled on a worker are noted, their command delivered again, and, a
/// bound later, parked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    pub enabled: bool,
    /// Seconds a case may go without progress in PLANNING, WAIT_GATE (gate command pending),
    /// EXECUTING or VERIFYING, plus what its plan may take there (step timeouts and retries,
    /// verification intervals).
    pub stall_after_s: u64,
    /// Seconds between the watchdog's looks.
    pub interval_s: u64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stall_after_s: 600,
            interval_s: 30,
        }
    }
}

impl WatchdogConfig {
    pub fn settings(&self) -> orchestrator::watchdog::WatchdogSettings {
        orchestrator::watchdog::WatchdogSettings {
            stall_after: std::time::Duration::from_secs(self.stall_after_s),
            interval: std::time::Duration::from_secs(self.interval_s),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlannerConfig {
    /// Template inputs used when neither the request nor the case's labels give them, by
    /// template: `[planner.defaults."k8s.rollout.canary"] deployment = "checkout"`.
    pub defaults: std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

/// `[llm]`: the OpenAI-compatible model behind the planner's `llm` template. Off unless
/// `base_url` and `model` are set. The API key comes from `OPSCASE_LLM_API_KEY` only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// The base URL that ends in `/v1` (`https://api.openai.com/v1`,
    /// `http://127.0.0.1:11434/v1` for Ollama, `http://127.0.0.1:8000/v1` for vLLM).
    pub base_url: Option<String>,
    pub model: Option<String>,
    #[serde(skip)]
    pub api_key: Option<Secret>,
    pub timeout_s: f64,
    pub max_tokens: u32,
    pub temperature: f32,
    pub concurrency: usize,
    pub case_budget: u32,
    pub retries: u32,
    pub backoff_ms: u64,
    pub max_retry_after_s: f64,
    pub breaker_failures: u32,
    pub breaker_cooldown_s: f64,
    /// `strict: true` structured outputs (OpenAI); vLLM, Ollama and llama.cpp take the schema
    /// as it is (`false`).
    pub strict: bool,
    /// Patterns masked in prompts, on top of the built-in ones and `redaction.patterns`.
    pub redact: Vec<String>,
    pub audit_cap: usize,
    pub plan_attempts: u32,
    /// The template that plans when the model is unreachable.
    pub fallback_template: Option<String>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        let d = llm::LlmSettings::new("", "");
        Self {
            base_url: None,
            model: None,
            api_key: None,
            timeout_s: d.timeout.as_secs_f64(),
            max_tokens: d.max_tokens,
            temperature: d.temperature,
            concurrency: d.concurrency,
            case_budget: d.case_budget,
            retries: d.retries,
            backoff_ms: d.backoff.as_millis() as u64,
            max_retry_after_s: d.max_retry_after.as_secs_f64(),
            breaker_failures: d.breaker_failures,
            breaker_cooldown_s: d.breaker_cooldown.as_secs_f64(),
            strict: d.strict,
            redact: Vec::new(),
            audit_cap: d.audit_cap,
            plan_attempts: d.plan_attempts,
            fallback_template: None,
        }
    }
}

impl LlmConfig {
    /// The client's settings, when a model is configured (`redaction` adds its patterns).
    pub fn settings(&self, redaction: &[String]) -> Option<llm::LlmSettings> {
        let (Some(base_url), Some(model)) = (&self.base_url, &self.model) else {
            return None;
        };
        let mut settings = llm::LlmSettings::new(base_url.clone(), model.clone());
        settings.api_key = self.api_key.as_ref().map(|k| k.expose().to_string());
        settings.timeout = std::time::Duration::from_secs_f64(self.timeout_s);
        settings.max_tokens = self.max_tokens;
        settings.temperature = self.temperature;
        settings.concurrency = self.concurrency;
        settings.case_budget = self.case_budget;
        settings.retries = self.retries;
        settings.backoff = std::time::Duration::from_millis(self.backoff_ms);
        settings.max_retry_after = std::time::Duration::from_secs_f64(self.max_retry_after_s);
        settings.breaker_failures = self.breaker_failures;
        settings.breaker_cooldown = std::time::Duration::from_secs_f64(self.breaker_cooldown_s);
        settings.strict = self.strict;
        settings.redact = redaction.iter().chain(&self.redact).cloned().collect();
        settings.audit_cap = self.audit_cap;
        settings.plan_attempts = self.plan_attempts;
        settings.fallback_template = self.fallback_template.clone();
        Some(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.base_url.is_some() != self.model.is_some() {
            return Err(ConfigError(
                "llm.base_url (OPSCASE_LLM_BASE_URL) and llm.model (OPSCASE_LLM_MODEL) go \
                 together: set both to use a model, or neither"
                    .into(),
            ));
        }
        if let Some(url) = &self.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError(format!(
                    "llm.base_url (OPSCASE_LLM_BASE_URL): {url:?} is not an http(s) URL like \
                     http://127.0.0.1:11434/v1"
                )));
            }
        }
        for (seconds, setting) in [
            (self.timeout_s, "llm.timeout_s"),
            (self.max_retry_after_s, "llm.max_retry_after_s"),
            (self.breaker_cooldown_s, "llm.breaker_cooldown_s"),
        ] {
            if !(seconds > 0.0 && seconds.is_finite()) {
                return Err(ConfigError(format!(
                    "{setting} must be a positive number of seconds"
                )));
            }
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(ConfigError(
                "llm.temperature must be between 0 and 2".into(),
            ));
        }
        for (value, setting) in [
            (self.max_tokens as usize, "llm.max_tokens"),
            (self.concurrency, "llm.concurrency"),
            (self.case_budget as usize, "llm.case_budget"),
            (self.plan_attempts as usize, "llm.plan_attempts"),
            (self.breaker_failures as usize, "llm.breaker_failures"),
            (self.audit_cap, "llm.audit_cap"),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{setting} must be at least 1")));
            }
        }
        if let Err(error) = llm::redact::LlmRedactor::new(&self.redact) {
            return Err(ConfigError(format!("llm.redact: {error}")));
        }
        if let Some(fallback) = &self.fallback_template {
            let known: Vec<&str> = planner::templates()
                .iter()
                .map(|t| t.name)
                .filter(|name| *name != planner::LLM_TEMPLATE)
                .collect();
            if !known.contains(&fallback.as_str()) {
                return Err(ConfigError(format!(
                    "llm.fallback_template: {fallback:?} is not one of {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatekeeperConfig {
    /// The policy file (TOML or YAML), reloaded when it changes; the built-in policy when unset.
    pub policy_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// The only directory `script.exec` runs executables from; unset refuses every script.
    pub script_dir: Option<PathBuf>,
    /// Captured output kept per attempt (the rest is counted and dropped).
    pub output_cap_bytes: usize,
    /// The first retry waits this long; each further one twice as long.
    pub retry_backoff_ms: u64,
    /// `http.call` / `gateway.flip` targets: name → `{ base_url, headers }` (`default` is used
    /// when a step names none).
    pub http_targets: std::collections::BTreeMap<String, executor::adapters::http::HttpTarget>,
    pub k8s: K8sConfig,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            script_dir: None,
            output_cap_bytes: 64 * 1024,
            retry_backoff_ms: 1000,
            http_targets: Default::default(),
            k8s: K8sConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct K8sConfig {
    /// The API server, e.g. `https://10.0.0.1:6443`; unset refuses `k8s.rollout` steps.
    pub api_url: Option<String>,
    /// A bearer token (a service account's).
    pub token: Option<Secret>,
    /// PEM file of the CA that signed the API server's certificate.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_tls_verify: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// A Prometheus server for `source = "prometheus"` checks, e.g. `http://prometheus:9090`.
    pub prometheus_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    /// Request-body bytes that bodies over 64 KiB may hold at once while they are read and
    /// parsed; more such bodies wait. Taken as `body_limit_bytes` when smaller, so that a body at
    /// the limit can always be read.
    pub body_buffer_bytes: usize,
    pub request_timeout_s: f64,
    /// A request's body must have arrived this long after its head, else 408 and its slot
    /// (`max_in_flight`) is freed; shorter than `request_timeout_s`.
    pub body_read_timeout_s: f64,
    pub require_precondition: bool,
    pub max_in_flight: usize,
    /// Browser origins allowed to call the API; empty means CORS stays off.
    pub cors_allowed_origins: Vec<String>,
    /// A tracing UI's page for one trace, `{trace_id}` where the id goes (Jaeger:
    /// `http://jaeger:16686/trace/{trace_id}`); the console links timeline rows to it.
    pub trace_url: Option<String>,
    /// PEM certificate chain (leaf first); with `tls_key` the API is served over HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://...` for PostgreSQL; unset means SQLite in `data_dir`.
    pub url: Option<String>,
    pub data_dir: PathBuf,
    pub pool_size: u32,
    /// How long a request waits for a database connection (reconnecting included) before it
    /// is answered 503 store-unavailable; shorter than `server.request_timeout_s`.
    pub pool_timeout_s: f64,
    /// SQLite only: `full` (every commit flushed) or `normal` (flushed at checkpoints).
    pub sqlite_synchronous: orchestrator::SqliteDurability,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    pub ttl_hours: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Regular expressions masked in logs and timeline meta, beside the built-in ones (API
    /// keys, bearer tokens, secret-named fields).
    pub patterns: Vec<String>,
}

impl Config {
    /// The configured patterns, and the bootstrap key itself, masked in logs and the timeline.
    pub fn redactor(&self) -> orchestrator::redact::Redactor {
        let bootstrap: Vec<&str> = self
            .auth
            .bootstrap_admin_key
            .iter()
            .map(Secret::expose)
            .collect();
        orchestrator::redact::Redactor::with_literals(&self.redaction.patterns, &bootstrap)
            .expect("patterns were checked when the configuration loaded")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `/metrics` needs a key with the `metrics` or `admin` role; `false` opens it.
    pub auth: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { auth: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `nats://host:4222` publishes the outbox to NATS JetStream; unset keeps it in the database.
    pub nats_url: Option<String>,
    /// Messages with the same id within this window are stored once by JetStream.
    pub duplicate_window_s: u64,
    pub relay_batch_size: u32,
    pub relay_poll_interval_ms: u64,
    /// Published outbox rows are deleted after this long.
    pub outbox_retention_hours: u64,
    /// Run the relay (or, without NATS, the embedded bus) in `opscase serve`; turn off when
    /// dedicated `opscase relay` processes publish instead.
    pub relay_in_process: bool,
    /// Deliveries of a failing message before it is dead-lettered.
    pub max_deliver: i64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            duplicate_window_s: 120,
            relay_batch_size: 500,
            relay_poll_interval_ms: 1000,
            outbox_retention_hours: 24,
            relay_in_process: true,
            max_deliver: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The first admin key, for automation; when unset a first start generates and prints one.
    pub bootstrap_admin_key: Option<Secret>,
    /// Per-key token bucket (0 = unlimited).
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: f64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            bootstrap_admin_key: None,
            rate_limit_per_second: 200.0,
            rate_limit_burst: 400.0,
        }
    }
}

/// A value that must never reach a log: `Debug` shows `***`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(format!("{other:?} is not one of json, text")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            body_buffer_bytes: 8 * 1024 * 1024,
            request_timeout_s: 30.0,
            body_read_timeout_s: 10.0,
            require_precondition: false,
            max_in_flight: 1024,
            cors_allowed_origins: Vec::new(),
            trace_url: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            data_dir: PathBuf::from("./data"),
            pool_size: 16,
            pool_timeout_s: orchestrator::PoolSettings::DEFAULT_ACQUIRE_TIMEOUT.as_secs_f64(),
            sqlite_synchronous: orchestrator::SqliteDurability::Full,
        }
    }
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self { ttl_hours: 24 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `serve --no-workers`.
    pub no_workers: bool,
}

impl BusConfig {
    pub fn relay_settings(&self) -> orchestrator::RelaySettings {
        orchestrator::RelaySettings {
            batch_size: self.relay_batch_size,
            poll_interval: std::time::Duration::from_millis(self.relay_poll_interval_ms),
            retention: std::time::Duration::from_secs(self.outbox_retention_hours * 3600),
            ..orchestrator::RelaySettings::default()
        }
    }

    pub fn jetstream_settings(&self) -> bus::JetStreamSettings {
        bus::JetStreamSettings {
            duplicate_window: std::time::Duration::from_secs(self.duplicate_window_s),
            ..bus::JetStreamSettings::default()
        }
    }
}

impl Config {
    /// Load from `file` (when given it must exist; otherwise `./opscase.toml` if present), then
    /// the environment, then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None if Path::new("opscase.toml").exists() => {
                Self::from_file(Path::new("opscase.toml"))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        if let Some(listen) = overrides.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.database.data_dir = dir.clone();
        }
        if let Some(format) = overrides.log_format {
            config.log.format = format;
        }
        if let Some(path) = &overrides.tls_cert {
            config.server.tls_cert = Some(path.clone());
        }
        if let Some(path) = &overrides.tls_key {
            config.server.tls_key = Some(path.clone());
        }
        if overrides.no_workers {
            config.workers.in_process = false;
        }
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        set(&mut self.server.listen, "OPSCASE_LISTEN", &env)?;
        set(
            &mut self.server.body_limit_bytes,
            "OPSCASE_BODY_LIMIT_BYTES",
            &env,
        )?;
        set(
            &mut self.server.body_buffer_bytes,
            "OPSCASE_BODY_BUFFER_BYTES",
            &env,
        )?;
        set(
            &mut self.server.request_timeout_s,
            "OPSCASE_REQUEST_TIMEOUT_S",
            &env,
        )?;
        set(
            &mut self.server.body_read_timeout_s,
            "OPSCASE_BODY_READ_TIMEOUT_S",
            &env,
        )?;
        set(
            &mut self.server.require_precondition,
            "OPSCASE_REQUIRE_PRECONDITION",
            &env,
        )?;
        set(
            &mut self.server.max_in_flight,
            "OPSCASE_MAX_IN_FLIGHT",
            &env,
        )?;
        if let Some(origins) = env("OPSCASE_CORS_ALLOWED_ORIGINS") {
            self.server.cors_allowed_origins = origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_string)
                .collect();
        }
        if let Some(url) = env("OPSCASE_TRACE_URL") {
            self.server.trace_url = Some(url).filter(|u| !u.is_empty());
        }
        // Empty counts as unset, so a deployment template can leave them blank for plain HTTP.
        if let Some(path) = env("OPSCASE_TLS_CERT").filter(|p| !p.is_empty()) {
            self.server.tls_cert = Some(PathBuf::from(path));
        }
        if let Some(path) = env("OPSCASE_TLS_KEY").filter(|p| !p.is_empty()) {
            self.server.tls_key = Some(PathBuf::from(path));
        }
        set(
            &mut self.auth.rate_limit_per_second,
            "OPSCASE_RATE_LIMIT_PER_SECOND",
            &env,
        )?;
        set(
            &mut self.auth.rate_limit_burst,
            "OPSCASE_RATE_LIMIT_BURST",
            &env,
        )?;
        if let Some(key) = env("OPSCASE_BOOTSTRAP_ADMIN_KEY").filter(|k| !k.is_empty()) {
            self.auth.bootstrap_admin_key = Some(Secret(key));
        }
        if let Some(url) = env("OPSCASE_NATS_URL").filter(|u| !u.is_empty()) {
            self.bus.nats_url = Some(url);
        }
        set(
            &mut self.bus.duplicate_window_s,
            "OPSCASE_NATS_DUPLICATE_WINDOW_S",
            &env,
        )?;
        set(
            &mut self.bus.relay_batch_size,
            "OPSCASE_RELAY_BATCH_SIZE",
            &env,
        )?;
        set(
            &mut self.bus.relay_poll_interval_ms,
            "OPSCASE_RELAY_POLL_INTERVAL_MS",
            &env,
        )?;
        set(
            &mut self.bus.outbox_retention_hours,
            "OPSCASE_OUTBOX_RETENTION_HOURS",
            &env,
        )?;
        set(
            &mut self.bus.relay_in_process,
            "OPSCASE_RELAY_IN_PROCESS",
            &env,
        )?;
        set(&mut self.metrics.auth, "OPSCASE_METRICS_AUTH", &env)?;
        set(&mut self.bus.max_deliver, "OPSCASE_MAX_DELIVER", &env)?;
        set(&mut self.database.data_dir, "OPSCASE_DATA_DIR", &env)?;
        set(&mut self.database.pool_size, "OPSCASE_POOL_SIZE", &env)?;
        set(
            &mut self.database.pool_timeout_s,
            "OPSCASE_POOL_TIMEOUT_S",
            &env,
        )?;
        if let Some(mode) = env("OPSCASE_SQLITE_SYNCHRONOUS").filter(|m| !m.is_empty()) {
            self.database.sqlite_synchronous = match mode.to_ascii_lowercase().as_str() {
                "full" => orchestrator::SqliteDurability::Full,
                "normal" => orchestrator::SqliteDurability::Normal,
                _ => {
                    return Err(ConfigError(format!(
                        "OPSCASE_SQLITE_SYNCHRONOUS: {mode:?} is not one of full, normal"
                    )))
                }
            };
        }
        set(
            &mut self.idempotency.ttl_hours,
            "OPSCASE_IDEMPOTENCY_TTL_HOURS",
            &env,
        )?;
        set(&mut self.log.format, "OPSCASE_LOG_FORMAT", &env)?;
        set(&mut self.log.level, "OPSCASE_LOG_LEVEL", &env)?;
        if let Some(url) = env("OPSCASE_DATABASE_URL").filter(|u| !u.is_empty()) {
            self.database.url = Some(url);
        }
        set(
            &mut self.workers.in_process,
            "OPSCASE_WORKERS_IN_PROCESS",
            &env,
        )?;
        set(
            &mut self.workers.command_wait_s,
            "OPSCASE_COMMAND_WAIT_S",
            &env,
        )?;
        for (variable, slot) in [
            ("OPSCASE_LOKI_URL", &mut self.sensor.loki.url),
            ("OPSCASE_LOKI_PUSH_URL", &mut self.sensor.loki.push_url),
            ("OPSCASE_OPENOBSERVE_URL", &mut self.sensor.openobserve.url),
            (
                "OPSCASE_OPENOBSERVE_USER",
                &mut self.sensor.openobserve.user,
            ),
            ("OPSCASE_GRAFANA_URL", &mut self.sensor.links.grafana_url),
        ] {
            if let Some(value) = env(variable).filter(|v| !v.is_empty()) {
                *slot = Some(value);
            }
        }
        if let Some(password) = env("OPSCASE_OPENOBSERVE_PASSWORD").filter(|p| !p.is_empty()) {
            self.sensor.openobserve.password = Some(Secret(password));
        }
        if let Some(url) = env("OPSCASE_LLM_BASE_URL").filter(|u| !u.is_empty()) {
            self.llm.base_url = Some(url);
        }
        if let Some(model) = env("OPSCASE_LLM_MODEL").filter(|m| !m.is_empty()) {
            self.llm.model = Some(model);
        }
        if let Some(key) = env("OPSCASE_LLM_API_KEY").filter(|k| !k.is_empty()) {
            self.llm.api_key = Some(Secret::new(key));
        }
        set(&mut self.watchdog.enabled, "OPSCASE_WATCHDOG_ENABLED", &env)?;
        set(
            &mut self.watchdog.stall_after_s,
            "OPSCASE_WATCHDOG_STALL_AFTER_S",
            &env,
        )?;
        set(
            &mut self.watchdog.interval_s,
            "OPSCASE_WATCHDOG_INTERVAL_S",
            &env,
        )?;
        if let Some(path) = env("OPSCASE_POLICY_FILE").filter(|p| !p.is_empty()) {
            self.gatekeeper.policy_file = Some(PathBuf::from(path));
        }
        if let Some(path) = env("OPSCASE_SCRIPT_DIR").filter(|p| !p.is_empty()) {
            self.executor.script_dir = Some(PathBuf::from(path));
        }
        set(
            &mut self.executor.retry_backoff_ms,
            "OPSCASE_RETRY_BACKOFF_MS",
            &env,
        )?;
        if let Some(url) = env("OPSCASE_HTTP_TARGET").filter(|u| !u.is_empty()) {
            self.executor.http_targets.insert(
                "default".into(),
                executor::adapters::http::HttpTarget::new(url),
            );
        }
        if let Some(url) = env("OPSCASE_K8S_API_URL").filter(|u| !u.is_empty()) {
            self.executor.k8s.api_url = Some(url);
        }
        if let Some(token) = env("OPSCASE_K8S_TOKEN").filter(|t| !t.is_empty()) {
            self.executor.k8s.token = Some(Secret(token));
        }
        if let Some(url) = env("OPSCASE_PROMETHEUS_URL").filter(|u| !u.is_empty()) {
            self.verifier.prometheus_url = Some(url);
        }
        self.librarian.apply_env(&env)?;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Err(error) = orchestrator::redact::Redactor::new(&self.redaction.patterns) {
            return Err(ConfigError(format!("redaction.patterns: {error}")));
        }
        if let Some(url) = &self.bus.nats_url {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return Err(ConfigError(
                    "bus.nats_url (OPSCASE_NATS_URL) must start with nats:// or tls://".into(),
                ));
            }
        }
        if self.bus.max_deliver < 1 {
            return Err(ConfigError(
                "bus.max_deliver (OPSCASE_MAX_DELIVER) must be at least 1".into(),
            ));
        }
        if self.bus.relay_batch_size == 0 || self.bus.relay_poll_interval_ms == 0 {
            return Err(ConfigError(
                "bus.relay_batch_size (OPSCASE_RELAY_BATCH_SIZE) and bus.relay_poll_interval_ms \
                 (OPSCASE_RELAY_POLL_INTERVAL_MS) must be at least 1"
                    .into(),
            ));
        }
        if let Some(url) = &self.database.url {
            let known = ["postgres://", "postgresql://", "sqlite://"];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(ConfigError(
                    "database.url (OPSCASE_DATABASE_URL) must start with postgres://, postgresql:// or sqlite://".into(),
                ));
            }
        }
        if self.database.pool_size == 0 {
            return Err(ConfigError(
                "database.pool_size (OPSCASE_POOL_SIZE) must be at least 1".into(),
            ));
        }
        if !(self.server.request_timeout_s > 0.0 && self.server.request_timeout_s.is_finite()) {
            return Err(ConfigError(
                "server.request_timeout_s (OPSCASE_REQUEST_TIMEOUT_S) must be a positive number of seconds".into(),
            ));
        }
        for (seconds, setting) in [
            (
                self.server.body_read_timeout_s,
                "server.body_read_timeout_s (OPSCASE_BODY_READ_TIMEOUT_S)",
            ),
            (
                self.database.pool_timeout_s,
                "database.pool_timeout_s (OPSCASE_POOL_TIMEOUT_S)",
            ),
        ] {
            if !(seconds > 0.0 && seconds < self.server.request_timeout_s) {
                return Err(ConfigError(format!(
                    "{setting} must be a positive number of seconds shorter than \
                     server.request_timeout_s (OPSCASE_REQUEST_TIMEOUT_S)"
                )));
            }
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(ConfigError(
                "server.body_limit_bytes (OPSCASE_BODY_LIMIT_BYTES) must be at least 1024".into(),
            ));
        }
        if self.server.max_in_flight == 0 {
            return Err(ConfigError(
                "server.max_in_flight (OPSCASE_MAX_IN_FLIGHT) must be at least 1".into(),
            ));
        }
        let rate = self.auth.rate_limit_per_second;
        if !(rate >= 0.0 && rate.is_finite()) || self.auth.rate_limit_burst < 1.0 {
            return Err(ConfigError(
                "auth.rate_limit_per_second (OPSCASE_RATE_LIMIT_PER_SECOND) must be >= 0 and \
                 auth.rate_limit_burst (OPSCASE_RATE_LIMIT_BURST) >= 1"
                    .into(),
            ));
        }
        if let Some(origin) = self
            .server
            .cors_allowed_origins
            .iter()
            .find(|o| !o.starts_with("http"))
        {
            return Err(ConfigError(format!(
                "server.cors_allowed_origins (OPSCASE_CORS_ALLOWED_ORIGINS): {origin:?} is not an origin like https://ops.example.com"
            )));
        }
        if let Some(url) = &self.server.trace_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || !url.contains("{trace_id}")
            {
                return Err(ConfigError(format!(
                    "server.trace_url (OPSCASE_TRACE_URL): {url:?} must be an http(s) URL with {{trace_id}} in it, like http://jaeger:16686/trace/{{trace_id}}"
                )));
            }
        }
        if self.idempotency.ttl_hours == 0 {
            return Err(ConfigError(
                "idempotency.ttl_hours (OPSCASE_IDEMPOTENCY_TTL_HOURS) must be at least 1".into(),
            ));
        }
        if self.workers.command_wait_s as f64 >= self.server.request_timeout_s {
            return Err(ConfigError(
                "workers.command_wait_s (OPSCASE_COMMAND_WAIT_S) must be shorter than \
                 server.request_timeout_s (OPSCASE_REQUEST_TIMEOUT_S)"
                    .into(),
            ));
        }
        self.sensor.validate()?;
        self.llm.validate()?;
        self.analyst.validate()?;
        self.librarian.validate(self.server.request_timeout_s)?;
        if self.watchdog.stall_after_s == 0 || self.watchdog.interval_s == 0 {
            return Err(ConfigError(
                "watchdog.stall_after_s (OPSCASE_WATCHDOG_STALL_AFTER_S) and watchdog.interval_s \
                 (OPSCASE_WATCHDOG_INTERVAL_S) must be at least 1"
                    .into(),
            ));
        }
        for (name, target) in &self.executor.http_targets {
            let url = &target.base_url;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError(format!(
                    "executor.http_targets.{name}.base_url must be an http:// or https:// URL"
                )));
            }
        }
        if let Some(url) = &self.verifier.prometheus_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError(
                    "verifier.prometheus_url (OPSCASE_PROMETHEUS_URL) must be an http:// or https:// URL".into(),
                ));
            }
        }
        self.server.tls_files()?;
        Ok(())
    }

    /// The database URL in force: the configured one, or the SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.database.data_dir.join("opscase.db").display()
            )
        })
    }
}

const TLS_CERT: &str = "server.tls_cert (OPSCASE_TLS_CERT)";
const TLS_KEY: &str = "server.tls_key (OPSCASE_TLS_KEY)";

impl ServerConfig {
    /// The certificate and key files, when TLS is on.
    fn tls_files(&self) -> Result<Option<(&Path, &Path)>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            // Half a TLS setting is a mistake, not a request for plain HTTP.
            _ => Err(ConfigError(format!(
                "{TLS_CERT} and {TLS_KEY} must be set together, or neither for plain HTTP"
            ))),
        }
    }

    /// The rustls server configuration for `tls_cert` and `tls_key`, or `None` for plain HTTP.
    /// Reads and checks both files, so a bad one stops start-up instead of failing every
    /// handshake later.
    pub fn tls_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        let Some((cert_path, key_path)) = self.tls_files()? else {
            return Ok(None);
        };
        let chain = CertificateDer::pem_file_iter(cert_path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| pem_error(TLS_CERT, cert_path, "CERTIFICATE", e))?;
        if chain.is_empty() {
            return Err(pem_error(
                TLS_CERT,
                cert_path,
                "CERTIFICATE",
                pem::Error::NoItemsFound,
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| pem_error(TLS_KEY, key_path, "private key", e))?;
        // An explicit provider instead of the process-wide default: nothing else has to
        // install one, and aws-lc-rs (the rustls default) never gets built.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| {
                let reason = match e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        "the private key does not belong to the certificate".to_string()
                    }
                    other => other.to_string(),
                };
                ConfigError(format!(
                    "{TLS_CERT} {} and {TLS_KEY} {}: {reason}",
                    cert_path.display(),
                    key_path.display()
                ))
            })?;
        // Only HTTP/1.1: axum is built without HTTP/2, and turning that on would also make the
        // plain listener accept h2c.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

fn pem_error(setting: &str, path: &Path, expected: &str, error: pem::Error) -> ConfigError {
    let path = path.display();
    ConfigError(match error {
        pem::Error::Io(e) => format!("{setting}: cannot read {path}: {e}"),
        pem::Error::NoItemsFound => format!("{setting}: {path} holds no PEM {expected}"),
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "{setting}: {path} is not valid PEM: \"-----END {}-----\" is missing",
            String::from_utf8_lossy(&end_marker)
        ),
        other => format!("{setting}: {path} is not valid PEM: {other}"),
    })
}

fn set<T: FromStr>(
    slot: &mut T,
    name: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Some(text) = env(name) {
        *slot = text
            .parse()
            .map_err(|e| ConfigError(format!("{name}={text:?}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opscase.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1111\"\n[database]\npool_size = 3\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env_of(&[("OPSCASE_POOL_SIZE", "7")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 1111);
        assert_eq!(config.database.pool_size, 7);
        let flags = Overrides {
            listen: Some("127.0.0.1:2222".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::load(
            Some(&file),
            env_of(&[("OPSCASE_LISTEN", "127.0.0.1:3333")]),
            &flags,
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 2222);
    }

    #[test]
    fn errors_name_the_key() {
        let error = Config::load(
            None,
            env_of(&[("OPSCASE_POOL_SIZE", "many")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("OPSCASE_POOL_SIZE=\"many\""),
            "{error}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opscase.toml");
        std::fs::write(&file, "[server]\nlisten_on = \"x\"\n").unwrap();
        let error = Config::load(Some(&file), env_of(&[]), &Overrides::default()).unwrap_err();
        assert!(error.to_string().contains("listen_on"), "{error}");

        let error = Config::load(
            None,
            env_of(&[("OPSCASE_DATABASE_URL", "mysql://x")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("OPSCASE_DATABASE_URL"),
            "{error}"
        );
    }

    #[test]
    fn body_read_and_pool_timeouts_come_from_env_and_errors_name_them() {
        let config = Config::load(
            None,
            env_of(&[
                ("OPSCASE_BODY_READ_TIMEOUT_S", "2.5"),
                ("OPSCASE_POOL_TIMEOUT_S", "3"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.server.body_read_timeout_s, 2.5);
        assert_eq!(config.database.pool_timeout_s, 3.0);
        let defaults = Config::load(None, env_of(&[]), &Overrides::default()).unwrap();
        assert_eq!(defaults.server.body_read_timeout_s, 10.0);
        assert_eq!(defaults.database.pool_timeout_s, 5.0);

        for (pairs, named) in [
            (
                &[("OPSCASE_BODY_READ_TIMEOUT_S", "0")][..],
                "server.body_read_timeout_s (OPSCASE_BODY_READ_TIMEOUT_S)",
            ),
            (
                &[("OPSCASE_BODY_READ_TIMEOUT_S", "30")][..],
                "server.body_read_timeout_s (OPSCASE_BODY_READ_TIMEOUT_S)",
            ),
            (
                &[("OPSCASE_POOL_TIMEOUT_S", "-1")][..],
                "database.pool_timeout_s (OPSCASE_POOL_TIMEOUT_S)",
            ),
            (
                &[("OPSCASE_BODY_READ_TIMEOUT_S", "soon")][..],
                "OPSCASE_BODY_READ_TIMEOUT_S=\"soon\"",
            ),
            (
                &[("OPSCASE_TRACE_URL", "http://jaeger:16686/search")][..],
                "server.trace_url (OPSCASE_TRACE_URL)",
            ),
        ] {
            let pairs: &'static [(&'static str, &'static str)] = pairs;
            let error = Config::load(None, env_of(pairs), &Overrides::default()).unwrap_err();
            assert!(error.to_string().contains(named), "{error}");
        }
    }

    #[test]
    fn the_bootstrap_key_never_shows_in_debug_output() {
        let config = Config::load(
            None,
            env_of(&[(
                "OPSCASE_BOOTSTRAP_ADMIN_KEY",
                "osk_very_secret_value_0123456789ab",
            )]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            config.auth.bootstrap_admin_key.as_ref().unwrap().expose(),
            "osk_very_secret_value_0123456789ab"
        );
        assert!(!format!("{config:?}").contains("very_secret"));
    }

    #[test]
    fn embeddings_are_off_unless_configured_and_come_from_the_file_or_the_environment() {
        let config = Config::load(None, env_of(&[]), &Overrides::default()).unwrap();
        assert!(config.librarian.embedding_settings().is_none());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opscase.toml");
        std::fs::write(
            &file,
            "[librarian.embeddings]\nbase_url = \"http://127.0.0.1:11434/v1/\"\n\
             model = \"nomic-embed-text\"\ndimensions = 768\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env_of(&[
                ("OPSCASE_LIBRARIAN_EMBEDDINGS_BATCH_SIZE", "8"),
                ("OPSCASE_LIBRARIAN_EMBEDDINGS_API_KEY", "sk-very-secret"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        let settings = config.librarian.embedding_settings().unwrap();
        assert_eq!(settings.base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(settings.model, "nomic-embed-text");
        assert_eq!(
            (
                settings.dimensions,
                settings.batch_size,
                settings.send_dimensions
            ),
            (768, 8, true)
        );
        assert_eq!(settings.timeout, std::time::Duration::from_secs(5));
        assert_eq!(settings.api_key.as_deref(), Some("sk-very-secret"));
        assert!(!format!("{config:?}").contains("very-secret"));
        assert!(!format!("{settings:?}").contains("very-secret"));

        let config = Config::load(
            None,
            env_of(&[
                (
                    "OPSCASE_LIBRARIAN_EMBEDDINGS_BASE_URL",
                    "https://api.openai.com/v1",
                ),
                (
                    "OPSCASE_LIBRARIAN_EMBEDDINGS_MODEL",
                    "text-embedding-3-small",
                ),
                ("OPSCASE_LIBRARIAN_EMBEDDINGS_DIMENSIONS", "512"),
                ("OPSCASE_LIBRARIAN_EMBEDDINGS_TIMEOUT_S", "2.5"),
                ("OPSCASE_LIBRARIAN_EMBEDDINGS_SEND_DIMENSIONS", "false"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        let settings = config.librarian.embedding_settings().unwrap();
        assert_eq!(settings.dimensions, 512);
        assert!(!settings.send_dimensions);
        assert_eq!(settings.timeout, std::time::Duration::from_millis(2500));
        assert_eq!(settings.api_key, None);
    }

    #[test]
    fn embedding_settings_that_cannot_work_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opscase.toml");
        // The key is never read from the file.
        std::fs::write(
            &file,
            "[librarian.embeddings]\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n\
             dimensions = 8\napi_key = \"sk-in-a-file\"\n",
        )
        .unwrap();
        let error = Config::load(Some(&file), env_of(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("api_key"), "{error}");
        std::fs::write(
            &file,
            "[librarian.embeddings]\nbase_url = \"http://x/v1\"\n",
        )
        .unwrap();
        let error = Config::load(Some(&file), env_of(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("model"), "{error}");

        for (pairs, named) in [
            (
                &[("OPSCASE_LIBRARIAN_EMBEDDINGS_BASE_URL", "http://x/v1")][..],
                "OPSCASE_LIBRARIAN_EMBEDDINGS_MODEL",
            ),
            (
                &[
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_BASE_URL", "x/v1"),
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_MODEL", "m"),
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_DIMENSIONS", "8"),
                ][..],
                "librarian.embeddings.base_url (OPSCASE_LIBRARIAN_EMBEDDINGS_BASE_URL)",
            ),
            (
                &[
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_BASE_URL", "http://x/v1"),
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_MODEL", "m"),
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_DIMENSIONS", "0"),
                ][..],
                "librarian.embeddings.dimensions (OPSCASE_LIBRARIAN_EMBEDDINGS_DIMENSIONS)",
            ),
            (
                &[
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_BASE_URL", "http://x/v1"),
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_MODEL", "m"),
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_DIMENSIONS", "many"),
                ][..],
                "OPSCASE_LIBRARIAN_EMBEDDINGS_DIMENSIONS=\"many\"",
            ),
            (
                &[
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_BASE_URL", "http://x/v1"),
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_MODEL", "m"),
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_DIMENSIONS", "8"),
                    ("OPSCASE_LIBRARIAN_EMBEDDINGS_TIMEOUT_S", "60"),
                ][..],
                "librarian.embeddings.timeout_s (OPSCASE_LIBRARIAN_EMBEDDINGS_TIMEOUT_S)",
            ),
        ] {
            let pairs: &'static [(&'static str, &'static str)] = pairs;
            let error = Config::load(None, env_of(pairs), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{error}");
        }
    }

    #[test]
    fn a_broken_redaction_pattern_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opscase.toml");
        std::fs::write(&file, "[redaction]\npatterns = [\"(unclosed\"]\n").unwrap();
        let error = Config::load(Some(&file), env_of(&[]), &Overrides::default()).unwrap_err();
        assert!(error.to_string().contains("redaction.patterns"), "{error}");
    }

    #[test]
    fn sqlite_in_the_data_dir_is_the_default() {
        let config = Config::load(
            None,
            env_of(&[("OPSCASE_DATA_DIR", "/tmp/x")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.database_url(), "sqlite:///tmp/x/opscase.db");
    }

    /// A self-signed certificate for localhost and its key, as PEM files in `dir`.
    fn write_identity(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let identity = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, identity.cert.pem()).unwrap();
        std::fs::write(&key, identity.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    fn server_with(cert: &Path, key: &Path) -> ServerConfig {
        ServerConfig {
            tls_cert: Some(cert.to_path_buf()),
            tls_key: Some(key.to_path_buf()),
            ..ServerConfig::default()
        }
    }

    fn tls_error(server: ServerConfig) -> String {
        match server.tls_config() {
            Ok(_) => panic!("{server:?} was accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn tls_is_off_unless_configured() {
        let config = Config::load(
            None,
            env_of(&[("OPSCASE_TLS_CERT", ""), ("OPSCASE_TLS_KEY", "")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.server.tls_cert, None);
        assert!(config.server.tls_config().unwrap().is_none());
    }

    #[test]
    fn tls_cert_without_tls_key_is_an_error_naming_both() {
        let only_cert = Config::load(
            None,
            env_of(&[("OPSCASE_TLS_CERT", "/etc/opscase/tls.crt")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        let only_key = Config::load(
            None,
            env_of(&[]),
            &Overrides {
                tls_key: Some("/etc/opscase/tls.key".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        for error in [only_cert, only_key] {
            assert!(
                error.contains("server.tls_cert (OPSCASE_TLS_CERT)")
                    && error.contains("server.tls_key (OPSCASE_TLS_KEY)"),
                "{error}"
            );
        }
    }

    #[test]
    fn tls_paths_come_from_the_file_env_and_flags_in_that_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opscase.toml");
        std::fs::write(
            &file,
            "[server]\ntls_cert = \"/file.crt\"\ntls_key = \"/file.key\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env_of(&[("OPSCASE_TLS_KEY", "/env.key")]),
            &Overrides {
                tls_cert: Some("/flag.crt".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.server.tls_cert, Some(PathBuf::from("/flag.crt")));
        assert_eq!(config.server.tls_key, Some(PathBuf::from("/env.key")));
    }

    #[test]
    fn a_matching_pem_cert_and_key_make_a_tls_config() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_identity(dir.path(), "server");
        let tls = server_with(&cert, &key).tls_config().unwrap().unwrap();
        assert_eq!(tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn unusable_tls_files_are_errors_naming_the_setting_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_identity(dir.path(), "server");
        let (_, other_key) = write_identity(dir.path(), "other");
        let missing = dir.path().join("missing.key");
        let garbage = dir.path().join("garbage.crt");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let truncated = dir.path().join("truncated.key");
        std::fs::write(&truncated, "-----BEGIN PRIVATE KEY-----\nMIIB\n").unwrap();

        let error = tls_error(server_with(&cert, &missing));
        assert!(
            error.contains("server.tls_key (OPSCASE_TLS_KEY): cannot read")
                && error.contains(&missing.display().to_string()),
            "{error}"
        );
        let error = tls_error(server_with(&garbage, &key));
        assert!(
            error.contains("server.tls_cert (OPSCASE_TLS_CERT)")
                && error.contains(&garbage.display().to_string())
                && error.contains("no PEM CERTIFICATE"),
            "{error}"
        );
        // Swapped files: the key file holds no certificate.
        let error = tls_error(server_with(&key, &cert));
        assert!(
            error.contains("server.tls_cert (OPSCASE_TLS_CERT)")
                && error.contains(&key.display().to_string()),
            "{error}"
        );
        let error = tls_error(server_with(&cert, &truncated));
        assert!(
            error.contains("server.tls_key (OPSCASE_TLS_KEY)")
                && error.contains(&truncated.display().to_string())
                && error.contains("not valid PEM"),
            "{error}"
        );
        let error = tls_error(server_with(&cert, &other_key));
        assert!(
            error.contains("server.tls_cert (OPSCASE_TLS_CERT)")
                && error.contains("server.tls_key (OPSCASE_TLS_KEY)")
                && error.contains(&other_key.display().to_string())
                && error.contains("does not belong to the certificate"),
            "{error}"
        );
    }
}
