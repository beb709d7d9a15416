//! Hot reload: a rewritten policy file is picked up by `current()`; a broken one is not.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{at, plan};
use gatekeeper::{evaluate, policy_rev, GateInput, Outcome, PolicyError, PolicySource};

/// Generous: the check runs at most once a second.
const BOUND: Duration = Duration::from_secs(30);

fn write(path: &Path, text: &str) {
    // Write then rename, as an editor or a config-management tool would; both are handled.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn outcome(source: &PolicySource, risk: f64) -> Outcome {
    let policy = source.current();
    let plan = plan(Some(risk), &["script.exec"]);
    evaluate(
        &policy,
        &GateInput {
            tenant: "t-001",
            plan: &plan,
            now: at("2026-06-02T12:00:00Z"),
        },
    )
    .outcome
}

/// Poll `current()` until its revision is `rev`.
fn wait_for_rev(source: &PolicySource, rev: &str) {
    let started = Instant::now();
    while source.current().rev != rev {
        assert!(started.elapsed() < BOUND, "policy rev {rev} not picked up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rewrite_is_picked_up_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    let v1 = "max_auto_risk = 0.3\n";
    write(&path, v1);
    let source = PolicySource::from_file(&path).unwrap();
    assert_eq!(source.path(), Some(path.as_path()));
    assert_eq!(source.current().rev, policy_rev(v1.as_bytes()));
    assert_eq!(outcome(&source, 0.5), Outcome::Hold);

    // Same length, different value.
    let v2 = "max_auto_risk = 0.6\n";
    write(&path, v2);
    wait_for_rev(&source, &policy_rev(v2.as_bytes()));
    assert_eq!(outcome(&source, 0.5), Outcome::Approve);
    assert_eq!(source.current().max_auto_risk, 0.6);

    // A broken rewrite keeps the old policy, and says why.
    write(&path, "max_auto_risk = 0.9\nmax_stepz = 3\n");
    let err = source.reload().unwrap_err();
    assert!(matches!(err, PolicyError::Parse { .. }), "{err:?}");
    assert_eq!(err.key(), Some("max_stepz"));
    assert_eq!(
        source.reload().unwrap_err(),
        err,
        "still broken, still reported"
    );
    assert_eq!(source.current().rev, policy_rev(v2.as_bytes()));
    assert_eq!(outcome(&source, 0.5), Outcome::Approve);

    // A missing file too.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(source.reload(), Err(PolicyError::Io { .. })));
    assert_eq!(source.current().rev, policy_rev(v2.as_bytes()));

    // The next good version is picked up by current() alone.
    let v3 = "max_auto_risk = 0.1\n";
    write(&path, v3);
    wait_for_rev(&source, &policy_rev(v3.as_bytes()));
    assert_eq!(outcome(&source, 0.2), Outcome::Hold);
    assert_eq!(source.reload(), Ok(false), "nothing new");
}

#[test]
fn clones_share_the_reloaded_policy_and_yaml_reloads_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.yaml");
    write(&path, "max_auto_risk: 0.3\n");
    let source = PolicySource::from_file(&path)
        .unwrap()
        .with_check_interval(Duration::from_millis(10));
    let clone = source.clone();
    let v2 = "max_auto_risk: 0.7\n";
    write(&path, v2);
    wait_for_rev(&clone, &policy_rev(v2.as_bytes()));
    assert_eq!(source.current().max_auto_risk, 0.7);
    assert_eq!(outcome(&source, 0.5), Outcome::Approve);
}

#[test]
fn a_file_that_does_not_parse_at_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    write(&path, "max_auto_risk = \"x\"\n");
    let err = PolicySource::from_file(&path).unwrap_err();
    assert_eq!(err.key(), Some("max_auto_risk"));
    assert!(err.to_string().contains("gate.toml:1"), "{err}");
    assert!(PolicySource::from_file(dir.path().join("gate.ini")).is_err());
}

#[test]
fn builtin_source() {
    let source = PolicySource::builtin();
    assert_eq!(
        source.current().rev,
        policy_rev(gatekeeper::DEFAULT_POLICY_TOML.as_bytes())
    );
    assert_eq!(source.current().origin, "<builtin>");
    assert_eq!(source.reload(), Ok(false));
    assert!(source.path().is_none());
    assert_eq!(
        PolicySource::from_optional_file(None)
            .unwrap()
            .current()
            .rev,
        source.current().rev
    );
}
