//! `script.exec` against real processes: the fixture scripts in `tests/scripts/`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use executor::adapters::script::{ScriptConfig, ScriptExec, DEFAULT_OUTPUT_CAP};
use executor::{Adapter, StepContext, StepError};
use serde_json::{json, Value};
use workflow::messages::CaseBrief;

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts")
}

fn fixtures() -> ScriptExec {
    ScriptExec::new(ScriptConfig::new(scripts_dir()))
}

fn context(timeout_s: u64) -> StepContext {
    StepContext {
        case: CaseBrief {
            id: "case-1".into(),
            ..CaseBrief::default()
        },
        step_id: "step-1".into(),
        attempt: 1,
        timeout: Duration::from_secs(timeout_s),
    }
}

async fn refused(adapter: &ScriptExec, params: Value) -> StepError {
    let describe = adapter.describe(&params, &context(10)).unwrap_err();
    let run = adapter.run(&params, &context(10)).await.unwrap_err();
    assert_eq!(describe, run);
    assert!(!run.retryable, "a refusal is permanent: {run:?}");
    run
}

#[tokio::test]
async fn refuses_what_is_not_in_the_allowlist_directory() {
    let adapter = fixtures();
    let dir = scripts_dir().display().to_string();

    let missing = refused(&adapter, json!({"script": "no-such-script.sh"})).await;
    assert!(
        missing.message.contains("not in the allowlist directory")
            && missing.message.contains(&dir),
        "{}",
        missing.message
    );
    assert!(
        missing.message.contains("no such file"),
        "{}",
        missing.message
    );

    for name in [
        "/bin/sh",
        "../scripts/print_args.sh",
        "sub/print_args.sh",
        "..",
        "print..args.sh",
        ".hidden",
        "",
    ] {
        let error = refused(&adapter, json!({"script": name})).await;
        assert!(
            error.message.contains("not in the allowlist directory")
                && error.message.contains(&dir)
                && error.message.contains("bare file name"),
            "{name}: {}",
            error.message
        );
    }
}

