//! The step runner: validates each step, runs it through its adapter with a timeout and
//! retries, reports every attempt, and runs the plan's rollback steps when a step finally
//! fails. It knows nothing about the bus: attempts go to an [`AttemptSink`], the worker turns
//! them into `evt.exec.step_result.v1` events.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use serde_json::Value;
use workflow::messages::{CaseBrief, StepAttempt};
use workflow::{StepResult, StepStatus};

use crate::adapter::{Adapter, Adapters, StepContext, StepError, StepOutput};

/// The `actor` of every attempt and event the executor reports.
pub const ACTOR: &str = "executor";

/// Backoff never grows past this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long past a step's own timeout the runner waits before it drops the attempt: adapters
/// stop themselves at `timeout_s` (and clean up); this is only the backstop.
pub const BACKSTOP_GRACE: Duration = Duration::from_secs(5);

/// The most retries a step may ask for (the ChangePlan schema's bound).
pub const MAX_RETRY: u64 = 3;

/// The longest timeout a step may ask for (the ChangePlan schema's bound). The runner accepts
/// timeouts from 1 s; the plan schema's minimum of 10 s is the plan guard's business.
pub const MAX_TIMEOUT_S: u64 = 86_400;

/// Scrubs secrets from text before it leaves the executor (outputs, errors, details).
pub type Redact = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// `run` or `rollback`: which list a step came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Run,
    Rollback,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Run => "run",
            Phase::Rollback => "rollback",
        }
    }
}

/// What the steps act for: copied into each [`StepContext`] and [`StepAttempt`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Job {
    pub case: CaseBrief,
    pub plan_id: String,
}

/// Where each attempt is reported, as it finishes.
#[async_trait]
pub trait AttemptSink: Send + Sync {
    async fn attempt(&self, attempt: StepAttempt);
}

/// Collects attempts in memory (tests, or a caller that publishes them afterwards).
#[async_trait]
impl AttemptSink for Mutex<Vec<StepAttempt>> {
    async fn attempt(&self, attempt: StepAttempt) {
        self.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(attempt);
    }
}

/// Forwards attempts to a channel; a closed channel drops them.
#[async_trait]
impl AttemptSink for tokio::sync::mpsc::UnboundedSender<StepAttempt> {
    async fn attempt(&self, attempt: StepAttempt) {
        let _ = self.send(attempt);
    }
}

/// What a run, rollback or dry run came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// One result per forward step attempted, in order (for a dry run: `skipped` with the
    /// description, or `failed` when the step is invalid).
    pub results: Vec<StepResult>,
    /// One result per rollback step run (or described, for a dry run).
    pub rollback: Vec<StepResult>,
    /// Every forward step succeeded (a rollback-only run: every rollback step succeeded;
    /// a dry run: every step is valid).
    pub succeeded: bool,
    /// Why it did not succeed: the step and its error.
    pub reason: Option<String>,
}

/// A step as the runner understands it, after its shape was checked.
#[derive(Debug, Clone)]
struct Step {
    id: String,
    action: String,
    params: Option<Value>,
    timeout: Duration,
    retry: u32,
}

/// The final result of one step, with what the run needs to say why it failed.
struct Outcome {
    result: StepResult,
    attempts: u32,
    error: Option<String>,
}

/// Runs plan steps through the registered adapters.
#[derive(Clone)]
pub struct Runner {
    adapters: Adapters,
    /// The first retry waits this long; each further retry doubles it, up to [`MAX_BACKOFF`].
    backoff: Duration,
    redact: Redact,
}

impl Runner {
    /// A runner with a 1 s base backoff that redacts nothing.
    pub fn new(adapters: Adapters) -> Self {
        Self {
            adapters,
            backoff: Duration::from_secs(1),
            redact: Arc::new(|text: &str| text.to_owned()),
        }
    }

    /// The wait before the first retry (doubled per further retry, capped at 30 s).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The scrubber applied to every output, error and detail the runner reports.
    pub fn with_redact(mut self, redact: Redact) -> Self {
        self.redact = redact;
        self
    }

    pub fn adapters(&self) -> &Adapters {
        &self.adapters
    }

