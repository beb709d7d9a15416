//! The operator CLI (`opscase case|evidence|plan|kb search`), as a person runs it: the real
//! binary against a real service on a random port, on both backends.

use serde_json::{json, Value};

use crate::helpers::*;
use crate::on_both_backends;

/// What one run of the CLI did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `opscase ARGS` against `app` with `key` (as `OPSCASE_KEY`), off the runtime's threads.
async fn opscase(app: &TestApp, key: &str, args: &[&str]) -> Run {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_opscase"));
    command
        .args(args)
        .env("OPSCASE_URL", &app.base)
        .env("OPSCASE_KEY", key)
        .env_remove("OPSCASE_CONFIG");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Run it and insist it succeeded.
async fn ok(app: &TestApp, key: &str, args: &[&str]) -> String {
    let run = opscase(app, key, args).await;
    assert_eq!(run.code, 0, "opscase {args:?}: {}", run.stderr);
    run.stdout
}

async fn an_operator_works_a_case_from_the_terminal(app: TestApp) {
    // Open, as JSON for a script: `-o` after the subcommand.
    let out = ok(
        &app,
        ADMIN_KEY,
        &[
            "case",
            "open",
            "--title",
            "p95 spike on checkout",
            "--label",
            "service=checkout",
            "--severity",
            "high",
            "-o",
            "json",
        ],
    )
    .await;
    let case: Value = serde_json::from_str(&out).unwrap();
    let id = case["id"].as_str().unwrap().to_string();
    assert_eq!(case["status"], "NEW");
    assert_eq!(case["labels"]["service"], "checkout");

    // A table for people, with the case in it.
    let table = ok(&app, ADMIN_KEY, &["case", "list"]).await;
    let row = table
        .lines()
        .find(|line| line.starts_with(&id))
        .expect(&table);
    assert!(
        row.contains("NEW") && row.contains("high") && row.contains("p95 spike"),
        "{row}"
    );

    // `-o` before the subcommand; an event moves it (If-Match from the version just read).
    let moved = ok(
        &app,
        ADMIN_KEY,
        &[
            "case",
            "event",
            &id,
            "start_analysis",
            "--reason",
            "looking at it",
        ],
    )
    .await;
    assert!(moved.contains("ANALYZING"), "{moved}");
    let shown: Value =
        serde_json::from_str(&ok(&app, ADMIN_KEY, &["-o", "json", "case", "show", &id]).await)
            .unwrap();
    assert_eq!(
        (shown["status"].as_str(), shown["version"].as_i64()),
        (Some("ANALYZING"), Some(2))
    );

    // A refused event: one line on stderr naming what was wrong, nothing on stdout, exit 1;
    // the case is as it was.
    let refused = opscase(&app, ADMIN_KEY, &["case", "approve", &id]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert_eq!(refused.stdout, "");
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(
        refused.stderr.starts_with("opscase: 409 Conflict: "),
        "{}",
        refused.stderr
    );
    assert_eq!(app.case(id.parse().unwrap()).await["version"], 2);

    // Evidence, then the timeline: every row, with who and why.
    let added = ok(
        &app,
        ADMIN_KEY,
        &[
            "evidence",
            "add",
            &id,
            "--kind",
            "url",
            "--link",
            "https://grafana.example/d/checkout",
            "--title",
            "dashboard",
        ],
    )
    .await;
    assert!(
        added.starts_with("evidence ") && added.contains(&id),
        "{added}"
    );
    let timeline = ok(&app, ADMIN_KEY, &["case", "timeline", &id]).await;
    assert!(timeline.contains("NEW → ANALYZING"), "{timeline}");
    assert!(
        timeline.contains("start_analysis") && timeline.contains("looking at it"),
        "{timeline}"
    );

    // Cancel it; `--watch` prints the rows and stops once the case is CLOSED.
    let closed = ok(
        &app,
        ADMIN_KEY,
        &["case", "cancel", &id, "--reason", "false alarm"],
    )
    .await;
    assert!(closed.contains("CLOSED"), "{closed}");
    let watched = ok(
        &app,
        ADMIN_KEY,
        &["case", "timeline", &id, "--watch", "-o", "json"],
    )
    .await;
    let rows: Vec<Value> = watched
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.last().unwrap()["event"], "cancel");
    assert_eq!(rows.last().unwrap()["to_status"], "CLOSED");

    // The knowledge base, searched from the terminal.
    let status = app
        .client
        .post(app.url("/v1/kb/docs"))
        .json(&json!({"title": "Checkout latency", "content": "# Checkout latency\n\n## Mitigation\n\nScale the zebracorn pool.\n"}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let hits = ok(
        &app,
        ADMIN_KEY,
        &["kb", "search", "zebracorn pool", "--k", "3"],
    )
    .await;
    assert!(hits.contains("Checkout latency › Mitigation"), "{hits}");
}
on_both_backends!(an_operator_works_a_case_from_the_terminal);

async fn a_wrong_key_or_a_dead_service_is_one_clear_line(app: TestApp) {
    let denied = opscase(&app, "osk_not_a_key", &["case", "list"]).await;
    assert_eq!(denied.code, 1);
    assert!(
        denied.stderr.starts_with("opscase: 401 Unauthorized"),
        "{}",
        denied.stderr
    );
    assert_eq!(denied.stderr.lines().count(), 1);

    let dead = opscase(
        &app,
        ADMIN_KEY,
        &["case", "list", "--url", "http://127.0.0.1:1"],
    )
    .await;
    assert_eq!(dead.code, 1);
    assert!(
        dead.stderr
            .starts_with("opscase: cannot reach http://127.0.0.1:1"),
        "{}",
        dead.stderr
    );

    let bad_label = opscase(
        &app,
        ADMIN_KEY,
        &["case", "open", "--title", "x", "--label", "oops"],
    )
    .await;
    assert_eq!(bad_label.code, 1);
    assert_eq!(
        bad_label.stderr.trim(),
        "opscase: --label \"oops\": expected KEY=VALUE"
    );

    let completions = ok(&app, ADMIN_KEY, &["completions", "bash"]).await;
    assert!(completions.contains("opscase") && completions.contains("timeline"));
}
on_both_backends!(a_wrong_key_or_a_dead_service_is_one_clear_line);
