//! The real `opscase` binary: a case survives a stop and a start; SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use serde_json::{json, Value};

use std::sync::{Arc, Mutex};

use crate::helpers::{client_with, Backend, TestDatabase, ADMIN_KEY};

pub struct Served {
    child: Child,
    pub base: String,
    /// Every line the process printed on stdout so far (drained in the background).
    pub stdout: Arc<Mutex<Vec<String>>>,
}

/// Start `opscase serve` on a free port and read its address from the ready log line.
/// `bootstrap_key` is passed as OPSCASE_BOOTSTRAP_ADMIN_KEY when given.
pub fn serve(database: &TestDatabase, bootstrap_key: Option<&str>) -> Served {
    serve_with(database, bootstrap_key, None)
}

/// `serve`, reading `config` (an `opscase.toml`) too.
pub fn serve_with(
    database: &TestDatabase,
    bootstrap_key: Option<&str>,
    config: Option<&std::path::Path>,
) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_opscase"));
    command.arg("serve");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(database.dir.path())
        .env_remove("OPSCASE_DATABASE_URL")
        .env_remove("OPSCASE_BOOTSTRAP_ADMIN_KEY")
        .env("RUST_LOG", "info")
        .current_dir(database.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if database.backend == Backend::Postgres {
        command.env("OPSCASE_DATABASE_URL", database.url());
    }
    if let Some(key) = bootstrap_key {
        command.env("OPSCASE_BOOTSTRAP_ADMIN_KEY", key);
    }
    let mut child = command.spawn().expect("opscase starts");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("opscase printed its ready line")
            .unwrap();
        stdout.lock().unwrap().push(line.clone());
        if let Ok(entry) = serde_json::from_str::<Value>(&line) {
            if entry["message"] == "opscase is ready" {
                break entry["address"].as_str().unwrap().to_string();
            }
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    let drained = stdout.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            drained.lock().unwrap().push(line);
        }
    });
    Served {
        child,
        base,
        stdout,
    }
}

impl Served {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A test that fails midway must not leave a server behind.
impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// SIGKILL: no shutdown, no flush, as in a crash.
pub fn kill_hard(mut served: Served) {
    served.child.kill().unwrap();
    served.child.wait().unwrap();
}

pub fn terminate(mut served: Served) {
    let pid = served.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = served.child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM is a clean shutdown, got {status}"
    );
}

async fn survives_a_restart(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let client = client_with(ADMIN_KEY);

    let first = serve(&database, Some(ADMIN_KEY));
    let created: Value = client
        .post(format!("{}/v1/cases", first.base))
        .json(&json!({"title": "disk full on db-3", "tenant": "t-9", "labels": {"host": "db-3"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    let moved = client
        .patch(format!("{}/v1/cases/{id}/transition", first.base))
        .header("Idempotency-Key", "before-restart")
        .json(&json!({"event": "start_analysis", "actor": "oncall"}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);
    terminate(first);

    let second = serve(&database, Some(ADMIN_KEY));
    let case: Value = client
        .get(format!("{}/v1/cases/{id}", second.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(case["status"], "ANALYZING");
    assert_eq!(case["version"], 2);
    assert_eq!(case["labels"]["host"], "db-3");
    let timeline: Value = client
        .get(format!("{}/v1/cases/{id}/timeline", second.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(timeline["items"].as_array().unwrap().len(), 2);
    // The idempotency record survived too: the same request is a replay, not a second event.
    let replay = client
        .patch(format!("{}/v1/cases/{id}/transition", second.base))
        .header("Idempotency-Key", "before-restart")
        .json(&json!({"event": "start_analysis", "actor": "oncall"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let metrics = client
        .get(format!("{}/metrics", second.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cases_open{status=\"ANALYZING\"} 1"),
        "the gauge is reloaded from the database"
    );
    terminate(second);
    database.drop_database().await;
}

#[tokio::test]
async fn a_case_survives_a_restart_on_sqlite() {
    survives_a_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_case_survives_a_restart_on_postgres() {
    survives_a_restart(Backend::Postgres).await;
}

#[tokio::test]
async fn a_bad_setting_fails_start_up_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_opscase"))
        .args(["serve"])
        .env("OPSCASE_POOL_SIZE", "lots")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OPSCASE_POOL_SIZE=\"lots\""), "{stderr}");
}

#[tokio::test]
async fn migrate_creates_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    // A busy listen port must not matter: migrate neither listens nor creates keys.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for _ in 0..2 {
        let output = Command::new(env!("CARGO_BIN_EXE_opscase"))
            .args(["migrate", "--data-dir"])
            .arg(dir.path())
            .env_remove("OPSCASE_DATABASE_URL")
            .env("OPSCASE_LISTEN", &taken)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let store = orchestrator::connect(
        &format!("sqlite://{}", dir.path().join("opscase.db").display()),
        1,
    )
    .await
    .unwrap();
    store
        .check_ready()
        .await
        .expect("every migration is applied");
}

#[tokio::test]
async fn a_request_log_line_carries_its_request_id_and_trace_at_the_top_level() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let served = serve(&database, Some(ADMIN_KEY));
    let created = client_with(ADMIN_KEY)
        .post(format!("{}/v1/keys", served.base))
        .header("X-Request-Id", "req-log-7")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"name": "scraper", "roles": ["metrics"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let stdout = served.stdout.clone();
    terminate(served);
    let lines = stdout.lock().unwrap().clone();
    let entry: Value = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| entry["message"] == "API key created")
        .unwrap_or_else(|| panic!("no key-created line in {lines:?}"));
    assert_eq!(entry["request_id"], "req-log-7");
    // The request's own span in the caller's trace.
    assert_eq!(entry["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let span_id = entry["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(span_id, "00f067aa0ba902b7");
    assert_eq!(entry["otel.name"], "POST /v1/keys");
    // Outside any span there is no trace: the start-up line has none.
    let ready = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| entry["message"] == "opscase is ready")
        .unwrap();
    assert!(ready.get("trace_id").is_none(), "{ready}");
    assert_eq!(entry["level"], "INFO");
    assert_eq!(entry["target"], "api::keys");
    assert!(entry["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(
        !lines.iter().any(|l| l.contains(ADMIN_KEY)),
        "the key never reaches the log"
    );
}