    /// The wait after failed attempt `attempt` (1-based): `backoff * 2^(attempt-1)`, capped.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// Run `steps` in order; the first step that finally fails stops them, then every
    /// `rollback` step runs (each with its own retries; a failed rollback step does not stop
    /// the others).
    pub async fn run(
        &self,
        job: &Job,
        steps: &[Value],
        rollback: &[Value],
        sink: &dyn AttemptSink,
    ) -> RunSummary {
        let mut summary = RunSummary {
            succeeded: true,
            ..RunSummary::default()
        };
        for (index, raw) in steps.iter().enumerate() {
            let outcome = self.run_step(job, Phase::Run, index, raw, sink).await;
            let failed = outcome.result.status == StepStatus::Failed;
            if failed {
                summary.succeeded = false;
                summary.reason = Some(self.failure_reason(&outcome));
            }
            summary.results.push(outcome.result);
            if failed {
                break;
            }
        }
        if !summary.succeeded {
            summary.rollback = self.rollback_steps(job, rollback, sink).await.0;
        }
        summary
    }

    /// Run only `rollback` (phase `rollback`): every step runs even when one fails.
    pub async fn run_rollback(
        &self,
        job: &Job,
        rollback: &[Value],
        sink: &dyn AttemptSink,
    ) -> RunSummary {
        let (rollback, reason) = self.rollback_steps(job, rollback, sink).await;
        RunSummary {
            results: Vec::new(),
            succeeded: reason.is_none(),
            rollback,
            reason,
        }
    }

    /// Validate and describe every step (forward, then rollback) without side effects; each
    /// is reported once with status `planned` (or `failed` when it is invalid).
    pub async fn dry_run(
        &self,
        job: &Job,
        steps: &[Value],
        rollback: &[Value],
        sink: &dyn AttemptSink,
    ) -> RunSummary {
        let mut summary = RunSummary {
            succeeded: true,
            ..RunSummary::default()
        };
        for (phase, list) in [(Phase::Run, steps), (Phase::Rollback, rollback)] {
            for (index, raw) in list.iter().enumerate() {
                let outcome = self.describe_step(job, phase, index, raw, sink).await;
                if outcome.result.status == StepStatus::Failed && summary.succeeded {
                    summary.succeeded = false;
                    summary.reason = Some(self.failure_reason(&outcome));
                }
                match phase {
                    Phase::Run => summary.results.push(outcome.result),
                    Phase::Rollback => summary.rollback.push(outcome.result),
                }
            }
        }
        summary
    }

    async fn rollback_steps(
        &self,
        job: &Job,
        rollback: &[Value],
        sink: &dyn AttemptSink,
    ) -> (Vec<StepResult>, Option<String>) {
        let mut results = Vec::with_capacity(rollback.len());
        let mut reason = None;
        for (index, raw) in rollback.iter().enumerate() {
            let outcome = self.run_step(job, Phase::Rollback, index, raw, sink).await;
            if outcome.result.status == StepStatus::Failed && reason.is_none() {
                reason = Some(self.failure_reason(&outcome));
            }
            results.push(outcome.result);
        }
        (results, reason)
    }

    fn failure_reason(&self, outcome: &Outcome) -> String {
        let error = outcome.error.as_deref().unwrap_or("failed");
        let tries = if outcome.attempts == 1 {
            "1 attempt".to_owned()
        } else {
            format!("{} attempts", outcome.attempts)
        };
        format!("step {} failed after {tries}: {error}", outcome.result.step)
    }

