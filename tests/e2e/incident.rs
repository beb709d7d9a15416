//! The incident loop end to end on the embedded bus: the seed's curl demo, `automation: auto`
//! to CLOSED and to PARKED by each failure path, resume, four eyes, and commands refused
//! before anything is written. Real workers, real scripts, a real HTTP server for http.call.

use std::sync::{Arc, Mutex};

use axum::routing::put;
use axum::Json;
use chrono::{Duration, DurationRound, Utc};
use opscase::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, Backend, TestApp, TestDatabase};
use crate::on_both_backends;

/// Scripts the executor may run, and what the seed's case needs to make a canary plan.
pub(crate) fn incident(config: &mut Config) {
    config.executor.script_dir =
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/scripts").into());
    config.executor.retry_backoff_ms = 10;
    let canary = json!({"namespace": "shop", "deployment": "checkout"});
    config.planner.defaults.insert(
        "k8s.rollout.canary".into(),
        canary.as_object().unwrap().clone(),
    );
}

/// `incident`, with a gate policy written into the test's data dir.
fn with_policy(config: &mut Config, policy: &str) {
    incident(config);
    let path = config.database.data_dir.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    config.gatekeeper.policy_file = Some(path);
}

fn frozen(config: &mut Config) {
    let now = Utc::now();
    with_policy(
        config,
        &format!(
            "[[freeze]]\nname = \"release-freeze\"\nstart = \"{}\"\nend = \"{}\"\n",
            (now - Duration::hours(1)).to_rfc3339(),
            (now + Duration::hours(1)).to_rfc3339()
        ),
    );
}

fn human_rollouts(config: &mut Config) {
    with_policy(config, "human_actions = [\"k8s.rollout\"]\n");
}

