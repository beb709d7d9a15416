//! The runner and the executor worker against real processes (the fixture scripts in
//! `tests/scripts/`). Claims and the publisher are in-memory stand-ins: the real ones (the
//! database, JetStream) are tested with the bus and the orchestrator.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus::{Claim, Claims, Envelope, Publisher, Worker, WorkerError};
use chrono::Utc;
use executor::adapters::{Noop, ScriptConfig, ScriptExec};
use executor::{Adapters, Executor, Job, RunSummary, Runner};
use serde_json::{json, Value};
use uuid::Uuid;
use workflow::messages::{topic, CaseBrief, ExecCommand, ExecEvent, StepAttempt};
use workflow::StepStatus;

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts")
}

fn runner() -> Runner {
    let adapters = Adapters::new().with(Arc::new(Noop), &[]).with(
        Arc::new(ScriptExec::new(ScriptConfig::new(scripts_dir()))),
        &[],
    );
    Runner::new(adapters).with_backoff(Duration::from_millis(10))
}

fn case() -> CaseBrief {
    CaseBrief {
        id: "case-1".into(),
        tenant: "shop".into(),
        title: "checkout is slow".into(),
        severity: "high".into(),
        version: 3,
        ..CaseBrief::default()
    }
}

fn job() -> Job {
    Job {
        case: case(),
        plan_id: "plan-1".into(),
    }
}

fn script(id: &str, name: &str, args: &[&str], retry: u32) -> Value {
    json!({"id": id, "action": "script.exec", "params": {"script": name, "args": args},
           "timeout_s": 10, "retry": retry})
}

fn noop(id: &str) -> Value {
    json!({"id": id, "action": "noop", "params": {"message": format!("{id} done")},
           "timeout_s": 10, "retry": 0})
}

fn path(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_str().unwrap().to_owned()
}

fn lines(file: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// (phase, step, attempt, status) of each reported attempt.
fn seen(attempts: &Mutex<Vec<StepAttempt>>) -> Vec<(String, String, u32, String)> {
    attempts
        .lock()
        .unwrap()
        .iter()
        .map(|a| (a.phase.clone(), a.step.clone(), a.attempt, a.status.clone()))
        .collect()
}

fn row(phase: &str, step: &str, attempt: u32, status: &str) -> (String, String, u32, String) {
    (phase.into(), step.into(), attempt, status.into())
}

fn statuses(results: &[workflow::StepResult]) -> Vec<(String, StepStatus)> {
    results.iter().map(|r| (r.step.clone(), r.status)).collect()
}

#[tokio::test]
async fn retries_report_every_attempt_and_finally_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let counter = path(&dir, "counter");
    let sink = Mutex::new(Vec::new());
    let steps = [script("flaky", "fail_until.sh", &[&counter, "3"], 3)];
    let summary = runner().run(&job(), &steps, &[], &sink).await;

    assert!(summary.succeeded, "{summary:?}");
    assert_eq!(summary.reason, None);
    assert_eq!(
        seen(&sink),
        vec![
            row("run", "flaky", 1, "failed"),
            row("run", "flaky", 2, "failed"),
            row("run", "flaky", 3, "succeeded"),
        ]
    );
    let attempts = sink.lock().unwrap();
    assert_eq!(attempts[0].error.as_deref(), Some("exit 1"));
    assert_eq!(
        attempts[0].output.as_deref(),
        Some("call 1 of 3: not yet\n")
    );
    assert_eq!(attempts[2].output.as_deref(), Some("call 3: ok\n"));
    assert!(attempts
        .iter()
        .all(|a| a.actor == "executor" && a.plan_id == "plan-1" && a.action == "script.exec"));
    assert_eq!(
        statuses(&summary.results),
        vec![("flaky".into(), StepStatus::Succeeded)]
    );
    assert_eq!(summary.results[0].detail.as_deref(), Some("exit 0"));
    assert!(summary.rollback.is_empty());
    assert_eq!(lines(&counter), vec!["3"]);
}

