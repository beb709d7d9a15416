//! What an adapter is: one kind of step (`noop`, `script.exec`, `http.call`, `k8s.rollout`)
//! that the runner calls with the step's params. The runner owns retries, backoff, the step
//! result events and rollback; an adapter owns one attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use workflow::messages::CaseBrief;

/// Everything an attempt may know besides its params.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub case: CaseBrief,
    pub step_id: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The step's `timeout_s`: the adapter must stop (and clean up) by then.
    pub timeout: Duration,
}

/// A successful attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    /// One line on what was done, e.g. `PATCH /routes/checkout -> 200`.
    pub detail: String,
    /// Captured output (already size-capped by the adapter; the runner redacts it).
    pub output: Option<String>,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub message: String,
    pub output: Option<String>,
    /// False when trying again cannot help (bad params, not allowlisted): no more attempts.
    pub retryable: bool,
}

impl StepError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            output: None,
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            output: None,
            retryable: false,
        }
    }

    pub fn with_output(mut self, output: Option<String>) -> Self {
        self.output = output;
        self
    }
}

#[async_trait]
pub trait Adapter: Send + Sync {
    /// The action name plan steps use, e.g. `script.exec`.
    fn action(&self) -> &'static str;
    /// Validate `params` against the live configuration and say what a run would do, without
    /// side effects (dry run).
    fn describe(&self, params: &Value, context: &StepContext) -> Result<String, StepError>;
    /// One attempt.
    async fn run(&self, params: &Value, context: &StepContext) -> Result<StepOutput, StepError>;
}

/// The adapters an executor can run, by action name.
#[derive(Clone, Default)]
pub struct Adapters {
    by_action: HashMap<&'static str, Arc<dyn Adapter>>,
}

impl Adapters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `adapter` under its action name (and `also`, e.g. `gateway.flip` for the
    /// `http.call` adapter).
    pub fn with(mut self, adapter: Arc<dyn Adapter>, also: &[&'static str]) -> Self {
        for name in also {
            self.by_action.insert(name, adapter.clone());
        }
        self.by_action.insert(adapter.action(), adapter);
        self
    }

    pub fn get(&self, action: &str) -> Option<&Arc<dyn Adapter>> {
        self.by_action.get(action)
    }

    pub fn actions(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.by_action.keys().copied().collect();
        names.sort_unstable();
        names
    }
}
