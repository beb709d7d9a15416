//! The model client: one OpenAI-compatible `POST {base_url}/chat/completions` for a JSON
//! answer to a schema, with the redactor, a concurrency limit, a per-case call budget,
//! retries on 429 and 5xx (honouring `Retry-After`), a circuit breaker, and an `llm_call`
//! row for every call whatever its outcome.
//!
//! The request body is async-openai's `CreateChatCompletionRequest`; the answer is read
//! leniently (only `choices[0].message.content` and `usage`), since the servers that speak
//! this protocol (OpenAI, vLLM, Ollama, llama.cpp) differ in the other fields they fill.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, CreateChatCompletionRequest, ResponseFormat,
    ResponseFormatJsonSchema,
};
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use uuid::Uuid;

use orchestrator::{SqlPool, StoreError};

use crate::breaker::Breaker;
use crate::metrics::LlmMetrics;
use crate::prompt::{self, Prompt, Section};
use crate::redact::LlmRedactor;
use crate::settings::LlmSettings;
use crate::store::{CallStore, LlmCall};
use crate::strict;

/// One request for a JSON answer.
#[derive(Debug, Clone)]
pub struct JsonRequest {
    /// What the answer is for (`plan`, `findings_summary`, ...): the audit's and the
    /// metrics' label.
    pub purpose: &'static str,
    pub case_id: Option<Uuid>,
    /// opscase's own instructions (trusted).
    pub instructions: String,
    /// What to do, in a sentence or two (trusted).
    pub task: String,
    /// Everything from outside (not trusted): fenced and redacted.
    pub sections: Vec<Section>,
    /// The answer's schema (draft 2020-12; `$ref`s into its own `$defs`).
    pub schema_name: String,
    pub schema: Value,
}

/// A JSON answer and the call that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub value: Value,
    pub call_id: Uuid,
    pub model: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The model could not be reached, or kept failing (timeouts, connection errors, 5xx or
    /// 429 after the retries): a fallback may stand in.
    #[error("the model is unreachable: {message}")]
    Unreachable { call_id: Uuid, message: String },
    /// Calls are refused for a while after repeated failures.
    #[error("the model's circuit breaker is open (calls resume in {retry_in:?})")]
    CircuitOpen { retry_in: Duration },
    /// The case has used its calls.
    #[error("the case's model budget is spent ({spent} of {budget} calls)")]
    BudgetExhausted { spent: i64, budget: u32 },
    /// The server refused the request (a 4xx other than 429: the model, the key, the schema).
    #[error("the model's server refused the request ({status}): {message}")]
    Refused {
        call_id: Uuid,
        status: u16,
        message: String,
    },
    /// The answer was not one JSON object.
    #[error("the model's answer is not a JSON object: {message}")]
    NotJson {
        call_id: Uuid,
        text: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LlmError {
    /// Whether a configured fallback should stand in (the model is not usable now), as
    /// opposed to an answer that came back wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            LlmError::Unreachable { .. }
                | LlmError::CircuitOpen { .. }
                | LlmError::BudgetExhausted { .. }
                | LlmError::Refused { .. }
        )
    }

    pub fn call_id(&self) -> Option<Uuid> {
        match self {
            LlmError::Unreachable { call_id, .. }
            | LlmError::Refused { call_id, .. }
            | LlmError::NotJson { call_id, .. } => Some(*call_id),
            _ => None,
        }
    }
}

pub struct LlmClient {
    settings: LlmSettings,
    http: reqwest::Client,
    redactor: LlmRedactor,
    calls: CallStore,
    concurrency: Semaphore,
    breaker: Mutex<Breaker>,
    metrics: LlmMetrics,
}

/// The outcome of the HTTP exchange, before it is audited.
struct Exchange {
    attempts: u32,
    result: Result<Completion, Failure>,
}

struct Completion {
    text: String,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
}

enum Failure {
    /// Retries exhausted or not retryable: (outcome label, message, HTTP status if any).
    Transport {
        outcome: &'static str,
        message: String,
        status: Option<u16>,
    },
}

#[derive(Deserialize)]
struct ChatAnswer {
    choices: Vec<ChatChoice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatMessage,
}

#[derive(Deserialize)]
struct ChatMessage {
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
}

