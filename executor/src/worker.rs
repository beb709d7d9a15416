//! The executor role: takes `cmd.exec.run` and `cmd.exec.rollback`, claims each command
//! durably before anything runs (so a redelivery never runs a step twice), runs the steps
//! through the [`Runner`], and publishes one `evt.exec.step_result.v1` per attempt plus, for a
//! run, `evt.exec.done.v1` or `evt.exec.failed.v1`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bus::{answer, Claim, Claims, Envelope, Publisher, Worker, WorkerError};
use serde_json::Value;
use workflow::messages::{topic, ExecCommand, ExecEvent, StepAttempt};

use crate::runner::{AttemptSink, Job, Runner, ACTOR};

/// The `source` of the executor's events unless told otherwise.
pub const DEFAULT_SOURCE: &str = "opscase/executor";

/// Publishing an event is tried this many times (the command is claimed: its steps never run
/// again, so the events must get out now).
const PUBLISH_ATTEMPTS: u32 = 5;
const PUBLISH_BACKOFF: Duration = Duration::from_millis(200);

/// The executor worker.
pub struct Executor {
    runner: Runner,
    claims: Arc<dyn Claims>,
    source: String,
    holder: String,
    outputs: Option<Arc<dyn OutputStore>>,
}

impl Executor {
    /// `source` is the CloudEvents source of its events, e.g. [`DEFAULT_SOURCE`]. Claims are
    /// held as `<source>@<host>/<pid>`.
    pub fn new(runner: Runner, claims: Arc<dyn Claims>, source: impl Into<String>) -> Self {
        let source = source.into();
        let holder = format!("{source}@{}/{}", hostname(), std::process::id());
        Self {
            runner,
            claims,
            source,
            holder,
            outputs: None,
        }
    }

    /// Ship each attempt's output to `outputs` and point the step result at it.
    pub fn with_output_store(mut self, outputs: Arc<dyn OutputStore>) -> Self {
        self.outputs = Some(outputs);
        self
    }

    /// Who the claims name as their holder.
    pub fn with_holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// What a command asks for, checked before it is claimed.
#[derive(Debug)]
struct Request {
    exec: ExecCommand,
    rollback_only: bool,
    steps: Vec<Value>,
    rollback: Vec<Value>,
}

fn parse(command: &Envelope) -> Result<Request, WorkerError> {
    let rollback_only = match command.kind.as_str() {
        topic::EXEC_RUN => false,
        topic::EXEC_ROLLBACK => true,
        other => {
            return Err(WorkerError::Poison(format!(
                "the executor does not take {other}"
            )))
        }
    };
    let exec: ExecCommand = serde_path_to_error::deserialize(&command.data).map_err(|e| {
        let path = e.path().to_string();
        WorkerError::Poison(format!(
            "{} data is not an exec command: at {path}: {}",
            command.kind,
            e.inner()
        ))
    })?;
    let steps = if rollback_only {
        Vec::new()
    } else if let Some(steps) = &exec.steps {
        steps.clone()
    } else {
        match exec.plan.get("steps") {
            Some(Value::Array(steps)) => steps.clone(),
            _ => {
                return Err(WorkerError::Poison(format!(
                    "{}: plan.steps is missing or not an array, and no steps were given",
                    command.kind
                )))
            }
        }
    };
    let rollback = match exec.plan.get("rollback").map(|r| r.get("steps")) {
        // Ad-hoc steps replace the plan's, and the plan's rollback undoes the plan's steps.
        _ if exec.steps.is_some() && !rollback_only => Vec::new(),
        None | Some(None) | Some(Some(Value::Null)) => Vec::new(),
        Some(Some(Value::Array(steps))) => steps.clone(),
        Some(Some(_)) => {
            return Err(WorkerError::Poison(format!(
                "{}: plan.rollback.steps is not an array",
                command.kind
            )))
        }
    };
    Ok(Request {
        exec,
        rollback_only,
        steps,
        rollback,
    })
}

/// Where step output is shipped (a log store such as Loki), so the step result can point at
/// it: the locator of what was stored, or `None` when it was not.
#[async_trait]
pub trait OutputStore: Send + Sync {
    async fn store(&self, case_id: &str, attempt: &StepAttempt) -> Option<Value>;
}

/// Publishes each attempt as `evt.exec.step_result.v1`, id part `<phase>/<step>/<attempt>`.
struct PublishAttempts<'a> {
    command: &'a Envelope,
    out: &'a dyn Publisher,
    source: &'a str,
    outputs: Option<&'a dyn OutputStore>,
}

