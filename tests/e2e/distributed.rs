//! Distributed mode: PostgreSQL + NATS JetStream. An `automation: auto` case closes with the
//! workers in-process and with the workers in a process of their own (`opscase serve
//! --no-workers` + `opscase worker --role all`); a redelivered `cmd.exec.run` runs its steps
//! once, whether the claims live in JetStream or in the database.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus::{
    BusError, Claim, Claims, Envelope, JetStreamSettings, JetStreamTransport, Publisher,
    StreamClaims, TransportPublisher, Worker, STREAM_COMMANDS, STREAM_EVENTS,
};
use chrono::{DurationRound, Utc};
use executor::adapters::{Noop, ScriptConfig, ScriptExec};
use executor::{Adapters, Executor, Runner};
use futures::TryStreamExt;
use orchestrator::embedded::{OutboxPublisher, StoreClaims};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;
use workflow::messages::{topic, CaseBrief, ExecCommand, ExecEvent};
use workflow::StepStatus;

use crate::helpers::{client_with, eventually, Backend, TestApp, TestDatabase, ADMIN_KEY};
use crate::nats::TestNats;

/// What the timeline of an auto `noop.check` case holds once it is CLOSED, in order.
const AUTO_TIMELINE: [&str; 8] = [
    "open",
    "start_analysis",
    "analysis_done",
    "plan_ready",
    "gate_approved",
    "step_result",
    "exec_done",
    "verify_pass",
];

/// The rows the workers' events write: each exactly once, however often a message arrived.
const WORKER_ROWS: [&str; 5] = [
    "plan_ready",
    "gate_approved",
    "step_result",
    "exec_done",
    "verify_pass",
];

/// The five commands an auto case sends on its way to CLOSED.
const AUTO_COMMANDS: u64 = 5;

// ---------------------------------------------------------------------------------------------
// Driving an auto case over HTTP (shared by the in-process and the multi-process test).