impl LlmClient {
    pub fn new(
        settings: LlmSettings,
        pool: SqlPool,
        registry: &prometheus::Registry,
    ) -> Result<Self, String> {
        let redactor = LlmRedactor::new(&settings.redact)
            .map_err(|e| format!("llm.redact: an invalid pattern: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| format!("llm: the HTTP client cannot be built: {e}"))?;
        Ok(Self {
            concurrency: Semaphore::new(settings.concurrency.max(1)),
            breaker: Mutex::new(Breaker::new(
                settings.breaker_failures,
                settings.breaker_cooldown,
            )),
            metrics: LlmMetrics::register(registry),
            calls: CallStore::new(pool),
            redactor,
            http,
            settings,
        })
    }

    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    pub fn model(&self) -> &str {
        &self.settings.model
    }

    pub fn calls(&self) -> &CallStore {
        &self.calls
    }

    /// Ask for one JSON object conforming to `request.schema` (validation against it is the
    /// caller's: the answer here is only known to be a JSON object). `history` holds earlier
    /// answers of this conversation with what was wrong with them, for a retry.
    pub async fn json(
        &self,
        request: &JsonRequest,
        history: &[(String, String)],
    ) -> Result<Answer, LlmError> {
        let purpose = request.purpose;
        if let Some(case_id) = request.case_id {
            let spent = self.calls.spent(case_id).await?;
            if spent >= i64::from(self.settings.case_budget) {
                self.metrics.request(purpose, "budget_exhausted");
                return Err(LlmError::BudgetExhausted {
                    spent,
                    budget: self.settings.case_budget,
                });
            }
        }
        let admitted = self
            .breaker
            .lock()
            .expect("breaker lock")
            .admit(Instant::now());
        if let Err(retry_in) = admitted {
            self.metrics.request(purpose, "circuit_open");
            return Err(LlmError::CircuitOpen { retry_in });
        }

        let prompt = prompt::build(
            &request.instructions,
            &request.task,
            &request.sections,
            &self.redactor,
        );
        let body = self.body(&prompt, request, history);
        let sent = serde_json::to_string(&body).expect("a request serialises");
        let call_id = Uuid::now_v7();
        let started = Instant::now();
        let exchange = {
            let _permit = self.concurrency.acquire().await.expect("never closed");
            self.exchange(&body).await
        };
        let latency = started.elapsed();
        self.metrics.observe(purpose, latency.as_secs_f64());

        let mut call = LlmCall {
            id: call_id,
            case_id: request.case_id,
            purpose: purpose.to_string(),
            model: self.settings.model.clone(),
            attempts: i64::from(exchange.attempts),
            prompt_digest: digest(&sent),
            response_digest: None,
            prompt: cap(
                &format!("{}\n\n{}", prompt.system, prompt.user),
                self.settings.audit_cap,
            ),
            response: None,
            prompt_tokens: None,
            completion_tokens: None,
            latency_ms: i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
            outcome: String::new(),
            error: None,
            created_at: Utc::now(),
        };
        let result = match exchange.result {
            Ok(completion) => {
                self.breaker.lock().expect("breaker lock").succeeded();
                call.response_digest = Some(digest(&completion.text));
                call.response = Some(cap(
                    &self.redactor.text(&completion.text),
                    self.settings.audit_cap,
                ));
                call.prompt_tokens = completion.prompt_tokens;
                call.completion_tokens = completion.completion_tokens;
                self.metrics.tokens(
                    purpose,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                );
                match parse_object(&completion.text) {
                    Ok(value) => {
                        call.outcome = "ok".into();
                        let value = if self.settings.strict {
                            strict::relax(&value, &request.schema)
                        } else {
                            value
                        };
                        Ok(Answer {
                            value,
                            call_id,
                            model: self.settings.model.clone(),
                        })
                    }
                    Err(message) => {
                        call.outcome = "invalid".into();
                        call.error = Some(message.clone());
                        Err(LlmError::NotJson {
                            call_id,
                            text: completion.text,
                            message,
                        })
                    }
                }
            }
            Err(Failure::Transport {
                outcome,
                message,
                status,
            }) => {
                // A refusal of the request itself (4xx) is an answer: the server is up.
                let mut breaker = self.breaker.lock().expect("breaker lock");
                if status.is_none_or(|s| s == 429 || s >= 500) {
                    breaker.failed(Instant::now());
                } else {
                    breaker.succeeded();
                }
                drop(breaker);
                call.outcome = outcome.into();
                call.error = Some(message.clone());
                Err(match status {
                    Some(status) if status != 429 && status < 500 => LlmError::Refused {
                        call_id,
                        status,
                        message,
                    },
                    _ => LlmError::Unreachable { call_id, message },
                })
            }
        };
        self.metrics.request(purpose, &call.outcome);
        self.calls.insert(&call).await?;
        result
    }

    /// The chat-completions body: system and user messages (and, for a retry, the earlier
    /// answers with what was wrong), the schema as `response_format`.
    fn body(
        &self,
        prompt: &Prompt,
        request: &JsonRequest,
        history: &[(String, String)],
    ) -> CreateChatCompletionRequest {
        let mut messages = vec![
            ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                content: ChatCompletionRequestSystemMessageContent::Text(prompt.system.clone()),
                name: None,
            }),
            user(prompt.user.clone()),
        ];
        for (answer, problems) in history {
            messages.push(assistant(self.redactor.text(answer)));
            messages.push(user(format!(
                "That answer was refused. Fix every problem below and answer again with the \
                 whole JSON object.\n<data name=\"problems\">\n{}\n</data>",
                self.redactor.text(problems)
            )));
        }
        let schema = if self.settings.strict {
            strict::strict(&request.schema)
        } else {
            request.schema.clone()
        };
        #[allow(deprecated)] // `max_tokens` is what every OpenAI-compatible server takes
        CreateChatCompletionRequest {
            model: self.settings.model.clone(),
            messages,
            temperature: Some(self.settings.temperature),
            max_tokens: Some(self.settings.max_tokens),
            response_format: Some(ResponseFormat::JsonSchema {
                json_schema: ResponseFormatJsonSchema {
                    description: None,
                    name: request.schema_name.clone(),
                    schema,
                    strict: Some(self.settings.strict),
                },
            }),
            ..Default::default()
        }
    }