#[tokio::test]
async fn a_step_that_always_fails_runs_retry_plus_one_times_then_rollback_runs() {
    let dir = tempfile::tempdir().unwrap();
    let calls = path(&dir, "calls");
    let rollback_calls = path(&dir, "rollback-calls");
    let undone = path(&dir, "undone");
    let steps = [
        noop("prepare"),
        script("restart", "always_fail.sh", &[&calls], 2),
        script("never", "append_line.sh", &[&undone, "must not run"], 0),
    ];
    let rollback = [
        script("undo-1", "append_line.sh", &[&undone, "undo-1"], 0),
        script("undo-2", "always_fail.sh", &[&rollback_calls], 1),
        script("undo-3", "append_line.sh", &[&undone, "undo-3"], 0),
    ];
    let sink = Mutex::new(Vec::new());
    let summary = runner().run(&job(), &steps, &rollback, &sink).await;

    assert!(!summary.succeeded);
    assert_eq!(
        seen(&sink),
        vec![
            row("run", "prepare", 1, "succeeded"),
            row("run", "restart", 1, "failed"),
            row("run", "restart", 2, "failed"),
            row("run", "restart", 3, "failed"),
            row("rollback", "undo-1", 1, "succeeded"),
            row("rollback", "undo-2", 1, "failed"),
            row("rollback", "undo-2", 2, "failed"),
            row("rollback", "undo-3", 1, "succeeded"),
        ]
    );
    assert_eq!(lines(&calls).len(), 3, "retry 2 means 3 runs");
    assert_eq!(lines(&rollback_calls).len(), 2);
    assert_eq!(lines(&undone), vec!["undo-1", "undo-3"]);
    assert_eq!(
        statuses(&summary.results),
        vec![
            ("prepare".into(), StepStatus::Succeeded),
            ("restart".into(), StepStatus::Failed)
        ]
    );
    assert_eq!(summary.results[0].detail.as_deref(), Some("prepare done"));
    assert_eq!(summary.results[1].detail.as_deref(), Some("exit 3"));
    assert_eq!(
        statuses(&summary.rollback),
        vec![
            ("undo-1".into(), StepStatus::Succeeded),
            ("undo-2".into(), StepStatus::Failed),
            ("undo-3".into(), StepStatus::Succeeded)
        ]
    );
    let reason = summary.reason.unwrap();
    assert!(
        reason.contains("restart") && reason.contains("3 attempts") && reason.contains("exit 3"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried() {
    let sink = Mutex::new(Vec::new());
    let steps = [script("missing", "not-there.sh", &[], 3)];
    let summary = runner().run(&job(), &steps, &[], &sink).await;
    assert!(!summary.succeeded);
    assert_eq!(seen(&sink), vec![row("run", "missing", 1, "failed")]);
    let error = sink.lock().unwrap()[0].error.clone().unwrap();
    assert!(error.contains("not in the allowlist directory"), "{error}");
}

#[tokio::test]
async fn an_invalid_step_fails_once_and_names_the_field() {
    let cases = [
        (
            json!({"action": "script.exec", "params": {"script": "../x"}, "timeout_s": 10,
                   "retry": 3}),
            "params/script",
        ),
        (
            json!({"action": "noop", "params": {"bogus": 1}, "timeout_s": 10, "retry": 3}),
            "params",
        ),
        (json!({"action": "noop", "retry": 3}), "timeout_s"),
        (
            json!({"action": "noop", "timeout_s": 10, "retry": 9}),
            "retry",
        ),
        (
            json!({"action": "rm.rf", "timeout_s": 10, "retry": 3}),
            "not a known adapter",
        ),
        (
            json!({"action": "k8s.rollout", "timeout_s": 10, "retry": 3,
                   "params": {"namespace": "shop", "deployment": "web", "container": "web",
                              "image": "web:2"}}),
            "not enabled on this executor",
        ),
    ];
    for (step, expected) in cases {
        let sink = Mutex::new(Vec::new());
        let summary = runner()
            .run(&job(), std::slice::from_ref(&step), &[], &sink)
            .await;
        assert!(!summary.succeeded);
        assert_eq!(
            seen(&sink),
            vec![row("run", "step-1", 1, "failed")],
            "{step}"
        );
        let error = sink.lock().unwrap()[0].error.clone().unwrap();
        assert!(error.contains(expected), "{step}: {error}");
        assert_eq!(summary.results[0].status, StepStatus::Failed);
        assert!(summary.reason.unwrap().contains("step-1"));
    }
}

#[tokio::test]
async fn steps_without_an_id_are_numbered() {
    let sink = Mutex::new(Vec::new());
    let steps = [
        json!({"action": "noop", "timeout_s": 10, "retry": 0}),
        json!({"action": "noop", "timeout_s": 10, "retry": 0}),
    ];
    let summary = runner().run(&job(), &steps, &[], &sink).await;
    assert!(summary.succeeded);
    assert_eq!(
        seen(&sink),
        vec![
            row("run", "step-1", 1, "succeeded"),
            row("run", "step-2", 1, "succeeded")
        ]
    );
    assert_eq!(summary.results[0].detail.as_deref(), Some("nothing to do"));
}

#[tokio::test]
async fn output_and_errors_are_redacted() {
    let redacting =
        runner().with_redact(Arc::new(|text: &str| text.replace("s3cret", "[REDACTED]")));
    let sink = Mutex::new(Vec::new());
    let steps = [script("leak", "print_args.sh", &["token=s3cret"], 0)];
    let summary = redacting.run(&job(), &steps, &[], &sink).await;
    assert!(summary.succeeded);
    assert_eq!(
        sink.lock().unwrap()[0].output.as_deref(),
        Some("token=[REDACTED]\n")
    );
}

#[tokio::test]
async fn a_dry_run_describes_every_step_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = path(&dir, "created");
    let steps = [
        script("write", "append_line.sh", &[&file, "x"], 2),
        noop("quiet"),
    ];
    let rollback = [script("undo", "append_line.sh", &[&file, "undo"], 0)];
    let sink = Mutex::new(Vec::new());
    let summary: RunSummary = runner().dry_run(&job(), &steps, &rollback, &sink).await;

    assert!(summary.succeeded);
    assert!(!Path::new(&file).exists(), "a dry run ran a script");
    assert_eq!(
        seen(&sink),
        vec![
            row("run", "write", 1, "planned"),
            row("run", "quiet", 1, "planned"),
            row("rollback", "undo", 1, "planned"),
        ]
    );
    let attempts = sink.lock().unwrap();
    assert!(attempts.iter().all(|a| a.dry_run));
    assert_eq!(
        attempts[0].output.as_deref(),
        Some(format!("would run append_line.sh [{file:?},\"x\"]").as_str())
    );
    assert_eq!(
        statuses(&summary.results),
        vec![
            ("write".into(), StepStatus::Skipped),
            ("quiet".into(), StepStatus::Skipped)
        ]
    );
    assert_eq!(summary.rollback.len(), 1);
}

#[tokio::test]
async fn a_dry_run_reports_an_invalid_step() {
    let sink = Mutex::new(Vec::new());
    let steps = [noop("fine"), script("bad", "not-there.sh", &[], 0)];
    let summary = runner().dry_run(&job(), &steps, &[], &sink).await;
    assert!(!summary.succeeded);
    assert_eq!(
        seen(&sink),
        vec![
            row("run", "fine", 1, "planned"),
            row("run", "bad", 1, "failed")
        ]
    );
    assert!(summary
        .reason
        .unwrap()
        .contains("not in the allowlist directory"));
}

#[tokio::test]
async fn run_rollback_runs_every_rollback_step() {
    let dir = tempfile::tempdir().unwrap();
    let undone = path(&dir, "undone");
    let rollback = [
        script("undo-1", "always_fail.sh", &[], 0),
        script("undo-2", "append_line.sh", &[&undone, "undo-2"], 0),
    ];
    let sink = Mutex::new(Vec::new());
    let summary = runner().run_rollback(&job(), &rollback, &sink).await;
    assert!(!summary.succeeded);
    assert!(summary.results.is_empty());
    assert_eq!(
        seen(&sink),
        vec![
            row("rollback", "undo-1", 1, "failed"),
            row("rollback", "undo-2", 1, "succeeded")
        ]
    );
    assert_eq!(lines(&undone), vec!["undo-2"]);
}

// ---- the worker ----

/// Claims kept in memory, with the same answers as the durable ones.
#[derive(Default)]
struct MemoryClaims {
    claims: Mutex<HashMap<String, Claim>>,
}

#[async_trait]
impl Claims for MemoryClaims {
    async fn claim(&self, key: &str, holder: &str) -> Result<Claim, bus::BusError> {
        let mut claims = self.claims.lock().unwrap();
        match claims.get(key) {
            Some(existing) => Ok(existing.clone()),
            None => {
                claims.insert(
                    key.to_owned(),
                    Claim::Running {
                        holder: holder.to_owned(),
                    },
                );
                Ok(Claim::Claimed)
            }
        }
    }

    async fn finish(&self, key: &str, outcome: &Value) -> Result<(), bus::BusError> {
        self.claims
            .lock()
            .unwrap()
            .insert(key.to_owned(), Claim::Finished(outcome.clone()));
        Ok(())
    }
}

/// Collects what is published.
#[derive(Default)]
struct VecPublisher {
    published: Mutex<Vec<Envelope>>,
}

#[async_trait]
impl Publisher for VecPublisher {
    async fn publish(&self, envelope: Envelope) -> Result<(), bus::BusError> {
        self.published.lock().unwrap().push(envelope);
        Ok(())
    }
}

impl VecPublisher {
    fn take(&self) -> Vec<Envelope> {
        std::mem::take(&mut self.published.lock().unwrap())
    }
}

fn executor() -> (Executor, Arc<MemoryClaims>) {
    let claims = Arc::new(MemoryClaims::default());
    let executor = Executor::new(runner(), claims.clone(), "opscase/executor");
    (executor, claims)
}

fn command(kind: &str, exec: &ExecCommand) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        "opscase/orchestrator",
        kind,
        "case-1",
        Utc::now(),
        serde_json::to_value(exec).unwrap(),
    )
    .with_traceparent(Some(
        "00-4bf92f3577b34da6a3ce929b0e0e4736-00f067aa0ba902b7-01".into(),
    ))
}

