//! `noop`: does nothing and succeeds; for drills and plans whose fix happens elsewhere.

use async_trait::async_trait;
use serde_json::Value;

use crate::adapter::{Adapter, StepContext, StepError, StepOutput};

/// The `noop` adapter. Its detail is the step's `message` param, or `nothing to do`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

fn message(params: &Value) -> Option<&str> {
    params
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
}

#[async_trait]
impl Adapter for Noop {
    fn action(&self) -> &'static str {
        "noop"
    }

    fn describe(&self, params: &Value, _context: &StepContext) -> Result<String, StepError> {
        Ok(match message(params) {
            Some(message) => format!("would do nothing: {message}"),
            None => "would do nothing".into(),
        })
    }

    async fn run(&self, params: &Value, _context: &StepContext) -> Result<StepOutput, StepError> {
        Ok(StepOutput {
            detail: message(params).unwrap_or("nothing to do").into(),
            output: None,
        })
    }
}