    /// Check the step's shape, its params against the adapter's schema, and that the adapter
    /// is registered. The error names the field.
    fn prepare(&self, index: usize, raw: &Value) -> (String, String, Result<Step, String>) {
        let fallback_id = format!("step-{}", index + 1);
        let id = match raw.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => fallback_id,
        };
        let action = raw
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let step =
            parse_step(&id, raw).and_then(|step| {
                match workflow::adapters::validate_params(&step.action, step.params.as_ref()) {
                    None => Err(format!("action: `{}` is not a known adapter", step.action)),
                    Some(errors) if !errors.is_empty() => Err(errors
                        .iter()
                        .map(|e| format!("params{}: {}", e.pointer, e.message))
                        .collect::<Vec<_>>()
                        .join("; ")),
                    Some(_) if self.adapters.get(&step.action).is_none() => Err(format!(
                        "action: `{}` is not enabled on this executor (enabled: {})",
                        step.action,
                        self.adapters.actions().join(", ")
                    )),
                    Some(_) => Ok(step),
                }
            });
        let step = step.map_err(|error| format!("invalid step: {error}"));
        (id, action, step)
    }

    async fn run_step(
        &self,
        job: &Job,
        phase: Phase,
        index: usize,
        raw: &Value,
        sink: &dyn AttemptSink,
    ) -> Outcome {
        let (step, adapter) = match self.checked(job, phase, index, raw, false, sink).await {
            Ok(checked) => checked,
            Err(outcome) => return outcome,
        };
        let max_attempts = step.retry + 1;
        let mut attempt = 1;
        loop {
            let context = StepContext {
                case: job.case.clone(),
                step_id: step.id.clone(),
                attempt,
                timeout: step.timeout,
            };
            let started = Instant::now();
            let result = attempt_once(adapter.as_ref(), &step, &context).await;
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (status, output, error, retryable, detail) = match result {
                Ok(StepOutput { detail, output }) => {
                    ("succeeded", output, None, false, self.scrub(&detail))
                }
                Err(StepError {
                    message,
                    output,
                    retryable,
                }) => {
                    let message = self.scrub(&message);
                    ("failed", output, Some(message.clone()), retryable, message)
                }
            };
            sink.attempt(StepAttempt {
                actor: ACTOR.into(),
                plan_id: job.plan_id.clone(),
                step: step.id.clone(),
                action: step.action.clone(),
                phase: phase.as_str().into(),
                attempt,
                status: status.into(),
                duration_ms,
                output: output.map(|text| self.scrub(&text)),
                error: error.clone(),
                dry_run: false,
                output_ref: None,
            })
            .await;
            if error.is_none() {
                return Outcome {
                    result: StepResult {
                        step: step.id,
                        status: StepStatus::Succeeded,
                        detail: Some(detail),
                    },
                    attempts: attempt,
                    error: None,
                };
            }
            if !retryable || attempt >= max_attempts {
                return Outcome {
                    result: StepResult {
                        step: step.id,
                        status: StepStatus::Failed,
                        detail: Some(detail),
                    },
                    attempts: attempt,
                    error,
                };
            }
            tokio::time::sleep(self.backoff_after(attempt)).await;
            attempt += 1;
        }
    }

    async fn describe_step(
        &self,
        job: &Job,
        phase: Phase,
        index: usize,
        raw: &Value,
        sink: &dyn AttemptSink,
    ) -> Outcome {
        let (step, adapter) = match self.checked(job, phase, index, raw, true, sink).await {
            Ok(checked) => checked,
            Err(outcome) => return outcome,
        };
        let context = StepContext {
            case: job.case.clone(),
            step_id: step.id.clone(),
            attempt: 1,
            timeout: step.timeout,
        };
        let started = Instant::now();
        let described = adapter.describe(step.params.as_ref().unwrap_or(&empty()), &context);
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, result_status, text) = match described {
            Ok(description) => ("planned", StepStatus::Skipped, self.scrub(&description)),
            Err(error) => ("failed", StepStatus::Failed, self.scrub(&error.message)),
        };
        let failed = result_status == StepStatus::Failed;
        sink.attempt(StepAttempt {
            actor: ACTOR.into(),
            plan_id: job.plan_id.clone(),
            step: step.id.clone(),
            action: step.action.clone(),
            phase: phase.as_str().into(),
            attempt: 1,
            status: status.into(),
            duration_ms,
            output: (!failed).then(|| text.clone()),
            error: failed.then(|| text.clone()),
            dry_run: true,
            output_ref: None,
        })
        .await;
        Outcome {
            result: StepResult {
                step: step.id,
                status: result_status,
                detail: Some(text.clone()),
            },
            attempts: 1,
            error: failed.then_some(text),
        }
    }

    /// The step and its adapter; an invalid step is reported (one failed attempt) and its
    /// outcome returned instead.
    #[allow(clippy::too_many_arguments)]
    async fn checked(
        &self,
        job: &Job,
        phase: Phase,
        index: usize,
        raw: &Value,
        dry_run: bool,
        sink: &dyn AttemptSink,
    ) -> Result<(Step, Arc<dyn Adapter>), Outcome> {
        let (id, action, step) = self.prepare(index, raw);
        match step {
            Ok(step) => {
                let adapter = self
                    .adapters
                    .get(&step.action)
                    .expect("prepare checked the adapter")
                    .clone();
                Ok((step, adapter))
            }
            Err(error) => Err(self
                .invalid(job, phase, id, action, error, dry_run, sink)
                .await),
        }
    }

    /// Report a step that cannot run at all: one failed attempt, no retries.
    #[allow(clippy::too_many_arguments)]
    async fn invalid(
        &self,
        job: &Job,
        phase: Phase,
        id: String,
        action: String,
        error: String,
        dry_run: bool,
        sink: &dyn AttemptSink,
    ) -> Outcome {
        let error = self.scrub(&error);
        sink.attempt(StepAttempt {
            actor: ACTOR.into(),
            plan_id: job.plan_id.clone(),
            step: id.clone(),
            action,
            phase: phase.as_str().into(),
            attempt: 1,
            status: "failed".into(),
            duration_ms: 0,
            output: None,
            error: Some(error.clone()),
            dry_run,
            output_ref: None,
        })
        .await;
        Outcome {
            result: StepResult {
                step: id,
                status: StepStatus::Failed,
                detail: Some(error.clone()),
            },
            attempts: 1,
            error: Some(error),
        }
    }

    fn scrub(&self, text: &str) -> String {
        (self.redact)(text)
    }
}