fn exec(steps: Vec<Value>, rollback: Vec<Value>) -> ExecCommand {
    ExecCommand {
        case: case(),
        plan_id: "plan-1".into(),
        plan: json!({"title": "restart", "steps": steps, "rollback": {"steps": rollback},
                     "verify": {}}),
        ..ExecCommand::default()
    }
}

fn kinds(events: &[Envelope]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

#[test]
fn the_worker_takes_exec_commands_detached() {
    let (executor, _) = executor();
    assert_eq!(executor.role(), "executor");
    assert_eq!(executor.commands(), ["cmd.exec.run", "cmd.exec.rollback"]);
    assert!(executor.detached());
}

#[tokio::test]
async fn a_redelivered_run_does_not_run_its_steps_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = path(&dir, "ran");
    let (executor, claims) = executor();
    let out = VecPublisher::default();
    let cmd = command(
        topic::EXEC_RUN,
        &exec(
            vec![script("append", "append_line.sh", &[&file, "once"], 0)],
            vec![],
        ),
    );

    executor.handle(&cmd, &out).await.unwrap();
    let first = out.take();
    assert_eq!(kinds(&first), vec![topic::STEP_RESULT, topic::EXEC_DONE]);
    assert!(first
        .iter()
        .all(|e| e.subject == "case-1" && e.traceparent == cmd.traceparent));
    assert!(first.iter().all(|e| e.source == "opscase/executor"));
    let attempt: StepAttempt = serde_json::from_value(first[0].data.clone()).unwrap();
    assert_eq!(
        (
            attempt.phase.as_str(),
            attempt.step.as_str(),
            attempt.status.as_str()
        ),
        ("run", "append", "succeeded")
    );
    assert_eq!(
        first[0].id,
        bus::answer_id(&cmd, topic::STEP_RESULT, "run/append/1")
    );
    let done: ExecEvent = serde_json::from_value(first[1].data.clone()).unwrap();
    assert_eq!(done.actor, "executor");
    assert_eq!(done.plan_id, "plan-1");
    assert_eq!(done.results.len(), 1);
    assert_eq!(done.results[0].status, StepStatus::Succeeded);

    // Delivered again: nothing runs, the final event goes out again under the same id.
    executor.handle(&cmd, &out).await.unwrap();
    let second = out.take();
    assert_eq!(second, vec![first[1].clone()]);
    assert_eq!(lines(&file), vec!["once"]);
    assert!(matches!(
        claims.claims.lock().unwrap().get(&cmd.id.to_string()),
        Some(Claim::Finished(Value::Array(events))) if events.len() == 1
    ));
}