impl TestApp {
    /// 1-minute points of `metric` for `resource` in tenant t-001 over the last five minutes.
    pub(crate) async fn ingest(&self, resource: &str, metric: &str, value: f64) {
        let now = Utc::now().duration_trunc(Duration::minutes(1)).unwrap();
        let points: Vec<Value> = (1..=5)
            .map(|ago| {
                json!({"tenant": "t-001", "resource": resource, "metric": metric,
                       "bucket": now - Duration::minutes(ago), "avg": value, "p95": value})
            })
            .collect();
        let response = self
            .client
            .post(self.url("/v1/metrics/1m"))
            .json(&json!({ "points": points }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// An `auto` case with these labels, carried into PLANNING by the two opening calls.
    pub(crate) async fn auto_case(&self, labels: Value) -> Uuid {
        let response = self
            .client
            .post(self.url("/v1/cases"))
            .json(&json!({"title": "checkout errors", "tenant": "t-001",
                          "automation": "auto", "labels": labels}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let case: Uuid = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // The analyst answers `cmd.analysis.run` with `analysis_done`.
        self.advance(
            case,
            json!({"event": "start_analysis", "actor": "oncall@svc"}),
        )
        .await;
        case
    }

    pub(crate) async fn settles_in(&self, case: Uuid, status: &str) {
        let wanted = json!(status);
        eventually(&format!("case {case} reaching {status}"), 30, async || {
            let now = self.case(case).await["status"].clone();
            now == wanted || now == "CLOSED" || now == "PARKED"
        })
        .await;
        assert_eq!(
            self.case(case).await["status"],
            wanted,
            "{:#}",
            json!(self.timeline(case).await)
        );
    }

    async fn command(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// The last timeline row of `event`.
    async fn last_row(&self, case: Uuid, event: &str) -> Value {
        self.timeline(case)
            .await
            .into_iter()
            .rev()
            .find(|row| row["event"] == event)
            .unwrap_or_else(|| panic!("no {event} row"))
    }
}

async fn the_seed_demo_closes_the_case(app: TestApp) {
    app.ingest("checkout", "p95_ms", 180.0).await;
    app.ingest("checkout", "err_rate", 0.001).await;
    let (status, created) = app
        .command(
            "/case/create",
            json!({"title": "p95 spike", "tenant": "t-001"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let case: Uuid = created["data"].as_str().unwrap().parse().unwrap();
    let started = app
        .client
        .patch(app.url(&format!("/case/{case}/transition")))
        .header("Idempotency-Key", "a1")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(r#"{"event":"start_analysis","actor":"analyst@svc"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::OK);

    let steps = [
        (
            "/plan/generate",
            json!({"case_id": case, "template": "k8s.rollout.canary"}),
            "WAIT_GATE",
        ),
        ("/gate/eval", json!({"case_id": case}), "EXECUTING"),
        (
            "/adapter/exec",
            json!({"case_id": case, "adapter": "script", "script": "echo ok"}),
            "VERIFYING",
        ),
        ("/verify/run", json!({"case_id": case}), "CLOSED"),
    ];
    for (path, body, reached) in steps {
        let (status, answer) = app.command(path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer:#}");
        assert_eq!(answer["status"], "applied", "{path}: {answer:#}");
        assert_eq!(answer["case"]["status"], reached, "{path}: {answer:#}");
    }
    assert_eq!(
        app.timeline_events(case).await,
        [
            "open",
            "start_analysis",
            "cmd.plan.generate",
            "analysis_done",
            "plan_ready",
            "cmd.gate.eval",
            "gate_approved",
            "cmd.exec.run",
            "step_result",
            "exec_done",
            "cmd.verify.run",
            "verify_pass",
        ]
    );
    // Each command's trace reaches the worker and comes back with its answer.
    for (command, answers) in [
        ("cmd.plan.generate", "plan_ready"),
        ("cmd.exec.run", "step_result"),
        ("cmd.exec.run", "exec_done"),
        ("cmd.verify.run", "verify_pass"),
    ] {
        let sent = app.last_row(case, command).await["meta"]["trace_id"].clone();
        assert!(sent.is_string());
        assert_eq!(
            app.last_row(case, answers).await["meta"]["trace_id"],
            sent,
            "{answers}"
        );
    }
    let step = app.last_row(case, "step_result").await;
    assert_eq!(step["meta"]["step"], "adhoc-1");
    assert_eq!(step["meta"]["status"], "succeeded");
    assert_eq!(step["meta"]["output"].as_str().unwrap().trim(), "ok");
    let verdict = app.last_row(case, "verify_pass").await;
    assert_eq!(verdict["meta"]["verdict"], "pass");
    assert_eq!(verdict["meta"]["checks"].as_array().unwrap().len(), 2);
    assert_eq!(app.case(case).await["resolution"], "resolved");
}
on_both_backends!(the_seed_demo_closes_the_case, super::incident);

async fn an_auto_case_closes_with_only_the_opening_calls(app: TestApp) {
    app.ingest("checkout", "err_rate", 0.002).await;
    let case = app
        .auto_case(json!({"template": "noop.check", "service": "checkout"}))
        .await;
    app.settles_in(case, "CLOSED").await;
    assert_eq!(
        app.timeline_events(case).await,
        [
            "open",
            "start_analysis",
            "analysis_done",
            "plan_ready",
            "gate_approved",
            "step_result",
            "exec_done",
            "verify_pass",
        ]
    );
    let decision = &app.get_json(&format!("/v1/cases/{case}/decisions")).await.1["items"][0];
    assert_eq!(decision["decision"], "approved");
    assert_eq!(decision["decided_by"], "gatekeeper");
    assert_eq!(decision["inputs"]["rule"], "auto_approve");
    assert_eq!(decision["policy_rev"].as_str().unwrap().len(), 16);
    // What the workers did, measured where their events are applied.
    for (series, expected) in [
        (
            r#"gate_decision_total{decision="approved",rule="auto_approve"}"#,
            1.0,
        ),
        (
            r#"adapter_step_latency_seconds_count{adapter="noop",status="succeeded"}"#,
            1.0,
        ),
        (
            r#"verify_latency_seconds_count{source="metric_1m",verdict="pass"}"#,
            1.0,
        ),
    ] {
        assert_eq!(app.metric(series).await, expected, "{series}");
    }
}
on_both_backends!(
    an_auto_case_closes_with_only_the_opening_calls,
    super::incident
);

async fn a_freeze_window_rejects_at_the_gate_and_parks(app: TestApp) {
    let case = app
        .auto_case(json!({"template": "noop.check", "service": "checkout"}))
        .await;
    app.settles_in(case, "PARKED").await;
    let rejected = app.last_row(case, "gate_rejected").await;
    assert_eq!(rejected["meta"]["rule"], "freeze:release-freeze");
    assert!(rejected["meta"]["inputs"]["active_freezes"]
        .as_array()
        .unwrap()
        .contains(&json!("release-freeze")));
    let decision = &app.get_json(&format!("/v1/cases/{case}/decisions")).await.1["items"][0];
    assert_eq!(decision["decision"], "rejected");
    assert_eq!(decision["inputs"]["rule"], "freeze:release-freeze");
    assert_eq!(
        app.metric(r#"gate_decision_total{decision="rejected",rule="freeze:release-freeze"}"#)
            .await,
        1.0
    );
}
on_both_backends!(a_freeze_window_rejects_at_the_gate_and_parks, super::frozen);

async fn a_threshold_breach_fails_verification_and_parks(app: TestApp) {
    app.ingest("checkout", "err_rate", 0.05).await;
    let case = app
        .auto_case(json!({"template": "noop.check", "service": "checkout"}))
        .await;
    app.settles_in(case, "PARKED").await;
    let failed = app.last_row(case, "verify_failed").await;
    assert_eq!(failed["meta"]["verdict"], "fail");
    let verifications = app
        .get_json(&format!("/v1/cases/{case}/verifications"))
        .await
        .1;
    assert_eq!(verifications["items"].as_array().unwrap().len(), 1);
    assert_eq!(verifications["items"][0]["id"], failed["id"]);
    let check = &failed["meta"]["checks"][0];
    assert_eq!(check["threshold"], "err_rate < 0.01");
    assert_eq!(check["measurements"][0]["value"], 0.05);
}
on_both_backends!(
    a_threshold_breach_fails_verification_and_parks,
    super::incident
);

async fn no_data_is_inconclusive_and_parks_then_resume_closes(app: TestApp) {
    let case = app
        .auto_case(json!({"template": "noop.check", "service": "cart"}))
        .await;
    app.settles_in(case, "PARKED").await;
    let failed = app.last_row(case, "verify_failed").await;
    assert_eq!(failed["meta"]["verdict"], "inconclusive");

    app.ingest("cart", "err_rate", 0.001).await;
    app.advance(
        case,
        json!({"event": "resume", "actor": "oncall@svc", "reason": "metrics pipeline fixed"}),
    )
    .await;
    app.settles_in(case, "CLOSED").await;
    let events = app.timeline_events(case).await;
    let resumed = events.iter().position(|e| e == "resume").unwrap();
    assert_eq!(
        events[resumed..],
        [
            "resume",
            "plan_ready",
            "gate_approved",
            "step_result",
            "exec_done",
            "verify_pass"
        ]
    );
}
on_both_backends!(
    no_data_is_inconclusive_and_parks_then_resume_closes,
    super::incident
);

async fn a_plan_that_cannot_be_made_parks_with_the_reason(app: TestApp) {
    let case = app
        .auto_case(json!({"template": "k8s.rollout.canary"}))
        .await;
    app.settles_in(case, "PARKED").await;
    let failed = app.last_row(case, "plan_failed").await;
    assert!(
        failed["reason"].as_str().unwrap().contains("deployment"),
        "{failed:#}"
    );
    assert!(
        app.get_json(&format!("/v1/cases/{case}/plans")).await.1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
// Without the canary defaults: nothing names a deployment.
on_both_backends!(
    a_plan_that_cannot_be_made_parks_with_the_reason,
    super::without_defaults
);

/// `POST /plan/generate` during analysis: the planner's failure finishes the analysis and
/// parks the case with the reason, as its plan would have finished it and gone to the gate.
async fn a_plan_that_cannot_be_made_during_analysis_parks_the_case(app: TestApp) {
    let case = app.case_in("ANALYZING").await;
    let (status, answer) = app
        .command(
            "/v1/plan/generate",
            json!({"case_id": case, "template": "k8s.rollout.canary"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer:#}");
    assert_eq!(answer["status"], "applied", "{answer:#}");
    assert_eq!(answer["case"]["status"], "PARKED", "{answer:#}");
    let events: Vec<(String, String)> = app
        .timeline(case)
        .await
        .iter()
        .map(|row| {
            (
                row["event"].as_str().unwrap().to_string(),
                row["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let tail = &events[events.len() - 2..];
    assert_eq!(
        tail,
        [
            ("analysis_done".to_string(), "applied".to_string()),
            ("plan_failed".to_string(), "applied".to_string())
        ],
        "{events:?}"
    );
    let failed = app.last_row(case, "plan_failed").await;
    assert!(
        failed["reason"].as_str().unwrap().contains("deployment"),
        "{failed:#}"
    );
}
on_both_backends!(
    a_plan_that_cannot_be_made_during_analysis_parks_the_case,
    super::without_defaults
);

fn without_defaults(config: &mut Config) {
    incident(config);
    config.planner.defaults.clear();
}

async fn the_requester_cannot_approve_their_own_plan(app: TestApp) {
    let case = app.open_case("t-001").await;
    app.advance(
        case,
        json!({"event": "start_analysis", "actor": "oncall@svc"}),
    )
    .await;
    let (status, proposed) = app
        .command(
            "/v1/plan/generate",
            json!({"case_id": case, "template": "k8s.rollout.canary"}),
        )
        .await;
    assert_eq!(
        (status, proposed["case"]["status"].clone()),
        (StatusCode::OK, json!("WAIT_GATE"))
    );
    let (status, held) = app.command("/v1/gate/eval", json!({"case_id": case})).await;
    assert_eq!(status, StatusCode::OK, "{held:#}");
    assert_eq!(held["status"], "answered");
    assert_eq!(held["answer"]["event"], "gate_held");
    assert_eq!(held["answer"]["meta"]["rule"], "human_actions");
    assert_eq!(held["case"]["status"], "WAIT_GATE");

    // The admin key asked for the plan: its own approval is refused.
    let own = app
        .client
        .patch(app.url(&format!("/v1/cases/{case}/transition")))
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&json!({"event": "gate_approved", "actor": "oncall@svc", "decision": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = own.json().await.unwrap();
    assert_eq!(problem["guard_failures"][0]["field"], "decision.approver");

    let approved = app
        .transition(
            case,
            json!({"event": "gate_approved", "actor": "lead@svc", "decision": {}}),
        )
        .await;
    assert_eq!(approved.status(), StatusCode::OK);
    let decisions = app.get_json(&format!("/v1/cases/{case}/decisions")).await.1;
    let decision = &decisions["items"][0];
    assert_eq!(decision["decision"], "approved");
    assert_eq!(decision["decided_by"], "lead@svc");
    assert!(decision["decided_by_key"]
        .as_str()
        .unwrap()
        .starts_with("key:"));
}
on_both_backends!(
    the_requester_cannot_approve_their_own_plan,
    super::human_rollouts
);

async fn commands_out_of_place_are_refused_before_anything_is_written(app: TestApp) {
    let case = app.open_case("t-001").await;
    let outbox = app.outbox(case).await.len();
    for path in [
        "/v1/gate/eval",
        "/v1/adapter/exec",
        "/v1/verify/run",
        "/v1/plan/generate",
    ] {
        let (status, problem) = app.command(path, json!({"case_id": case})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {problem:#}");
        assert_eq!(
            problem["type"],
            "urn:opscase:problem:command-not-applicable"
        );
        assert_eq!(problem["current_status"], "NEW");
    }
    assert_eq!(app.timeline_events(case).await, ["open"]);
    assert_eq!(app.outbox(case).await.len(), outbox);

    let (status, problem) = app
        .command(
            "/v1/plan/generate",
            json!({"case_id": case, "template": "rm.rf"}),
        )
        .await;
    assert_eq!(
        (status, problem["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("template"))
    );
    let (status, problem) = app
        .command("/v1/plan/generate", json!({"case_id": Uuid::now_v7()}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem:#}");
}
on_both_backends!(
    commands_out_of_place_are_refused_before_anything_is_written,
    super::incident
);

async fn ad_hoc_steps_run_only_when_the_policy_allows_them(app: TestApp) {
    let case = app.case_in("EXECUTING").await;
    let (status, problem) = app
        .command(
            "/adapter/exec",
            json!({"case_id": case, "adapter": "script", "script": "rm -rf /"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem:#}");
    assert_eq!(problem["type"], "urn:opscase:problem:policy-denied");
    assert_eq!(problem["rule"], "adhoc.allow_scripts");
    let (status, problem) = app
        .command(
            "/adapter/exec",
            json!({"case_id": case, "adapter": "script", "script": "../bin/echo hi"}),
        )
        .await;
    // The document allows any `script` text; the script.exec params schema refuses the path.
    assert_eq!(
        (status, problem["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("params.script"))
    );
    let before = app.timeline_events(case).await;

    // Allowed, with shell syntax that stays inert text.
    let (status, answer) = app
        .command(
            "/adapter/exec",
            json!({"case_id": case, "adapter": "script", "script": "echo $(id) ; rm -rf /"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer:#}");
    assert_eq!(answer["case"]["status"], "VERIFYING");
    let step = app.last_row(case, "step_result").await;
    assert_eq!(
        step["meta"]["output"].as_str().unwrap().trim(),
        "$(id) ; rm -rf /"
    );
    assert_eq!(app.timeline_events(case).await.len(), before.len() + 3);
}
on_both_backends!(
    ad_hoc_steps_run_only_when_the_policy_allows_them,
    super::incident
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_step_is_retried_then_rolled_back_and_the_case_parks() {
    // The gateway's admin API: switching to `secondary` fails, switching back works.
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = calls.clone();
    let gateway = axum::Router::new().route(
        "/routes/checkout",
        put(move |Json(body): Json<Value>| {
            let seen = seen.clone();
            async move {
                let upstream = body["upstream"].as_str().unwrap_or_default().to_string();
                seen.lock().unwrap().push(upstream.clone());
                if upstream == "secondary" {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, gateway).await });

    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let mut config = database.config();
    incident(&mut config);
    config.executor.http_targets.insert(
        "default".into(),
        executor::adapters::http::HttpTarget::new(format!("http://{address}")),
    );
    let app = TestApp::start(config).await;
    let case = app
        .auto_case(json!({"template": "gateway.flip", "service": "checkout"}))
        .await;
    app.settles_in(case, "PARKED").await;

    // retry 2: three tries forward, then the rollback's one.
    assert_eq!(
        *calls.lock().unwrap(),
        ["secondary", "secondary", "secondary", "primary"]
    );
    let attempts: Vec<(String, String, String)> = app
        .timeline(case)
        .await
        .iter()
        .filter(|row| row["event"] == "step_result")
        .map(|row| {
            let meta = &row["meta"];
            let text = |key: &str| meta[key].as_str().unwrap().to_string();
            (text("phase"), text("step"), text("status"))
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("run", "flip", "failed"),
        ("run", "flip", "failed"),
        ("run", "flip", "failed"),
        ("rollback", "flip-back", "succeeded"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(attempts, expected);
    let failed = app.last_row(case, "exec_failed").await;
    assert_eq!(failed["meta"]["rollback"][0]["status"], "succeeded");
    let executions = app
        .get_json(&format!("/v1/cases/{case}/executions"))
        .await
        .1;
    let events: Vec<&str> = executions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "step_result",
            "step_result",
            "step_result",
            "step_result",
            "exec_failed"
        ]
    );
    assert!(failed["reason"].as_str().unwrap().contains("flip"));
    database.drop_database().await;
}

async fn a_secret_in_a_scripts_output_never_reaches_the_timeline_or_answers(app: TestApp) {
    let case = app.case_in("EXECUTING").await;
    let secret = "Bearer abcdefghijklmnop1234";
    let (status, answer) = app
        .command(
            "/adapter/exec",
            json!({"case_id": case, "adapter": "script", "script": format!("echo {secret}")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer:#}");
    assert_eq!(answer["case"]["status"], "VERIFYING");
    let step = app.last_row(case, "step_result").await;
    let output = step["meta"]["output"].as_str().unwrap();
    assert_eq!(output.trim(), "***");
    for (what, text) in [
        ("the command's answer", answer.to_string()),
        ("the timeline", json!(app.timeline(case).await).to_string()),
        (
            "the executions",
            app.get_json(&format!("/v1/cases/{case}/executions"))
                .await
                .1
                .to_string(),
        ),
    ] {
        assert!(!text.contains("abcdefghijklmnop1234"), "{what}: {text}");
    }
}
on_both_backends!(
    a_secret_in_a_scripts_output_never_reaches_the_timeline_or_answers,
    super::incident
);

async fn a_dry_run_describes_the_plan_and_changes_nothing(app: TestApp) {
    let case = app.case_in("EXECUTING").await;
    let (status, answer) = app
        .command(
            "/v1/adapter/exec",
            json!({"case_id": case, "dry_run": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer:#}");
    assert_eq!(answer["status"], "accepted");
    // The plan's k8s.rollout step and its rollback, described; no API server is configured,
    // so the executor says the adapter is not enabled rather than pretending.
    eventually("the dry run's step results", 30, async || {
        app.timeline_events(case)
            .await
            .iter()
            .filter(|e| *e == "step_result")
            .count()
            == 2
    })
    .await;
    let rows: Vec<Value> = app
        .timeline(case)
        .await
        .into_iter()
        .filter(|row| row["event"] == "step_result")
        .collect();
    for row in &rows {
        assert_eq!(row["meta"]["dry_run"], true, "{row:#}");
        assert_eq!(row["meta"]["status"], "failed", "{row:#}");
        let error = row["meta"]["error"].as_str().unwrap();
        assert!(error.contains("not enabled"), "{error}");
    }
    assert_eq!(rows[0]["meta"]["phase"], "run");
    assert_eq!(rows[1]["meta"]["phase"], "rollback");

    // An ad-hoc step the executor can run is described as planned, and not run.
    let (status, _) = app
        .command(
            "/v1/adapter/exec",
            json!({"case_id": case, "adapter": "script", "script": "echo hi", "dry_run": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let planned = async || {
        app.timeline(case)
            .await
            .into_iter()
            .find(|row| row["event"] == "step_result" && row["meta"]["status"] == "planned")
    };
    eventually("the planned step", 30, async || planned().await.is_some()).await;
    let row = planned().await.unwrap();
    assert_eq!(row["meta"]["step"], "adhoc-1");
    assert_eq!(row["meta"]["output"], r#"would run echo ["hi"]"#, "{row:#}");
    assert_eq!(row["meta"]["source"], "opscase/executor");
    assert_eq!(app.case(case).await["status"], "EXECUTING");
}
on_both_backends!(
    a_dry_run_describes_the_plan_and_changes_nothing,
    super::incident
);

async fn prefer_respond_async_answers_at_once_and_the_work_goes_on(app: TestApp) {
    let case = app.open_case("t-001").await;
    app.advance(case, json!({"event": "start_analysis"})).await;
    let response = app
        .client
        .post(app.url("/v1/plan/generate"))
        .header("Prefer", "respond-async")
        .json(&json!({"case_id": case, "template": "k8s.rollout.canary"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "accepted");
    assert_eq!(accepted["topic"], "cmd.plan.generate");
    assert!(accepted["command_id"].is_string());
    app.settles_in(case, "WAIT_GATE").await;
    let requested = app.last_row(case, "cmd.plan.generate").await;
    assert_eq!(requested["meta"]["command_id"], accepted["command_id"]);
}
on_both_backends!(
    prefer_respond_async_answers_at_once_and_the_work_goes_on,
    super::incident
);

/// A command sent twice with one Idempotency-Key (a double click, a retry after a dropped
/// connection) is written once: the repeat gets the first command back, with its answer; the
/// key with another body is refused.
async fn a_repeated_command_is_written_once(app: TestApp) {
    let case = app.open_case("t-001").await;
    app.advance(
        case,
        json!({"event": "start_analysis", "actor": "oncall@svc"}),
    )
    .await;
    let send = |key: &'static str, body: Value| {
        let request = app
            .client
            .post(app.url("/v1/plan/generate"))
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let body = json!({"case_id": case, "template": "k8s.rollout.canary"});
    let first = send("plan-once", body.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["case"]["status"], "WAIT_GATE", "{first:#}");

    let again = send("plan-once", body.clone()).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["command_id"], first["command_id"]);
    assert_eq!(again["status"], "applied");
    assert_eq!(again["case"]["status"], "WAIT_GATE");
    let requested = app
        .timeline_events(case)
        .await
        .into_iter()
        .filter(|event| event == "cmd.plan.generate")
        .count();
    assert_eq!(requested, 1, "the command was written once");

    let other = send(
        "plan-once",
        json!({"case_id": case, "template": "noop.check"}),
    )
    .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
on_both_backends!(a_repeated_command_is_written_once, super::incident);