    /// POST with retries on 429, 5xx and transport errors, waiting `Retry-After` when the
    /// server says (up to `max_retry_after`), else an exponential backoff.
    async fn exchange(&self, body: &CreateChatCompletionRequest) -> Exchange {
        let url = format!(
            "{}/chat/completions",
            self.settings.base_url.trim_end_matches('/')
        );
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut post = self.http.post(&url).json(body);
            for (name, value) in bus::trace::current_headers() {
                post = post.header(name, value);
            }
            if let Some(key) = &self.settings.api_key {
                post = post.bearer_auth(key);
            }
            let last = attempts > self.settings.retries;
            let (failure, wait) = match post.send().await {
                Ok(response) if response.status().is_success() => {
                    let result = match response.json::<ChatAnswer>().await {
                        Ok(answer) => completion(answer),
                        Err(e) => Err(Failure::Transport {
                            outcome: "error",
                            message: format!("the answer is not a chat completion: {e}"),
                            status: None,
                        }),
                    };
                    return Exchange { attempts, result };
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = retry_after(response.headers());
                    let text = response.text().await.unwrap_or_default();
                    let message = format!("HTTP {status}: {}", cap(&text, 500));
                    let outcome = if status == 429 {
                        "rate_limited"
                    } else {
                        "error"
                    };
                    let failure = Failure::Transport {
                        outcome,
                        message,
                        status: Some(status),
                    };
                    if status != 429 && status < 500 {
                        return Exchange {
                            attempts,
                            result: Err(failure),
                        };
                    }
                    (failure, retry_after)
                }
                Err(error) => {
                    let outcome = if error.is_timeout() {
                        "timeout"
                    } else {
                        "error"
                    };
                    (
                        Failure::Transport {
                            outcome,
                            message: error_chain(&error),
                            status: None,
                        },
                        None,
                    )
                }
            };
            if last {
                return Exchange {
                    attempts,
                    result: Err(failure),
                };
            }
            let backoff = self.settings.backoff * 2u32.saturating_pow(attempts - 1);
            let wait = wait
                .map(|w| w.min(self.settings.max_retry_after))
                .unwrap_or(backoff);
            tokio::time::sleep(wait).await;
        }
    }
}

fn user(text: String) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
        content: ChatCompletionRequestUserMessageContent::Text(text),
        name: None,
    })
}

fn assistant(text: String) -> ChatCompletionRequestMessage {
    use async_openai::types::chat::{
        ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    };
    ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
        content: Some(ChatCompletionRequestAssistantMessageContent::Text(text)),
        ..Default::default()
    })
}

fn completion(answer: ChatAnswer) -> Result<Completion, Failure> {
    let usage = answer.usage;
    let Some(choice) = answer.choices.into_iter().next() else {
        return Err(Failure::Transport {
            outcome: "error",
            message: "the answer has no choices".into(),
            status: None,
        });
    };
    let text = match (choice.message.content, choice.message.refusal) {
        (Some(text), _) => text,
        (None, Some(refusal)) => format!("(the model refused) {refusal}"),
        (None, None) => String::new(),
    };
    Ok(Completion {
        text,
        prompt_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
    })
}

/// One JSON object from the answer's text; a Markdown fence around it is tolerated (models
/// add one even when told not to).
fn parse_object(text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(trimmed)
        .trim();
    match serde_json::from_str::<Value>(unfenced) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(format!("a JSON {} rather than an object", kind(&other))),
        Err(e) => Err(format!("not JSON ({e})")),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `Retry-After` as seconds (the HTTP-date form is read too).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(seconds) = value.trim().parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

fn error_chain(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// At most `max` characters, with a note of what was cut.
fn cap(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}… ({} more characters)", count - max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_one_json_object_fenced_or_not() {
        assert_eq!(parse_object(" {\"a\": 1} ").unwrap()["a"], 1);
        assert_eq!(parse_object("```json\n{\"a\": 2}\n```").unwrap()["a"], 2);
        assert!(parse_object("[1]").unwrap_err().contains("array"));
        assert!(parse_object("Sure! Here is the plan")
            .unwrap_err()
            .starts_with("not JSON"));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        let soon = (Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert(reqwest::header::RETRY_AFTER, soon.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(20) && wait <= Duration::from_secs(30));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
