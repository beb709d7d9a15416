//! The verifier on the `metric_1m` source (real SQLite): pass, fail, no data, non-finite.

use std::sync::Arc;

use serde_json::json;
use verifier::{Metric1mSource, Metric1mStore, Verdict, Verifier, VerifyOutcome, METRIC_1M};

use crate::common::{command, point, sqlite_pool, ts, FixedClock};

/// A store with five minutes of checkout p95 (200..=280) and error rates, measured at 12:10.
async fn verifier() -> Verifier {
    let store = Metric1mStore::sqlite(sqlite_pool().await);
    let mut batch = Vec::new();
    for (i, minute) in ["12:05", "12:06", "12:07", "12:08", "12:09"]
        .iter()
        .enumerate()
    {
        let bucket = format!("2026-11-21T{minute}:00Z");
        let i = i as f64;
        batch.push(point(
            "acme",
            "checkout",
            "p95_ms",
            &bucket,
            json!({"p95": 200.0 + 20.0 * i, "avg": 100.0, "max": 900.0}),
        ));
        batch.push(point(
            "acme",
            "checkout",
            "err_rate",
            &bucket,
            json!({"avg": 0.001 * (i + 1.0), "max": 0.05}),
        ));
    }
    // Outside the window: a terrible minute before it and one at its (open) end.
    batch.push(point(
        "acme",
        "checkout",
        "p95_ms",
        "2026-11-21T12:04:00Z",
        json!({"p95": 5000.0}),
    ));
    batch.push(point(
        "acme",
        "checkout",
        "p95_ms",
        "2026-11-21T12:10:00Z",
        json!({"p95": 5000.0}),
    ));
    // Sums beyond f64 (two minutes of 1e308).
    batch.push(point(
        "acme",
        "huge",
        "load",
        "2026-11-21T12:06:00Z",
        json!({"avg": 1.0e308}),
    ));
    batch.push(point(
        "acme",
        "huge",
        "load",
        "2026-11-21T12:07:00Z",
        json!({"avg": 1.0e308}),
    ));
    store.insert_batch(&batch).await.unwrap();
    Verifier::new(vec![(
        METRIC_1M.to_string(),
        Arc::new(Metric1mSource::new(store)) as _,
    )])
    .with_clock(Arc::new(FixedClock(ts("2026-11-21T12:10:00Z"))))
}

async fn run(verifier: &Verifier, tenant: &str, query: &str, threshold: &str) -> VerifyOutcome {
    verifier
        .run(&command(tenant, json!({
            "checks": [{"name": "c", "source": "metric_1m", "query": query, "threshold": threshold}]
        })))
        .await
}

#[tokio::test]
async fn a_p95_check_reads_the_worst_minute_of_the_window_and_passes() {
    let verifier = verifier().await;
    let outcome = run(&verifier, "acme", "resource=checkout", "p95_ms < 300").await;
    assert_eq!(outcome.verdict, Verdict::Pass, "{}", outcome.reason);
    assert_eq!(outcome.source, "metric_1m");
    assert_eq!(outcome.topic(), "evt.verify.pass.v1");
    let check = &outcome.checks[0];
    assert_eq!(check.verdict, Verdict::Pass);
    assert_eq!(check.measurements.len(), 1);
    let m = &check.measurements[0];
    assert_eq!(
        (m.at, m.value, m.passed),
        (ts("2026-11-21T12:10:00Z"), Some(280.0), Some(true))
    );
    assert!(
        m.note.contains("max of 5 minute(s) of p95 of p95_ms"),
        "{}",
        m.note
    );
}

#[tokio::test]
async fn a_check_fails_when_the_threshold_does_not_hold() {
    let verifier = verifier().await;
    let outcome = run(&verifier, "acme", "service=checkout", "p95_ms < 280").await;
    assert_eq!(outcome.verdict, Verdict::Fail);
    assert_eq!(outcome.topic(), "evt.verify.failed.v1");
    let m = &outcome.checks[0].measurements[0];
    assert_eq!((m.value, m.passed), (Some(280.0), Some(false)));
    assert!(
        outcome
            .reason
            .contains("p95_ms = 280 violates p95_ms < 280"),
        "{}",
        outcome.reason
    );
}

#[tokio::test]
async fn avg_is_the_mean_of_the_minutes_and_stat_picks_the_column() {
    let verifier = verifier().await;
    // err_rate: avg 0.001..=0.005, mean 0.003.
    let outcome = run(&verifier, "acme", "resource=checkout", "err_rate <= 0.003").await;
    let value = outcome.checks[0].measurements[0].value.unwrap();
    assert!((value - 0.003).abs() < 1e-12, "{value}");
    assert_eq!(outcome.verdict, Verdict::Pass, "{}", outcome.reason);
    let outcome = run(
        &verifier,
        "acme",
        "resource=checkout,stat=max",
        "err_rate <= 0.01",
    )
    .await;
    assert_eq!(outcome.checks[0].measurements[0].value, Some(0.05));
    assert_eq!(outcome.verdict, Verdict::Fail);
    let outcome = run(
        &verifier,
        "acme",
        "resource=checkout, stat=avg",
        "p95_ms < 150",
    )
    .await;
    assert_eq!(outcome.checks[0].measurements[0].value, Some(100.0));
    assert_eq!(outcome.verdict, Verdict::Pass);
}