#[async_trait]
impl AttemptSink for PublishAttempts<'_> {
    async fn attempt(&self, mut attempt: StepAttempt) {
        if let (Some(outputs), Some(_)) = (self.outputs, &attempt.output) {
            attempt.output_ref = outputs.store(&self.command.subject, &attempt).await;
        }
        let part = format!("{}/{}/{}", attempt.phase, attempt.step, attempt.attempt);
        let data = serde_json::to_value(&attempt).expect("a step attempt serializes");
        let envelope = answer(self.command, self.source, topic::STEP_RESULT, &part, data);
        publish(self.out, &envelope).await;
    }
}

/// Publish with a few retries; false when it finally failed (logged).
async fn publish(out: &dyn Publisher, envelope: &Envelope) -> bool {
    let mut wait = PUBLISH_BACKOFF;
    for attempt in 1..=PUBLISH_ATTEMPTS {
        match out.publish(envelope.clone()).await {
            Ok(()) => return true,
            Err(e) if attempt < PUBLISH_ATTEMPTS => {
                tracing::warn!(
                    event_id = %envelope.id, kind = %envelope.kind, case_id = %envelope.subject,
                    attempt, error = %e, "publishing an executor event failed; trying again"
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                tracing::error!(
                    event_id = %envelope.id, kind = %envelope.kind, case_id = %envelope.subject,
                    attempts = PUBLISH_ATTEMPTS, error = %e,
                    "publishing an executor event failed; giving up"
                );
            }
        }
    }
    false
}

#[async_trait]
impl Worker for Executor {
    fn role(&self) -> &'static str {
        "executor"
    }

    fn commands(&self) -> &'static [&'static str] {
        &[topic::EXEC_RUN, topic::EXEC_ROLLBACK]
    }

    fn detached(&self) -> bool {
        true
    }

    async fn handle(&self, command: &Envelope, out: &dyn Publisher) -> Result<(), WorkerError> {
        let request = parse(command)?;
        let key = command.id.to_string();
        let claim = self
            .claims
            .claim(&key, &self.holder)
            .await
            .map_err(|e| WorkerError::Retry(format!("claiming command {key}: {e}")))?;
        match claim {
            Claim::Claimed => {}
            Claim::Running { holder } => {
                tracing::warn!(
                    command_id = %command.id, kind = %command.kind, case_id = %command.subject,
                    %holder,
                    "the command was claimed earlier and has not finished; it is not run again"
                );
                // At most once: say so on the case rather than leave it waiting for an answer
                // that may never come (the holder may have died mid-step).
                if !request.rollback_only && !request.exec.dry_run {
                    let event = ExecEvent {
                        actor: ACTOR.into(),
                        plan_id: request.exec.plan_id.clone(),
                        results: Vec::new(),
                        reason: Some(format!(
                            "command {} was claimed by {holder} and has not finished; it is not \
                             run a second time: check what {holder} did before resuming the case",
                            command.id
                        )),
                        rollback: Vec::new(),
                    };
                    let data = serde_json::to_value(&event).expect("an exec event serializes");
                    let envelope = answer(
                        command,
                        &self.source,
                        topic::EXEC_FAILED,
                        "unfinished-claim",
                        data,
                    );
                    if !publish(out, &envelope).await {
                        return Err(WorkerError::Retry(
                            "could not report the unfinished claim".into(),
                        ));
                    }
                }
                return Ok(());
            }
            Claim::Finished(outcome) => {
                tracing::info!(
                    command_id = %command.id, kind = %command.kind, case_id = %command.subject,
                    "the command ran before; publishing its final events again"
                );
                for item in outcome.as_array().map(Vec::as_slice).unwrap_or_default() {
                    match serde_json::from_value::<Envelope>(item.clone()) {
                        Ok(envelope) => {
                            publish(out, &envelope).await;
                        }
                        Err(e) => tracing::error!(
                            command_id = %command.id, error = %e,
                            "a recorded outcome is not an event envelope; skipped"
                        ),
                    }
                }
                return Ok(());
            }
        }

        tracing::info!(
            command_id = %command.id, kind = %command.kind, case_id = %command.subject,
            plan_id = %request.exec.plan_id, dry_run = request.exec.dry_run,
            steps = request.steps.len(), rollback_steps = request.rollback.len(),
            "running"
        );
        let job = Job {
            case: request.exec.case.clone(),
            plan_id: request.exec.plan_id.clone(),
        };
        let sink = PublishAttempts {
            command,
            out,
            source: &self.source,
            outputs: self.outputs.as_deref(),
        };
        let mut finals = Vec::new();
        if request.exec.dry_run {
            self.runner
                .dry_run(&job, &request.steps, &request.rollback, &sink)
                .await;
        } else if request.rollback_only {
            let summary = self
                .runner
                .run_rollback(&job, &request.rollback, &sink)
                .await;
            tracing::info!(
                command_id = %command.id, case_id = %command.subject,
                succeeded = summary.succeeded, reason = summary.reason.as_deref().unwrap_or(""),
                "rollback finished"
            );
        } else {
            let summary = self
                .runner
                .run(&job, &request.steps, &request.rollback, &sink)
                .await;
            let kind = if summary.succeeded {
                topic::EXEC_DONE
            } else {
                topic::EXEC_FAILED
            };
            tracing::info!(
                command_id = %command.id, case_id = %command.subject,
                succeeded = summary.succeeded, reason = summary.reason.as_deref().unwrap_or(""),
                "run finished"
            );
            let event = ExecEvent {
                actor: ACTOR.into(),
                plan_id: request.exec.plan_id.clone(),
                results: summary.results,
                reason: summary.reason,
                rollback: summary.rollback,
            };
            let data = serde_json::to_value(&event).expect("an exec event serializes");
            finals.push(answer(command, &self.source, kind, "", data));
        }

        for envelope in &finals {
            publish(out, envelope).await;
        }
        let outcome = Value::Array(
            finals
                .iter()
                .map(|e| serde_json::to_value(e).expect("an envelope serializes"))
                .collect(),
        );
        let mut wait = PUBLISH_BACKOFF;
        for attempt in 1..=PUBLISH_ATTEMPTS {
            match self.claims.finish(&key, &outcome).await {
                Ok(()) => break,
                Err(e) if attempt < PUBLISH_ATTEMPTS => {
                    tracing::warn!(command_id = %command.id, attempt, error = %e,
                        "recording the command's outcome failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => tracing::error!(command_id = %command.id, error = %e,
                    "recording the command's outcome failed; a redelivery will find it running"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    fn envelope(kind: &str, data: Value) -> Envelope {
        Envelope::new(Uuid::now_v7(), "test", kind, "case-1", Utc::now(), data)
    }

    #[test]
    fn parse_takes_ad_hoc_steps_over_the_plan() {
        let plan = json!({"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}],
                          "rollback": {"steps": []}});
        let data = json!({"case": {"id": "c", "tenant": "t", "title": "x", "severity": "low",
                                    "version": 1},
                          "plan_id": "p", "plan": plan,
                          "steps": [{"action": "noop", "timeout_s": 10, "retry": 1},
                                    {"action": "noop", "timeout_s": 10, "retry": 1}]});
        let request = parse(&envelope(topic::EXEC_RUN, data.clone())).unwrap();
        assert_eq!(request.steps.len(), 2);
        let request = parse(&envelope(topic::EXEC_ROLLBACK, data)).unwrap();
        assert!(request.rollback_only && request.steps.is_empty());
    }

    #[test]
    fn parse_names_what_is_wrong() {
        let err = parse(&envelope(topic::EXEC_RUN, json!({"plan_id": "p"}))).unwrap_err();
        assert!(
            matches!(&err, WorkerError::Poison(m) if m.contains("case")),
            "{err}"
        );
        let err = parse(&envelope("cmd.verify.run", json!({}))).unwrap_err();
        assert!(matches!(&err, WorkerError::Poison(m) if m.contains("cmd.verify.run")));
        let data = json!({"case": {"id": "c", "tenant": "t", "title": "x", "severity": "low",
                                    "version": 1}, "plan_id": "p", "plan": {}});
        let err = parse(&envelope(topic::EXEC_RUN, data)).unwrap_err();
        assert!(
            matches!(&err, WorkerError::Poison(m) if m.contains("plan.steps")),
            "{err}"
        );
    }
}
