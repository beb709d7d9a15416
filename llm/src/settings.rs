//! The `[llm]` section: which server and model, and the limits every call keeps to.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct LlmSettings {
    /// The OpenAI-compatible base URL, the one that ends in `/v1`.
    pub base_url: String,
    pub model: String,
    /// From `OPSCASE_LLM_API_KEY` only (never the file, never logged).
    pub api_key: Option<String>,
    /// Per HTTP attempt.
    pub timeout: Duration,
    pub max_tokens: u32,
    pub temperature: f32,
    /// Calls in flight at once, over every purpose.
    pub concurrency: usize,
    /// Calls one case may make (answers and failures alike; refusals by the breaker or the
    /// budget do not count).
    pub case_budget: u32,
    /// Retries of one call on 429, 5xx, timeouts and connection errors.
    pub retries: u32,
    /// The first retry's wait, doubled each time, when the server gives no `Retry-After`.
    pub backoff: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// Failed calls in a row that open the circuit breaker, and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// Send `strict: true` with a strict-mode form of each schema (OpenAI's structured
    /// outputs); otherwise the schema as it is, `strict: false` (vLLM, Ollama, llama.cpp use
    /// it to constrain decoding). The answer is validated by opscase either way.
    pub strict: bool,
    /// Patterns masked in prompts on top of the built-in ones and `redaction.patterns`.
    pub redact: Vec<String>,
    /// Characters of the prompt and the answer kept in `llm_call`.
    pub audit_cap: usize,
    /// Attempts at a valid plan before the plan fails.
    pub plan_attempts: u32,
    /// The planner template that stands in when the model is unreachable.
    pub fallback_template: Option<String>,
}

impl LlmSettings {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(60),
            max_tokens: 4096,
            temperature: 0.0,
            concurrency: 4,
            case_budget: 20,
            retries: 2,
            backoff: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(60),
            strict: false,
            redact: Vec::new(),
            audit_cap: 16 * 1024,
            plan_attempts: 3,
            fallback_template: None,
        }
    }
}