/// Healthy 1-minute error rates of checkout in tenant t-001, over the last five minutes.
pub(crate) async fn ingest_healthy_metrics(client: &Client, base: &str) {
    let now = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let points: Vec<Value> = (0..=5)
        .map(|ago| {
            json!({"tenant": "t-001", "resource": "checkout", "metric": "err_rate",
                   "bucket": (now - chrono::Duration::minutes(ago)).to_rfc3339(),
                   "avg": 0.002})
        })
        .collect();
    let response = client
        .post(format!("{base}/v1/metrics/1m"))
        .json(&json!({ "points": points }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "metric ingest refused: {body}");
}

/// Open an auto `noop.check` case on checkout and make the two opening calls.
pub(crate) async fn open_and_start_auto_case(client: &Client, base: &str) -> Uuid {
    let response = client
        .post(format!("{base}/v1/cases"))
        .json(&json!({
            "title": "checkout error rate above 1%", "tenant": "t-001", "severity": "high",
            "automation": "auto",
            "labels": {"template": "noop.check", "service": "checkout"}
        }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let case: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    // The analyst answers `cmd.analysis.run` with `analysis_done`; only the start is ours.
    for event in ["start_analysis"] {
        let response = client
            .patch(format!("{base}/v1/cases/{case}/transition"))
            .header("Idempotency-Key", format!("{case}-{event}"))
            .json(&json!({"event": event, "actor": "oncall@svc"}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "{event} was refused: {body:#}");
    }
    case
}

pub(crate) async fn case_json(client: &Client, base: &str, case: Uuid) -> Value {
    let response = client
        .get(format!("{base}/v1/cases/{case}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn timeline_events(client: &Client, base: &str, case: Uuid) -> Vec<String> {
    let body: Value = client
        .get(format!("{base}/v1/cases/{case}/timeline?limit=200"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline items in {body:#}"))
        .iter()
        .map(|row| row["event"].as_str().unwrap().to_string())
        .collect()
}

/// Wait for CLOSED (failing early, with the timeline, if the case parks), then check the
/// timeline: the auto path in order, each worker row once.
pub(crate) async fn expect_closed_with_the_auto_timeline(client: &Client, base: &str, case: Uuid) {
    eventually(&format!("case {case} reaching CLOSED"), 60, async || {
        let status = case_json(client, base, case).await["status"].clone();
        if status == "PARKED" {
            let events = timeline_events(client, base, case).await;
            panic!("case {case} was PARKED instead of CLOSED; timeline: {events:?}");
        }
        status == "CLOSED"
    })
    .await;
    let closed = case_json(client, base, case).await;
    assert_eq!(closed["status"], "CLOSED", "{closed:#}");
    let events = timeline_events(client, base, case).await;
    assert_eq!(events, AUTO_TIMELINE, "the timeline of the auto case");
    for row in WORKER_ROWS {
        assert_eq!(
            events.iter().filter(|e| *e == row).count(),
            1,
            "{row} appears exactly once in {events:?}"
        );
    }
}

/// `OPS_CMD` once every command was acked: nothing left in the work queue, and every command
/// the case sent stored exactly once.
async fn expect_commands_acked(nats_url: &str) {
    let client = async_nats::connect(nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    eventually("every command on OPS_CMD acked", 30, async || {
        let mut stream = jetstream.get_stream(STREAM_COMMANDS).await.unwrap();
        stream.info().await.unwrap().state.messages == 0
    })
    .await;
    let mut stream = jetstream.get_stream(STREAM_COMMANDS).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(state.messages, 0, "{state:?}");
    assert_eq!(
        state.last_sequence, AUTO_COMMANDS,
        "analysis, plan, gate, exec and verify commands, each stored once: {state:?}"
    );
}

/// The durable consumers on `OPS_CMD`, by name.
async fn command_consumers(nats_url: &str) -> Vec<String> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream.get_stream(STREAM_COMMANDS).await.unwrap();
    let mut names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// 1. In-process workers over JetStream.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_case_closes_over_jetstream_with_in_process_workers() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let Some(nats) = TestNats::start().await else {
        database.drop_database().await;
        return;
    };
    let mut config = database.config();
    config.bus.nats_url = Some(nats.url.clone());
    assert!(
        config.workers.in_process,
        "serve runs the workers by default"
    );
    let app = TestApp::start(config).await;

    ingest_healthy_metrics(&app.client, &app.base).await;
    let case = open_and_start_auto_case(&app.client, &app.base).await;
    expect_closed_with_the_auto_timeline(&app.client, &app.base, case).await;
    expect_commands_acked(&nats.url).await;

    drop(app);
    database.drop_database().await;
}

// ---------------------------------------------------------------------------------------------
// 2. `opscase serve --no-workers` and `opscase worker --role all` as separate processes.

/// A child `opscase` process; killed (SIGKILL) if the test ends while it still runs. Its
/// stdout and stderr go to files, printed when the test fails.
pub(crate) struct Process {
    name: &'static str,
    pub(crate) child: Child,
    log: PathBuf,
}

impl Process {
    /// `opscase <args>` with only the given `OPSCASE_*` variables (none inherited), in `dir`.
    pub(crate) fn spawn(
        name: &'static str,
        dir: &Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let mut command = opscase_command(dir);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Self { name, child, log }
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (up to `seconds`) for the exit.
    pub(crate) async fn terminate(&mut self, seconds: u64) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit within {seconds}s of SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- output of {} ----\n{}---- end of {} ----",
                self.name,
                self.output(),
                self.name
            );
        }
    }
}

/// The `opscase` binary in `dir` with no `OPSCASE_*` variable from the test's environment
/// (and no opscase.toml: `dir` is the test's own).
pub(crate) fn opscase_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_opscase"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OPSCASE_") {
            command.env_remove(&name);
        }
    }
    command.current_dir(dir);
    command
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_worker_processes_close_a_case() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let Some(nats) = TestNats::start().await else {
        database.drop_database().await;
        return;
    };
    let dir = database.dir.path();
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    // Both processes export their spans: the trace must cross JetStream both ways.
    let receiver = crate::otlp::Receiver::start(false).await;
    let shared = [
        ("OPSCASE_DATABASE_URL", database.url()),
        ("OPSCASE_NATS_URL", nats.url.clone()),
        ("OPSCASE_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY.to_string()),
        ("OPSCASE_DATA_DIR", dir.display().to_string()),
        ("OPSCASE_OTLP_ENDPOINT", receiver.endpoint()),
    ];
    let mut serve_env = shared.to_vec();
    serve_env.push(("OPSCASE_LISTEN", listen.clone()));
    serve_env.push(("OTEL_SERVICE_NAME", "opscase-serve".to_string()));
    let mut serve = Process::spawn("serve", dir, &["serve", "--no-workers"], &serve_env);
    let client = client_with(ADMIN_KEY);
    eventually("opscase serve answering /readyz", 60, async || {
        if let Ok(Some(status)) = serve.child.try_wait() {
            panic!("opscase serve exited early ({status})");
        }
        matches!(
            client.get(format!("{base}/readyz")).send().await,
            Ok(response) if response.status() == StatusCode::OK
        )
    })
    .await;
    assert_eq!(
        command_consumers(&nats.url).await,
        Vec::<String>::new(),
        "serve --no-workers consumes no command"
    );
    let mut worker_env = shared.to_vec();
    worker_env.push(("OTEL_SERVICE_NAME", "opscase-worker".to_string()));
    let mut worker = Process::spawn("worker", dir, &["worker", "--role", "all"], &worker_env);
    eventually("opscase worker running", 60, async || {
        if let Ok(Some(status)) = worker.child.try_wait() {
            panic!("opscase worker exited early ({status})");
        }
        worker.output().contains("opscase worker is running")
    })
    .await;
    assert_eq!(
        command_consumers(&nats.url).await,
        ["analyst", "executor", "gatekeeper", "planner", "verifier"],
        "the worker process consumes every command family"
    );

    ingest_healthy_metrics(&client, &base).await;
    let case = open_and_start_auto_case(&client, &base).await;
    expect_closed_with_the_auto_timeline(&client, &base, case).await;
    expect_commands_acked(&nats.url).await;
    expect_written_down_with_references(&client, &base, case).await;
    let timeline: Value = client
        .get(format!("{base}/v1/cases/{case}/timeline?limit=200"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let status = worker.terminate(30).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM stops the worker cleanly, got {status}; output:\n{}",
        worker.output()
    );
    let status = serve.terminate(30).await;
    assert!(
        status.success(),
        "SIGTERM stops serve cleanly, got {status}"
    );
    expect_one_trace_across_both_processes(&receiver, &timeline);
    database.drop_database().await;
}

/// The trace of `start_analysis` is one tree: the request and the relay in `serve`, each
/// command consumed in the worker process (a child of the relay's publish span, across
/// JetStream), each answer consumed back in `serve` (a child of the worker's span).
fn expect_one_trace_across_both_processes(receiver: &crate::otlp::Receiver, timeline: &Value) {
    let start = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["event"] == "start_analysis")
        .unwrap();
    let trace = start["meta"]["trace_id"].as_str().unwrap();
    let spans: Vec<crate::otlp::Seen> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace)
        .collect();
    let root = crate::otlp::one_tree(&spans, trace);
    assert_eq!(root.name, "PATCH /v1/cases/{id}/transition");
    assert_eq!(root.service, "opscase-serve");
    let by_id: std::collections::HashMap<&str, &crate::otlp::Seen> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for command in [
        "cmd.analysis.run",
        "cmd.plan.generate",
        "cmd.gate.eval",
        "cmd.exec.run",
        "cmd.verify.run",
    ] {
        let consumed = spans
            .iter()
            .find(|s| s.name == format!("consume {command}"))
            .unwrap_or_else(|| panic!("no consume span for {command}"));
        assert_eq!(consumed.service, "opscase-worker", "{command}");
        let parent = by_id[consumed.parent_span_id.as_str()];
        assert_eq!(parent.name, format!("publish {command}"));
        assert_eq!(parent.service, "opscase-serve");
    }
    let answer = spans
        .iter()
        .find(|s| s.name == "consume evt.exec.done.v1")
        .expect("the executor's answer consumed in serve");
    assert_eq!(answer.service, "opscase-serve");
    assert_eq!(
        by_id[answer.parent_span_id.as_str()].service,
        "opscase-worker"
    );
}

/// The planner in the worker process attached references to its plan, and the Librarian's
/// durable consumer of transitions (in `serve`) wrote the closed case down.
async fn expect_written_down_with_references(client: &Client, base: &str, case: Uuid) {
    let plans: Value = client
        .get(format!("{base}/v1/cases/{case}/plans"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let references = &plans["items"][0]["references"];
    assert!(
        references["runbooks"].is_array() && references["past_cases"].is_array(),
        "{plans:#}"
    );
    eventually(
        "the closed case's knowledge-base document",
        30,
        async || {
            let docs: Value = client
                .get(format!("{base}/v1/kb/docs?source=cases"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            docs["items"].as_array().is_some_and(|items| {
                items.iter().any(|doc| {
                    doc["metadata"]["case_id"] == case.to_string()
                        && doc["metadata"]["outcome"] == "resolved"
                })
            })
        },
    )
    .await;
}

#[tokio::test]
async fn a_worker_without_a_nats_url_refuses_to_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let output = opscase_command(dir.path())
        .args(["worker", "--role", "executor"])
        .env("OPSCASE_DATA_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("OPSCASE_NATS_URL"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 3. A duplicated `cmd.exec.run`: the steps run once, the final event is republished as is.

/// Passes each event on and remembers it, so a test can tell what each handling published.
struct Recording<P> {
    inner: P,
    published: Mutex<Vec<Envelope>>,
}

impl<P> Recording<P> {
    fn new(inner: P) -> Self {
        Self {
            inner,
            published: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<Envelope> {
        std::mem::take(&mut *self.published.lock().unwrap())
    }
}

#[async_trait]
impl<P: Publisher> Publisher for Recording<P> {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.inner.publish(envelope.clone()).await?;
        self.published.lock().unwrap().push(envelope);
        Ok(())
    }
}

/// An allowlist directory holding `append` (adds a line `x` to the file it is given).
fn allowlist() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("append");
    std::fs::write(&script, "#!/bin/sh\necho x >> \"$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn executor_with(scripts: &Path, claims: Arc<dyn Claims>) -> Executor {
    let scripts = std::fs::canonicalize(scripts).unwrap();
    let adapters = Adapters::new()
        .with(Arc::new(Noop), &[])
        .with(Arc::new(ScriptExec::new(ScriptConfig::new(scripts))), &[]);
    let runner = Runner::new(adapters).with_backoff(Duration::from_millis(10));
    Executor::new(runner, claims, executor::worker::DEFAULT_SOURCE)
}

/// A `cmd.exec.run` for `case` whose one step appends to `target`.
fn exec_command(case: Uuid, target: &Path) -> Envelope {
    let step = json!({"id": "append", "action": "script.exec",
                      "params": {"script": "append", "args": [target.to_str().unwrap()]},
                      // One retry only guards against a spawn race (ETXTBSY) on a busy host;
                      // a failed spawn appends nothing.
                      "timeout_s": 10, "retry": 1});
    let command = ExecCommand {
        case: CaseBrief {
            id: case.to_string(),
            tenant: "t-001".into(),
            title: "checkout error rate above 1%".into(),
            severity: "high".into(),
            version: 5,
            ..CaseBrief::default()
        },
        plan_id: Uuid::now_v7().to_string(),
        plan: json!({"title": "append a line", "risk_score": 0.1, "steps": [step],
                     "rollback": {"steps": []},
                     "verify": {"checks": [], "window_s": 300}}),
        ..ExecCommand::default()
    };
    Envelope::new(
        Uuid::now_v7(),
        "opscase/orchestrator",
        topic::EXEC_RUN,
        &case.to_string(),
        Utc::now(),
        serde_json::to_value(&command).unwrap(),
    )
}

/// What handling the same command twice came to.
struct Twice {
    case: Uuid,
    /// The one `evt.exec.done.v1` of the first handling.
    done: Envelope,
}

/// Handle one `cmd.exec.run` twice through the executor and check what the steps did and what
/// each handling published; the caller checks what reached the bus.
async fn handle_a_command_twice<P: Publisher>(
    claims: Arc<dyn Claims>,
    publisher: &Recording<P>,
) -> Twice {
    let scripts = allowlist();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("appended");
    let executor = executor_with(scripts.path(), claims.clone());
    let case = Uuid::now_v7();
    let command = exec_command(case, &target);

    executor
        .handle(&command, publisher)
        .await
        .expect("the first delivery is handled");
    let first = publisher.take();
    let kinds: Vec<&str> = first.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, [topic::STEP_RESULT, topic::EXEC_DONE], "{first:#?}");
    let done = first[1].clone();
    assert_eq!(done.subject, case.to_string());
    let event: ExecEvent = serde_json::from_value(done.data.clone()).unwrap();
    assert_eq!(event.results.len(), 1, "{event:?}");
    assert_eq!(event.results[0].step, "append");
    assert_eq!(event.results[0].status, StepStatus::Succeeded, "{event:?}");

    // The same envelope again, as a redelivery brings it (same message id).
    executor
        .handle(&command.clone(), publisher)
        .await
        .expect("the redelivery is handled");
    let second = publisher.take();
    let ids: Vec<(String, Uuid)> = second.iter().map(|e| (e.kind.clone(), e.id)).collect();
    assert_eq!(
        ids,
        [(topic::EXEC_DONE.to_string(), done.id)],
        "the redelivery republishes the recorded exec.done (same id) and nothing else"
    );
    assert_eq!(second[0].data, done.data, "the same event, not a new run");

    let text = std::fs::read_to_string(&target).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["x"],
        "the step ran exactly once"
    );
    assert!(
        matches!(
            claims
                .claim(&command.id.to_string(), "someone-else")
                .await
                .unwrap(),
            Claim::Finished(_)
        ),
        "the claim records the outcome"
    );
    Twice { case, done }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_exec_command_runs_its_steps_once_with_stream_claims() {
    let Some(nats) = TestNats::start().await else {
        return;
    };
    let transport = Arc::new(
        JetStreamTransport::connect(&nats.url, &JetStreamSettings::default())
            .await
            .unwrap(),
    );
    let claims: Arc<dyn Claims> = Arc::new(StreamClaims::open(&transport).await.unwrap());
    let publisher = Recording::new(TransportPublisher(transport.clone()));
    let twice = handle_a_command_twice(claims, &publisher).await;

    // Both publications of exec.done carried the same Nats-Msg-Id: OPS_EVT stored one.
    let mut stream = transport.context().get_stream(STREAM_EVENTS).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut stored = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await.unwrap();
        stored.push(Envelope::from_json(&message.payload).unwrap());
    }
    let done: Vec<&Envelope> = stored
        .iter()
        .filter(|e| e.kind == topic::EXEC_DONE && e.subject == twice.case.to_string())
        .collect();
    assert_eq!(done.len(), 1, "one exec.done in OPS_EVT: {stored:#?}");
    assert_eq!(done[0].id, twice.done.id);
    assert_eq!(
        stored.len(),
        2,
        "one step_result and one exec.done in all: {stored:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_exec_command_runs_its_steps_once_with_store_claims() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let mut config = database.config();
    // Nothing delivers the outbox: the rows stay where the test can count them.
    config.bus.relay_in_process = false;
    config.workers.in_process = false;
    let app = TestApp::start(config).await;
    let store = app.orchestrator.store().clone();
    let claims: Arc<dyn Claims> = Arc::new(StoreClaims(store.clone()));
    // Embedded mode's publisher: worker events go into the outbox, keyed by message id.
    let publisher = Recording::new(OutboxPublisher(app.orchestrator.clone()));
    let twice = handle_a_command_twice(claims, &publisher).await;

    let rows = store.outbox_for(&twice.case.to_string()).await.unwrap();
    let done: Vec<_> = rows
        .iter()
        .filter(|m| m.topic == topic::EXEC_DONE)
        .collect();
    assert_eq!(
        done.len(),
        1,
        "the republished exec.done is stored once: {rows:#?}"
    );
    assert_eq!(done[0].message_id, twice.done.id);
    assert_eq!(
        rows.len(),
        2,
        "one step_result and one exec.done: {rows:#?}"
    );
    drop(app);
}
