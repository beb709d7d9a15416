//! kill -9 of the real `opscase serve` while a long-running worker has a command in hand, on the
//! embedded default (SQLite + embedded bus): after the restart the command is delivered again
//! and the case ends, never stranded. Mid-step, the executor's claim says the step may have run,
//! so the redelivery is reported as `exec_failed` (PARKED) and the step does not run twice;
//! mid-verification, the verification simply runs again and the case closes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DurationRound, Utc};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{client_with, eventually, Backend, TestDatabase, ADMIN_KEY};
use crate::restart::{kill_hard, serve_with, terminate, Served};

/// A restart script that records each start (its pid, one line per run) next to itself, then
/// takes a while: long enough to be killed in the middle.
const SLOW_RESTART: &str = "#!/bin/sh\necho $$ >> started\nsleep 20\necho restarted \"$1\"\n";

/// The scripts directory and a configuration for `script.restart` cases: the slow script, and a
/// verification of two evaluations ten seconds apart (the shortest the planner allows).
fn crash_setup(database: &TestDatabase) -> (PathBuf, PathBuf) {
    let scripts = database.dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let script = scripts.join("slow-restart");
    std::fs::write(&script, SLOW_RESTART).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = database.dir.path().join("opscase.toml");
    std::fs::write(
        &config,
        format!(
            "[executor]\nscript_dir = {:?}\n\n\
             [planner.defaults.\"script.restart\"]\nscript = \"slow-restart\"\n\
             count = 2\ninterval_s = 10\n",
            scripts.display().to_string()
        ),
    )
    .unwrap();
    (scripts, config)
}