#[tokio::test]
async fn a_command_claimed_by_someone_else_is_not_run_and_is_reported_failed() {
    let dir = tempfile::tempdir().unwrap();
    let file = path(&dir, "ran");
    let (executor, claims) = executor();
    let out = VecPublisher::default();
    let cmd = command(
        topic::EXEC_RUN,
        &exec(
            vec![script("append", "append_line.sh", &[&file, "x"], 0)],
            vec![],
        ),
    );
    claims.claims.lock().unwrap().insert(
        cmd.id.to_string(),
        Claim::Running {
            holder: "executor@elsewhere/1".into(),
        },
    );
    executor.handle(&cmd, &out).await.unwrap();
    let published = out.take();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].kind, topic::EXEC_FAILED);
    let reason = published[0].data["reason"].as_str().unwrap();
    assert!(reason.contains("executor@elsewhere/1"), "{reason}");
    assert!(!Path::new(&file).exists());
}

#[tokio::test]
async fn malformed_data_is_poison_and_claims_nothing() {
    let (executor, claims) = executor();
    let out = VecPublisher::default();
    let mut cmd = command(topic::EXEC_RUN, &exec(vec![noop("a")], vec![]));
    cmd.data = json!({"case": {"id": "case-1"}, "plan_id": 7});
    let error = executor.handle(&cmd, &out).await.unwrap_err();
    assert!(
        matches!(&error, WorkerError::Poison(message) if message.contains("case")),
        "{error}"
    );
    cmd.data = json!("not an object");
    assert!(matches!(
        executor.handle(&cmd, &out).await,
        Err(WorkerError::Poison(_))
    ));
    assert!(out.take().is_empty());
    assert!(claims.claims.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_run_publishes_the_failure_with_its_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let undone = path(&dir, "undone");
    let (executor, _) = executor();
    let out = VecPublisher::default();
    let cmd = command(
        topic::EXEC_RUN,
        &exec(
            vec![script("restart", "always_fail.sh", &[], 1)],
            vec![script("undo", "append_line.sh", &[&undone, "undo"], 0)],
        ),
    );
    executor.handle(&cmd, &out).await.unwrap();
    let events = out.take();
    assert_eq!(
        kinds(&events),
        vec![
            topic::STEP_RESULT,
            topic::STEP_RESULT,
            topic::STEP_RESULT,
            topic::EXEC_FAILED
        ]
    );
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
    let failed: ExecEvent = serde_json::from_value(events[3].data.clone()).unwrap();
    let reason = failed.reason.unwrap();
    assert!(
        reason.contains("restart") && reason.contains("exit 3"),
        "{reason}"
    );
    assert_eq!(failed.results.len(), 1);
    assert_eq!(failed.results[0].status, StepStatus::Failed);
    assert_eq!(failed.rollback.len(), 1);
    assert_eq!(failed.rollback[0].status, StepStatus::Succeeded);
    assert_eq!(lines(&undone), vec!["undo"]);
}

#[tokio::test]
async fn a_rollback_command_runs_only_the_rollback_steps() {
    let dir = tempfile::tempdir().unwrap();
    let file = path(&dir, "ran");
    let (executor, claims) = executor();
    let out = VecPublisher::default();
    let mut request = exec(
        vec![script("forward", "append_line.sh", &[&file, "forward"], 0)],
        vec![script("undo", "append_line.sh", &[&file, "undo"], 0)],
    );
    request.reason = Some("verification failed".into());
    let cmd = command(topic::EXEC_ROLLBACK, &request);
    executor.handle(&cmd, &out).await.unwrap();
    let events = out.take();
    assert_eq!(kinds(&events), vec![topic::STEP_RESULT]);
    let attempt: StepAttempt = serde_json::from_value(events[0].data.clone()).unwrap();
    assert_eq!(
        (attempt.phase.as_str(), attempt.step.as_str()),
        ("rollback", "undo")
    );
    assert_eq!(lines(&file), vec!["undo"]);
    assert_eq!(
        claims.claims.lock().unwrap().get(&cmd.id.to_string()),
        Some(&Claim::Finished(json!([])))
    );
}

#[tokio::test]
async fn a_dry_run_command_publishes_only_planned_results() {
    let dir = tempfile::tempdir().unwrap();
    let file = path(&dir, "ran");
    let (executor, _) = executor();
    let out = VecPublisher::default();
    let mut request = exec(
        vec![script("write", "append_line.sh", &[&file, "x"], 0)],
        vec![],
    );
    request.dry_run = true;
    executor
        .handle(&command(topic::EXEC_RUN, &request), &out)
        .await
        .unwrap();
    let events = out.take();
    assert_eq!(kinds(&events), vec![topic::STEP_RESULT]);
    let attempt: StepAttempt = serde_json::from_value(events[0].data.clone()).unwrap();
    assert_eq!(attempt.status, "planned");
    assert!(attempt.dry_run);
    assert!(!Path::new(&file).exists());
}

#[tokio::test]
async fn ad_hoc_steps_replace_the_plans_steps() {
    let dir = tempfile::tempdir().unwrap();
    let file = path(&dir, "ran");
    let (executor, _) = executor();
    let out = VecPublisher::default();
    let mut request = exec(
        vec![script("planned", "append_line.sh", &[&file, "planned"], 0)],
        vec![],
    );
    request.steps = Some(vec![script(
        "ad-hoc",
        "append_line.sh",
        &[&file, "ad-hoc"],
        0,
    )]);
    executor
        .handle(&command(topic::EXEC_RUN, &request), &out)
        .await
        .unwrap();
    assert_eq!(lines(&file), vec!["ad-hoc"]);
    assert_eq!(
        kinds(&out.take()),
        vec![topic::STEP_RESULT, topic::EXEC_DONE]
    );
}