fn empty() -> Value {
    Value::Object(Default::default())
}

/// One attempt, bounded by the step's timeout plus [`BACKSTOP_GRACE`]; a panicking adapter is
/// a permanent failure rather than a lost task.
async fn attempt_once(
    adapter: &dyn Adapter,
    step: &Step,
    context: &StepContext,
) -> Result<StepOutput, StepError> {
    let params = step.params.clone().unwrap_or_else(empty);
    // Inside the command's span (and so its trace): one span per attempt of a step.
    let span = tracing::info_span!(
        "step",
        otel.name = %format!("step {}", adapter.action()),
        step = %context.step_id,
        action = adapter.action(),
        attempt = context.attempt,
    );
    let run = tracing::Instrument::instrument(
        AssertUnwindSafe(adapter.run(&params, context)).catch_unwind(),
        span,
    );
    match tokio::time::timeout(step.timeout + BACKSTOP_GRACE, run).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(StepError::permanent(format!(
                "the {} adapter panicked: {what}",
                step.action
            )))
        }
        Err(_) => Err(StepError::retryable(format!(
            "timed out after {} (the adapter did not stop by itself)",
            seconds(step.timeout)
        ))),
    }
}

/// `10 s`, or `0.5 s` for a fractional duration.
pub(crate) fn seconds(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

fn parse_step(id: &str, raw: &Value) -> Result<Step, String> {
    let object = raw
        .as_object()
        .ok_or_else(|| "a step must be a JSON object".to_owned())?;
    if let Some(value) = object.get("id") {
        if !value.is_string() {
            return Err("id: must be a string".into());
        }
    }
    let action = match object.get("action") {
        Some(Value::String(action)) if !action.is_empty() => action.clone(),
        Some(_) => return Err("action: must be a non-empty string".into()),
        None => return Err("action: is required".into()),
    };
    let params = match object.get("params") {
        None | Some(Value::Null) => None,
        Some(value @ Value::Object(_)) => Some(value.clone()),
        Some(_) => return Err("params: must be an object".into()),
    };
    let timeout_s = match object.get("timeout_s") {
        Some(value) => value
            .as_u64()
            .filter(|s| (1..=MAX_TIMEOUT_S).contains(s))
            .ok_or_else(|| format!("timeout_s: must be an integer from 1 to {MAX_TIMEOUT_S}"))?,
        None => return Err("timeout_s: is required".into()),
    };
    let retry = match object.get("retry") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_u64()
            .filter(|r| *r <= MAX_RETRY)
            .ok_or_else(|| format!("retry: must be an integer from 0 to {MAX_RETRY}"))?,
    };
    Ok(Step {
        id: id.to_owned(),
        action,
        params,
        timeout: Duration::from_secs(timeout_s),
        retry: retry as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let runner = Runner::new(Adapters::new()).with_backoff(Duration::from_secs(2));
        assert_eq!(runner.backoff_after(1), Duration::from_secs(2));
        assert_eq!(runner.backoff_after(2), Duration::from_secs(4));
        assert_eq!(runner.backoff_after(3), Duration::from_secs(8));
        assert_eq!(runner.backoff_after(5), MAX_BACKOFF);
        assert_eq!(runner.backoff_after(60), MAX_BACKOFF);
    }

    #[test]
    fn step_shape_errors_name_the_field() {
        let err = |raw: Value| parse_step("s", &raw).unwrap_err();
        assert!(err(json!("x")).contains("object"));
        assert!(err(json!({"timeout_s": 10})).starts_with("action:"));
        assert!(err(json!({"action": "noop"})).starts_with("timeout_s:"));
        assert!(err(json!({"action": "noop", "timeout_s": 0})).starts_with("timeout_s:"));
        assert!(err(json!({"action": "noop", "timeout_s": 10, "retry": 4})).starts_with("retry:"));
        assert!(
            err(json!({"action": "noop", "timeout_s": 10, "params": []})).starts_with("params:")
        );
        let step = parse_step("s", &json!({"action": "noop", "timeout_s": 10})).unwrap();
        assert_eq!((step.retry, step.timeout), (0, Duration::from_secs(10)));
    }

    #[test]
    fn seconds_reads_well() {
        assert_eq!(seconds(Duration::from_secs(10)), "10 s");
        assert_eq!(seconds(Duration::from_millis(500)), "0.5 s");
    }
}