pub async fn ingest_healthy_error_rates(client: &Client, base: &str) {
    let now = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let points: Vec<Value> = (0..=5)
        .map(|ago| {
            json!({"tenant": "t-001", "resource": "checkout", "metric": "err_rate",
                   "bucket": (now - chrono::Duration::minutes(ago)).to_rfc3339(), "avg": 0.002})
        })
        .collect();
    let response = client
        .post(format!("{base}/v1/metrics/1m"))
        .json(&json!({ "points": points }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// An `auto` case restarting checkout, carried into PLANNING: the workers take it from there.
async fn open_auto_case(client: &Client, base: &str) -> String {
    let created: Value = client
        .post(format!("{base}/v1/cases"))
        .json(
            &json!({"title": "checkout errors", "tenant": "t-001", "automation": "auto",
                      "labels": {"template": "script.restart", "service": "checkout"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let case = created["id"].as_str().expect("a case id").to_string();
    // The analyst answers `cmd.analysis.run` with `analysis_done`; only the start is ours.
    for event in ["start_analysis"] {
        let response = client
            .patch(format!("{base}/v1/cases/{case}/transition"))
            .header("Idempotency-Key", format!("{case}-{event}"))
            .json(&json!({"event": event, "actor": "oncall"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{event}");
    }
    case
}

async fn status_of(client: &Client, base: &str, case: &str) -> String {
    let case: Value = client
        .get(format!("{base}/v1/cases/{case}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    case["status"].as_str().unwrap_or_default().to_string()
}

async fn timeline(client: &Client, base: &str, case: &str) -> Vec<Value> {
    let page: Value = client
        .get(format!("{base}/v1/cases/{case}/timeline?limit=200"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"].as_array().cloned().unwrap_or_default()
}

/// The case's status once it is CLOSED or PARKED; the test fails, showing the service's log
/// and the case's timeline, if that takes over a minute and a half.
async fn settles(client: &Client, served: &Served, case: &str) -> String {
    for _ in 0..900 {
        let status = status_of(client, &served.base, case).await;
        if matches!(status.as_str(), "CLOSED" | "PARKED") {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let rows = timeline(client, &served.base, case).await;
    let log = served.stdout.lock().unwrap().join("\n");
    panic!(
        "case {case} did not reach CLOSED or PARKED after the restart\nlog:\n{log}\ntimeline: {:#}",
        json!(rows)
    );
}

async fn metric(client: &Client, base: &str, series: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Pids the slow script recorded, one per start.
fn starts(scripts: &Path) -> Vec<i32> {
    std::fs::read_to_string(scripts.join("started"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_step_parks_the_case_after_restart_and_the_step_runs_once() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let (scripts, config) = crash_setup(&database);
    let client = client_with(ADMIN_KEY);
    let first = serve_with(&database, Some(ADMIN_KEY), Some(&config));
    ingest_healthy_error_rates(&client, &first.base).await;
    let case = open_auto_case(&client, &first.base).await;
    eventually("the restart script to start", 30, async || {
        !starts(&scripts).is_empty()
    })
    .await;
    assert_eq!(status_of(&client, &first.base, &case).await, "EXECUTING");
    // The script outlives the killed service (it has a process group of its own) and ends by
    // itself.
    kill_hard(first);

    let second = serve_with(&database, Some(ADMIN_KEY), Some(&config));
    let status = settles(&client, &second, &case).await;
    let rows = timeline(&client, &second.base, &case).await;
    assert_eq!(status, "PARKED", "{:#}", json!(rows));
    let failed = rows
        .iter()
        .rev()
        .find(|row| row["event"] == "exec_failed")
        .unwrap_or_else(|| panic!("no exec_failed row: {:#}", json!(rows)));
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("has not finished") && reason.contains("not run a second time"),
        "the claim's rule decided the redelivery: {reason}"
    );
    assert_eq!(starts(&scripts).len(), 1, "the step ran once");
    assert_eq!(
        metric(
            &client,
            &second.base,
            "bus_redelivery_total{consumer=\"executor\"}"
        )
        .await,
        1.0
    );
    terminate(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_verification_runs_it_again_after_restart_and_closes_the_case() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let (scripts, config) = crash_setup(&database);
    // A quick restart this time: the crash is to come during the verification.
    std::fs::write(
        scripts.join("slow-restart"),
        "#!/bin/sh\necho $$ >> started\necho restarted \"$1\"\n",
    )
    .unwrap();
    let client = client_with(ADMIN_KEY);
    let first = serve_with(&database, Some(ADMIN_KEY), Some(&config));
    ingest_healthy_error_rates(&client, &first.base).await;
    let case = open_auto_case(&client, &first.base).await;
    eventually("the case to reach VERIFYING", 30, async || {
        status_of(&client, &first.base, &case).await == "VERIFYING"
    })
    .await;
    // VERIFYING is committed before the relay hands `cmd.verify.run` to the verifier: the
    // crash must come once the verifier holds it, or the restart is a first delivery.
    eventually("the verifier to hold its command", 30, async || {
        verifier_holds_a_command(&database).await
    })
    .await;
    kill_hard(first);

    let second = serve_with(&database, Some(ADMIN_KEY), Some(&config));
    let status = settles(&client, &second, &case).await;
    let rows = timeline(&client, &second.base, &case).await;
    assert_eq!(status, "CLOSED", "{:#}", json!(rows));
    assert_eq!(
        rows.iter()
            .filter(|row| row["event"] == "verify_pass")
            .count(),
        1
    );
    assert_eq!(starts(&scripts).len(), 1, "the step ran once");
    assert_eq!(
        metric(
            &client,
            &second.base,
            "bus_redelivery_total{consumer=\"verifier\"}"
        )
        .await,
        1.0
    );
    terminate(second);
}

/// Whether the embedded bus has handed the verifier a command it has not finished
/// (`bus_in_progress`), read from the service's SQLite file.
async fn verifier_holds_a_command(database: &TestDatabase) -> bool {
    use sqlx::ConnectOptions;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(database.dir.path().join("opscase.db"))
        .read_only(true);
    let Ok(mut conn) = options.connect().await else {
        return false;
    };
    let held: Result<i64, _> =
        sqlx::query_scalar("SELECT COUNT(*) FROM bus_in_progress WHERE consumer = 'verifier'")
            .fetch_one(&mut conn)
            .await;
    held.is_ok_and(|count| count > 0)
}
