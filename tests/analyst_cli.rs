//! `opscase analyst score`, the real binary, on small CSV files.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};

fn score(dir: &Path, input: &str, args: &[&str]) -> (Output, Option<String>) {
    let (in_path, out_path) = (dir.join("in.csv"), dir.join("out.csv"));
    std::fs::write(&in_path, input).unwrap();
    let _ = std::fs::remove_file(&out_path);
    let output = Command::new(env!("CARGO_BIN_EXE_opscase"))
        .args(["analyst", "score"])
        .args(args)
        .arg("--input")
        .arg(&in_path)
        .arg("--output")
        .arg(&out_path)
        .output()
        .expect("opscase runs");
    (output, std::fs::read_to_string(&out_path).ok())
}

/// Five-minute rows with what NAB files have: a repeated timestamp, a gap of two days, a
/// repeated hour; a spike at row 900.
fn nab_like() -> (String, usize) {
    let mut text = String::from("timestamp,value\n");
    let mut t = chrono::NaiveDate::from_ymd_opt(2014, 3, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let mut rows = 0;
    for i in 0..1_000 {
        let value = if i == 900 {
            95.5
        } else {
            40.0 + 3.0 * ((i as f64) * 0.7).sin() + (i % 5) as f64 * 0.25
        };
        writeln!(text, "{},{value}", t.format("%Y-%m-%d %H:%M:%S")).unwrap();
        rows += 1;
        if i == 300 {
            // The same timestamp again.
            writeln!(text, "{},{value}", t.format("%Y-%m-%d %H:%M:%S")).unwrap();
            rows += 1;
        }
        t += if i == 500 {
            chrono::Duration::days(2)
        } else {
            chrono::Duration::minutes(5)
        };
        if i == 700 {
            t -= chrono::Duration::hours(1);
        }
    }
    (text, rows)
}

#[test]
fn scores_every_row_in_order_within_zero_and_one() {
    let dir = tempfile::tempdir().unwrap();
    let (input, rows) = nab_like();
    for args in [
        &[][..],
        &["--detector", "default"],
        &[
            "--detector",
            "robust_z",
            "--param",
            "window=60",
            "--param",
            "threshold=4",
        ],
        &["--detector", "seasonal", "--param", "period=1d"],
        &["--detector", "threshold", "--param", "above=90"],
    ] {
        let (output, scored) = score(dir.path(), &input, args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let scored = scored.unwrap();
        let mut lines = scored.lines();
        assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
        let out: Vec<&str> = lines.collect();
        assert_eq!(out.len(), rows, "{args:?}: one row per input row");
        let mut best = (0, -1.0);
        for (i, (got, want)) in out.iter().zip(input.lines().skip(1)).enumerate() {
            let (prefix, score) = got.rsplit_once(',').unwrap();
            assert_eq!(
                prefix, want,
                "{args:?}: row {i} keeps its timestamp and value"
            );
            let score: f64 = score.parse().unwrap();
            assert!(
                (0.0..=1.0).contains(&score),
                "{args:?}: row {i} scores {score}"
            );
            if score > best.1 {
                best = (i, score);
            }
        }
        // Row 900 of the series is line 901 of the rows (one duplicate before it).
        assert_eq!(best.0, 901, "{args:?}: the spike scores highest ({best:?})");
    }
}

#[test]
fn refuses_bad_parameters_and_inputs_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = nab_like();
    let (output, scored) = score(
        dir.path(),
        &input,
        &["--detector", "robust_z", "--param", "window=1"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(scored.is_none());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--param window: must be at least 3 buckets"),
        "{stderr}"
    );

    let (output, _) = score(dir.path(), "time,val\n1,2\n", &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`timestamp` and `value`"));

    let (output, _) = score(
        dir.path(),
        "timestamp,value\n2014-03-01 00:00:00,1\nyesterday,2\n",
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("line 3: \"yesterday\" is not a timestamp"));
}