#[tokio::test]
async fn no_rows_is_inconclusive_and_fails_closed() {
    let verifier = verifier().await;
    for (tenant, query, threshold) in [
        ("other-tenant", "resource=checkout", "p95_ms < 300"),
        ("acme", "resource=cart", "p95_ms < 300"),
        ("acme", "resource=checkout", "rps > 1"),
    ] {
        let outcome = run(&verifier, tenant, query, threshold).await;
        assert_eq!(
            outcome.verdict,
            Verdict::Inconclusive,
            "{query} {threshold}"
        );
        assert_eq!(outcome.topic(), "evt.verify.failed.v1");
        let m = &outcome.checks[0].measurements[0];
        assert_eq!((m.value, m.passed), (None, None));
        assert!(m.note.starts_with("no data"), "{}", m.note);
        assert!(
            outcome.reason.starts_with("inconclusive (fails closed)"),
            "{}",
            outcome.reason
        );
    }
}

#[tokio::test]
async fn the_mean_of_values_near_the_largest_float_is_theirs() {
    // Summed, two minutes of 1e308 were +inf (and the check inconclusive); a running mean
    // stays finite.
    let verifier = verifier().await;
    let outcome = run(&verifier, "acme", "resource=huge", "load < 1").await;
    assert_eq!(outcome.verdict, Verdict::Fail, "{}", outcome.reason);
    let m = &outcome.checks[0].measurements[0];
    assert_eq!((m.value, m.passed), (Some(1.0e308), Some(false)));
}

#[tokio::test]
async fn an_invalid_query_is_inconclusive() {
    let verifier = verifier().await;
    let outcome = run(&verifier, "acme", "host=checkout", "p95_ms < 300").await;
    assert_eq!(outcome.verdict, Verdict::Inconclusive);
    assert!(outcome.checks[0].measurements[0]
        .note
        .contains("invalid metric_1m query"));
}

/// The store fails for a while (its table is renamed away, as a stand-in for any error of
/// opscase's own database): the read is retried, and the measurement is of the service.
#[tokio::test]
async fn a_store_error_is_retried_and_is_not_evidence_about_the_service() {
    let pool = sqlite_pool().await;
    let store = Metric1mStore::sqlite(pool.clone());
    store
        .insert_batch(&[point(
            "acme",
            "checkout",
            "err_rate",
            "2026-11-21T12:08:00Z",
            json!({"avg": 0.001}),
        )])
        .await
        .unwrap();
    sqlx::query("ALTER TABLE metric_1m RENAME TO metric_1m_away")
        .execute(&pool)
        .await
        .unwrap();
    let verifier = Verifier::new(vec![(
        METRIC_1M.to_string(),
        Arc::new(Metric1mSource::new(store).with_retry_for(std::time::Duration::from_secs(30)))
            as _,
    )])
    .with_clock(Arc::new(FixedClock(ts("2026-11-21T12:10:00Z"))));
    let back = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        sqlx::query("ALTER TABLE metric_1m_away RENAME TO metric_1m")
            .execute(&pool)
            .await
            .unwrap();
    });
    let outcome = run(&verifier, "acme", "resource=checkout", "err_rate < 0.01").await;
    back.await.unwrap();
    assert_eq!(outcome.verdict, Verdict::Pass, "{}", outcome.reason);
}

/// A store that never comes back within the retry bound: inconclusive (fails closed), and the
/// note says it was opscase's database, not the service.
#[tokio::test]
async fn a_store_that_stays_down_is_inconclusive_and_says_so() {
    let pool = sqlite_pool().await;
    let store = Metric1mStore::sqlite(pool.clone());
    sqlx::query("DROP TABLE metric_1m")
        .execute(&pool)
        .await
        .unwrap();
    let verifier = Verifier::new(vec![(
        METRIC_1M.to_string(),
        Arc::new(Metric1mSource::new(store).with_retry_for(std::time::Duration::from_millis(500)))
            as _,
    )])
    .with_clock(Arc::new(FixedClock(ts("2026-11-21T12:10:00Z"))));
    let outcome = run(&verifier, "acme", "resource=checkout", "err_rate < 0.01").await;
    assert_eq!(outcome.verdict, Verdict::Inconclusive, "{}", outcome.reason);
    let note = &outcome.checks[0].measurements[0].note;
    assert!(
        note.contains("opscase's own database could not be read")
            && note.contains("says nothing about the service"),
        "{note}"
    );
    let attempts: u32 = note
        .split("database could not be read (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(attempts > 1, "retried before giving up: {note}");
}
