//! The canary loop under paused tokio time, and how check verdicts combine.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use verifier::{MetricSource, Verdict, Verifier, VerifyOutcome};

use crate::common::{command, ts, ByQuery, ScriptedSource, TokioClock};

const ORIGIN: &str = "2026-11-21T12:00:00Z";

fn canary(count: u32, failure_limit: u32) -> Value {
    json!({
        "checks": [{"name": "latency", "source": "scripted", "query": "resource=checkout", "threshold": "p95_ms < 300"}],
        "window_s": 600, "interval_s": 30, "count": count, "failure_limit": failure_limit
    })
}

async fn run_script(
    script: Vec<Option<f64>>,
    verify: Value,
) -> (VerifyOutcome, Arc<ScriptedSource>) {
    let source = ScriptedSource::new(script);
    let verifier = Verifier::new(vec![(
        "scripted".to_string(),
        source.clone() as Arc<dyn MetricSource>,
    )])
    .with_clock(Arc::new(TokioClock::new(ts(ORIGIN))));
    let outcome = verifier.run(&command("acme", verify)).await;
    (outcome, source)
}

fn passed(outcome: &VerifyOutcome) -> Vec<Option<bool>> {
    outcome.checks[0]
        .measurements
        .iter()
        .map(|m| m.passed)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn one_failure_within_the_limit_passes() {
    let (outcome, source) =
        run_script(vec![Some(400.0), Some(200.0), Some(250.0)], canary(3, 1)).await;
    assert_eq!(outcome.verdict, Verdict::Pass, "{}", outcome.reason);
    assert_eq!(passed(&outcome), [Some(false), Some(true), Some(true)]);
    // The first measurement at once, then every interval_s (virtual time).
    assert_eq!(
        source.ats(),
        [
            ts("2026-11-21T12:00:00Z"),
            ts("2026-11-21T12:00:30Z"),
            ts("2026-11-21T12:01:00Z")
        ]
    );
    let calls = source.calls.lock().unwrap().clone();
    assert!(calls
        .iter()
        .all(|(tenant, name, window, _)| tenant == "acme"
            && name == "latency"
            && *window == Duration::from_secs(600)));
    assert_eq!(
        outcome.checks[0].reason,
        "2 of 3 measurement(s) passed (1 failed, failure limit 1)"
    );
    assert_eq!(outcome.latency, Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn failures_beyond_the_limit_fail_at_the_last_measurement() {
    let (outcome, source) =
        run_script(vec![Some(400.0), Some(200.0), Some(500.0)], canary(3, 1)).await;
    assert_eq!(outcome.verdict, Verdict::Fail);
    assert_eq!(passed(&outcome), [Some(false), Some(true), Some(false)]);
    assert_eq!(source.ats().len(), 3);
    assert!(
        outcome.checks[0]
            .reason
            .starts_with("2 failed measurement(s) of 3 exceed the failure limit 1"),
        "{}",
        outcome.checks[0].reason
    );
}

#[tokio::test(start_paused = true)]
async fn the_loop_stops_as_soon_as_the_limit_is_exceeded() {
    let (outcome, source) =
        run_script(vec![Some(400.0), Some(500.0), Some(100.0)], canary(3, 1)).await;
    assert_eq!(outcome.verdict, Verdict::Fail);
    assert_eq!(passed(&outcome), [Some(false), Some(false)]);
    assert_eq!(
        source.ats(),
        [ts("2026-11-21T12:00:00Z"), ts("2026-11-21T12:00:30Z")]
    );
    let data = serde_json::to_value(outcome.event("plan-1")).unwrap();
    assert_eq!(data["verdict"], "fail");
    assert_eq!(data["checks"][0]["measurements"][1]["value"], 500.0);
    assert_eq!(data["checks"][0]["measurements"][1]["passed"], false);
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_measurement_makes_the_check_inconclusive() {
    let (outcome, source) = run_script(vec![Some(100.0), None, Some(100.0)], canary(3, 1)).await;
    assert_eq!(outcome.verdict, Verdict::Inconclusive);
    assert_eq!(passed(&outcome), [Some(true), None, Some(true)]);
    assert_eq!(source.ats().len(), 3);
    assert!(outcome.checks[0]
        .reason
        .starts_with("1 of 3 measurement(s) inconclusive"));
    assert_eq!(outcome.topic(), "evt.verify.failed.v1");
    // Inconclusive measurements do not count as failures: two failures plus one unknown
    // still exceed the limit only through the failures.
    let (outcome, _) = run_script(vec![None, Some(400.0), None], canary(3, 1)).await;
    assert_eq!(outcome.verdict, Verdict::Inconclusive, "{}", outcome.reason);
}

#[tokio::test(start_paused = true)]
async fn with_the_defaults_one_measurement_decides() {
    let (outcome, source) = run_script(
        vec![Some(400.0)],
        json!({"checks": [{"source": "scripted", "query": "q", "threshold": "p95_ms < 300"}]}),
    )
    .await;
    assert_eq!(outcome.verdict, Verdict::Fail);
    assert_eq!(outcome.checks[0].name, "check-1");
    assert_eq!(source.calls.lock().unwrap()[0].2, Duration::from_secs(300));
}

fn checks(specs: &[(&str, &str)]) -> Value {
    let checks: Vec<Value> = specs
        .iter()
        .map(|(source, query)| json!({"name": query, "source": source, "query": query, "threshold": "x < 10"}))
        .collect();
    json!({"checks": checks, "count": 2, "interval_s": 10, "failure_limit": 0})
}

async fn combined(specs: &[(&str, &str)]) -> VerifyOutcome {
    Verifier::new(vec![(
        "by_query".to_string(),
        Arc::new(ByQuery) as Arc<dyn MetricSource>,
    )])
    .with_clock(Arc::new(TokioClock::new(ts(ORIGIN))))
    .run(&command("acme", checks(specs)))
    .await
}

#[tokio::test(start_paused = true)]
async fn the_overall_verdict_is_fail_then_inconclusive_then_pass() {
    let all_pass = combined(&[("by_query", "pass"), ("by_query", "pass")]).await;
    assert_eq!(all_pass.verdict, Verdict::Pass);
    assert_eq!(all_pass.reason, "all 2 check(s) passed");
    assert_eq!(all_pass.source, "by_query");
    assert!(all_pass.checks.iter().all(|c| c.measurements.len() == 2));

    let one_unknown = combined(&[("by_query", "pass"), ("by_query", "none")]).await;
    assert_eq!(one_unknown.verdict, Verdict::Inconclusive);
    assert_eq!(
        one_unknown
            .checks
            .iter()
            .map(|c| c.verdict)
            .collect::<Vec<_>>(),
        [Verdict::Pass, Verdict::Inconclusive]
    );
    assert!(
        one_unknown.reason.contains("check \"none\""),
        "{}",
        one_unknown.reason
    );

    let nan = combined(&[("by_query", "nan")]).await;
    assert_eq!(nan.verdict, Verdict::Inconclusive);

    // A failure decides, and stops the others: they did not finish, so they cannot pass.
    let one_fails = combined(&[
        ("by_query", "none"),
        ("by_query", "fail"),
        ("by_query", "pass"),
    ])
    .await;
    assert_eq!(one_fails.verdict, Verdict::Fail);
    assert_eq!(
        one_fails
            .checks
            .iter()
            .map(|c| c.verdict)
            .collect::<Vec<_>>(),
        [Verdict::Inconclusive, Verdict::Fail, Verdict::Inconclusive]
    );
    assert!(one_fails.checks.iter().all(|c| c.measurements.len() == 1));
    assert_eq!(
        one_fails.checks[2].reason,
        "stopped after 1 of 2 measurement(s): check \"fail\" failed"
    );
    assert!(
        one_fails.reason.starts_with("failed: check \"fail\""),
        "{}",
        one_fails.reason
    );
    assert!(
        !one_fails.reason.contains("\"pass\""),
        "{}",
        one_fails.reason
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_sources_and_invalid_checks_are_inconclusive() {
    let unknown = combined(&[("by_query", "pass"), ("prometheus", "up")]).await;
    assert_eq!(unknown.verdict, Verdict::Inconclusive);
    assert_eq!(unknown.source, "mixed");
    assert_eq!(
        unknown.checks[1].reason,
        "source \"prometheus\" is not configured (configured: by_query)"
    );
    assert!(unknown.checks[1].measurements.is_empty());

    let outcome = Verifier::new(vec![(
        "by_query".to_string(),
        Arc::new(ByQuery) as Arc<dyn MetricSource>,
    )])
    .run(&command(
        "acme",
        json!({"checks": [
            {"name": "ok", "source": "by_query", "query": "pass", "threshold": "x < 10"},
            {"name": "bad", "source": "by_query", "query": "pass", "threshold": "x is small"}
        ]}),
    ))
    .await;
    assert_eq!(outcome.verdict, Verdict::Inconclusive);
    assert_eq!(outcome.checks[1].threshold, "x is small");
    assert!(outcome.checks[1]
        .reason
        .starts_with("invalid threshold: no comparison operator"));

    for (verify, needle) in [
        (json!({"checks": []}), "no checks"),
        (Value::Null, "no verify section"),
        (
            json!({"checks": [{"source": "by_query", "query": "pass", "threshold": "x < 1"}], "count": 1, "failure_limit": 1}),
            "never fail",
        ),
    ] {
        let outcome = Verifier::default().run(&command("acme", verify)).await;
        assert_eq!(outcome.verdict, Verdict::Inconclusive);
        assert_eq!(outcome.source, "none");
        assert!(outcome.reason.contains(needle), "{}", outcome.reason);
    }
}
