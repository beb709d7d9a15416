//! Many writers of one case: exactly one wins, the rest are told why, nothing is half-written.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::TestApp;
use crate::on_both_backends;

const RACERS: usize = 32;

on_both_backends!(concurrent_transitions_at_one_version_have_exactly_one_winner);
async fn concurrent_transitions_at_one_version_have_exactly_one_winner(app: TestApp) {
    let case = app.open_case("t-001").await;
    let requests = (0..RACERS).map(|i| {
        app.client
            .patch(app.url(&format!("/v1/cases/{case}/transition")))
            .header("Idempotency-Key", format!("racer-{i}"))
            .header("If-Match", "\"1\"")
            .json(&json!({"event": "start_analysis", "actor": format!("racer-{i}")}))
            .send()
    });
    let statuses: Vec<StatusCode> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();

    let winners = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let losers = statuses
        .iter()
        .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
        .count();
    assert_eq!(winners, 1, "{statuses:?}");
    assert_eq!(
        losers,
        RACERS - 1,
        "every other racer gets 412: {statuses:?}"
    );
    assert_eq!(app.case(case).await["version"], 2);
    assert_eq!(
        app.timeline(case).await.len(),
        2,
        "one open row and one winning row"
    );
    assert_eq!(app.outbox(case).await.len(), 2);
}

on_both_backends!(concurrent_events_without_precondition_apply_in_some_order_without_errors);
async fn concurrent_events_without_precondition_apply_in_some_order_without_errors(app: TestApp) {
    // Racers that do not pin a version: the first start_analysis wins, the others are illegal
    // in ANALYZING. No deadlock, no 500, and the versions on the timeline have no gap.
    let case = app.open_case("t-001").await;
    let requests = (0..RACERS).map(|i| {
        app.client
            .patch(app.url(&format!("/v1/cases/{case}/transition")))
            .header("Idempotency-Key", format!("free-{i}"))
            .json(&json!({"event": if i % 2 == 0 { "start_analysis" } else { "cancel" }, "reason": "race"}))
            .send()
    });
    let statuses: Vec<StatusCode> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let applied = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let timeline = app.timeline(case).await;
    let versions: Vec<i64> = timeline
        .iter()
        .map(|r| r["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=applied as i64 + 1).collect::<Vec<_>>());
    assert_eq!(app.case(case).await["version"], applied as i64 + 1);
}

on_both_backends!(one_idempotency_key_sent_concurrently_applies_once);
async fn one_idempotency_key_sent_concurrently_applies_once(app: TestApp) {
    let case = app.open_case("t-001").await;
    let key = Uuid::new_v4().to_string();
    let body = json!({"event": "start_analysis", "actor": "a"});
    let responses =
        join_all((0..8).map(|_| app.transition_with_key(case, &key, body.clone()))).await;
    let mut fresh = 0;
    for response in responses {
        let replayed = response.headers().contains_key("idempotent-replayed");
        match response.status() {
            StatusCode::OK if !replayed => fresh += 1,
            StatusCode::OK => {}
            StatusCode::CONFLICT => {
                let problem: Value = response.json().await.unwrap();
                assert_eq!(
                    problem["type"],
                    "urn:opscase:problem:idempotency-key-in-flight"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(app.timeline(case).await.len(), 2);
    assert_eq!(app.outbox(case).await.len(), 2);
}