#[tokio::test]
async fn refuses_a_file_that_is_not_executable_or_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.sh");
    std::fs::write(&notes, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(dir.path().join("subdir")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", dir.path().join("dangling")).unwrap();
    let adapter = ScriptExec::new(ScriptConfig::new(dir.path()));

    let error = refused(&adapter, json!({"script": "notes.sh"})).await;
    assert!(
        error.message.contains("not in the allowlist directory")
            && error.message.contains("not executable"),
        "{}",
        error.message
    );
    let error = refused(&adapter, json!({"script": "subdir"})).await;
    assert!(
        error.message.contains("not a regular file"),
        "{}",
        error.message
    );
    let error = refused(&adapter, json!({"script": "dangling"})).await;
    assert!(
        error.message.contains("symlink to nothing"),
        "{}",
        error.message
    );

    // A symlink placed in the directory by whoever controls it is allowed.
    std::os::unix::fs::symlink(
        scripts_dir().join("print_args.sh"),
        dir.path().join("linked.sh"),
    )
    .unwrap();
    let ran = adapter
        .run(
            &json!({"script": "linked.sh", "args": ["via link"]}),
            &context(10),
        )
        .await
        .unwrap();
    assert_eq!(ran.output.as_deref(), Some("via link\n"));
}

#[tokio::test]
async fn refuses_every_script_without_a_configured_directory() {
    let adapter = ScriptExec::new(ScriptConfig::default());
    let error = refused(&adapter, json!({"script": "print_args.sh"})).await;
    assert!(
        error.message.contains("no allowlist directory configured"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn refuses_env_that_changes_how_the_script_runs() {
    let adapter = fixtures();
    for name in ["PATH", "LD_PRELOAD", "BASH_ENV", "IFS"] {
        let error = refused(
            &adapter,
            json!({"script": "print_env.sh", "env": {name: "/tmp/x"}}),
        )
        .await;
        assert!(
            error.message.contains(&format!("params.env.{name}")),
            "{}",
            error.message
        );
    }
}

#[tokio::test]
async fn arguments_reach_the_script_verbatim_and_no_shell_runs_them() {
    let marker = std::env::temp_dir().join(format!("pwned-{}", uuid::Uuid::new_v4()));
    let args = vec![
        "; rm -rf /".to_owned(),
        format!("$(touch {})", marker.display()),
        "`id`".to_owned(),
        "-c".to_owned(),
        "&& echo hacked".to_owned(),
        format!("; touch {}", marker.display()),
        "two words  and  spaces".to_owned(),
    ];
    let ran = fixtures()
        .run(
            &json!({"script": "print_args.sh", "args": args}),
            &context(10),
        )
        .await
        .unwrap();
    assert_eq!(ran.detail, "exit 0");
    let mut expected = args.join("\n");
    expected.push('\n');
    assert_eq!(ran.output.as_deref(), Some(expected.as_str()));
    assert!(!marker.exists(), "{} was created", marker.display());
}

fn pid_in(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Gone, or a zombie (dead; only its parent, or init for an orphan, can reap it).
fn process_is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    // A machine too busy to start the script and its child within the 1 s timeout proves
    // nothing either way: try again (fresh pid files) a few times.
    let mut pids = None;
    for round in 0..3 {
        let script_pid = dir.path().join(format!("script-{round}.pid"));
        let child_pid = dir.path().join(format!("child-{round}.pid"));
        let params = json!({
            "script": "spawn_and_sleep.sh",
            "args": [script_pid.to_str().unwrap(), child_pid.to_str().unwrap()],
        });
        let error = fixtures().run(&params, &context(1)).await.unwrap_err();
        assert!(
            error.message.contains("timed out after 1 s"),
            "{}",
            error.message
        );
        assert!(error.retryable);
        if let (Some(script), Some(child)) = (pid_in(&script_pid), pid_in(&child_pid)) {
            assert!(
                error.output.as_deref().unwrap_or("").contains("started"),
                "{:?}",
                error.output
            );
            pids = Some((script, child));
            break;
        }
    }
    let (script, child) = pids.expect("the script never got to start its child within 1 s");

    let give_up = Instant::now() + Duration::from_secs(5);
    while !(process_is_gone(script) && process_is_gone(child)) && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(process_is_gone(script), "the script ({script}) still runs");
    assert!(
        process_is_gone(child),
        "its background child ({child}) still runs"
    );
}

#[tokio::test]
async fn dropping_an_attempt_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let script_pid = dir.path().join("script.pid");
    let child_pid = dir.path().join("child.pid");
    let params = json!({
        "script": "spawn_and_sleep.sh",
        "args": [script_pid.to_str().unwrap(), child_pid.to_str().unwrap()],
    });
    let adapter = fixtures();
    let long = context(300);
    let mut run = Box::pin(adapter.run(&params, &long));
    // Poll the attempt until both pids are written, then drop it.
    let give_up = Instant::now() + Duration::from_secs(10);
    while pid_in(&child_pid).is_none() && Instant::now() < give_up {
        tokio::select! {
            _ = &mut run => panic!("the script ended by itself"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    drop(run);
    let script = pid_in(&script_pid).expect("the script wrote its pid");
    let child = pid_in(&child_pid).expect("the script wrote its child's pid");
    let give_up = Instant::now() + Duration::from_secs(5);
    while !(process_is_gone(script) && process_is_gone(child)) && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(process_is_gone(script), "the script ({script}) still runs");
    assert!(
        process_is_gone(child),
        "its background child ({child}) still runs"
    );
}

#[tokio::test]
async fn children_left_holding_the_output_are_killed_after_the_script_exits() {
    let dir = tempfile::tempdir().unwrap();
    let child_pid = dir.path().join("child.pid");
    let ran = fixtures()
        .run(
            &json!({"script": "leave_child.sh", "args": [child_pid.to_str().unwrap()]}),
            &context(60),
        )
        .await
        .unwrap();
    assert_eq!(ran.detail, "exit 0");
    let output = ran.output.unwrap();
    assert!(output.starts_with("left a child behind\n"), "{output}");
    assert!(output.contains("were killed"), "{output}");
    let child = pid_in(&child_pid).expect("the script wrote its child's pid");
    let give_up = Instant::now() + Duration::from_secs(5);
    while !process_is_gone(child) && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(process_is_gone(child), "the child ({child}) still runs");
}

#[tokio::test]
async fn a_flood_of_output_is_capped_and_the_step_completes() {
    let ran = fixtures()
        .run(&json!({"script": "flood.sh"}), &context(60))
        .await
        .unwrap();
    assert_eq!(ran.detail, "exit 0");
    let output = ran.output.unwrap();
    let marker_len = "\n…[truncated 10000000 bytes]…\n".len();
    assert!(
        output.len() <= DEFAULT_OUTPUT_CAP + marker_len,
        "{} bytes kept",
        output.len()
    );
    assert!(output.contains("…[truncated "), "no truncation marker");
    assert!(output.starts_with("xxxx"));
    // The tail is kept: the last line is there.
    assert!(
        output.trim_end().ends_with("flood-done"),
        "{}",
        &output[output.len() - 100..]
    );
}

#[tokio::test]
async fn a_small_cap_is_honoured() {
    let config = ScriptConfig {
        output_cap: 1000,
        ..ScriptConfig::new(scripts_dir())
    };
    let ran = ScriptExec::new(config)
        .run(&json!({"script": "flood.sh"}), &context(60))
        .await
        .unwrap();
    let output = ran.output.unwrap();
    let marker_len = "\n…[truncated 10000000 bytes]…\n".len();
    assert!(
        output.len() <= 1000 + marker_len,
        "{} bytes kept",
        output.len()
    );
    assert!(output.contains("…[truncated "));
}

#[tokio::test]
async fn the_environment_is_scrubbed() {
    // Only this test sets it; the scripts get a cleared environment anyway.
    std::env::set_var("OPSCASE_SECRET_TEST", "xyz");
    let ran = fixtures()
        .run(
            &json!({"script": "print_env.sh", "env": {"TARGET": "checkout-7"}}),
            &context(10),
        )
        .await
        .unwrap();
    let output = ran.output.unwrap();
    let vars: Vec<&str> = output.lines().collect();
    assert!(!output.contains("OPSCASE_SECRET_TEST"), "{output}");
    assert!(!output.contains("xyz"), "{output}");
    assert!(!output.contains("CARGO"), "{output}");
    assert!(vars.contains(&"TARGET=checkout-7"), "{output}");
    assert!(
        vars.contains(&"PATH=/usr/local/bin:/usr/bin:/bin"),
        "{output}"
    );
    assert!(vars.contains(&"HOME=/nonexistent"), "{output}");
    assert!(vars.contains(&"LANG=C.UTF-8"), "{output}");
}

#[tokio::test]
async fn a_non_zero_exit_fails_retryable_with_the_output() {
    let error = fixtures()
        .run(&json!({"script": "always_fail.sh"}), &context(10))
        .await
        .unwrap_err();
    assert_eq!(error.message, "exit 3");
    assert!(error.retryable);
    assert_eq!(error.output.as_deref(), Some("boom\n"));
}

#[tokio::test]
async fn describe_says_what_would_run_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines");
    let params = json!({"script": "append_line.sh", "args": [file.to_str().unwrap(), "a b"],
                        "env": {"TARGET": "x"}});
    let description = fixtures().describe(&params, &context(10)).unwrap();
    assert_eq!(
        description,
        format!(
            "would run append_line.sh [{:?},\"a b\"] with TARGET",
            file.to_str().unwrap()
        )
    );
    assert!(!file.exists());
}
