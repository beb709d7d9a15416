//! The worker: one event per command, inconclusive published as failed.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bus::{answer_id, BusError, Envelope, Publisher, Worker, WorkerError};
use chrono::Utc;
use serde_json::json;
use verifier::{
    Metric1mSource, Metric1mStore, Verdict, Verifier, VerifierWorker, VerifyOutcome, METRIC_1M,
};
use workflow::messages::VerifyEvent;

use crate::common::{command, sqlite_pool};

#[derive(Default)]
struct Collect(Mutex<Vec<Envelope>>);

#[async_trait]
impl Publisher for Collect {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.0.lock().unwrap().push(envelope);
        Ok(())
    }
}

fn envelope(kind: &str, data: serde_json::Value) -> Envelope {
    Envelope::new(
        uuid::Uuid::now_v7(),
        "opscase/orchestrator",
        kind,
        "0190e8a0-0000-7000-8000-000000000001",
        Utc::now(),
        data,
    )
    .with_traceparent(Some(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    ))
}

#[tokio::test]
async fn no_data_is_published_as_failed_with_verdict_inconclusive() {
    let store = Metric1mStore::sqlite(sqlite_pool().await);
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let observed = seen.clone();
    let worker = VerifierWorker::new(Verifier::new(vec![(
        METRIC_1M.to_string(),
        Arc::new(Metric1mSource::new(store)) as _,
    )]))
    .with_observer(Arc::new(move |outcome: &VerifyOutcome| {
        observed
            .lock()
            .unwrap()
            .push((outcome.source.clone(), outcome.verdict.to_string()));
    }));
    assert_eq!(worker.role(), "verifier");
    assert_eq!(worker.commands(), ["cmd.verify.run"]);
    assert!(worker.detached());

    let verify = json!({"checks": [{"source": "metric_1m", "query": "resource=checkout", "threshold": "p95_ms < 300"}]});
    let cmd = envelope(
        "cmd.verify.run",
        serde_json::to_value(command("acme", verify)).unwrap(),
    );
    let out = Collect::default();
    worker.handle(&cmd, &out).await.unwrap();

    let published = out.0.lock().unwrap().clone();
    assert_eq!(published.len(), 1);
    let event = &published[0];
    assert_eq!(event.kind, "evt.verify.failed.v1");
    assert_eq!(event.source, "opscase/verifier");
    assert_eq!(event.subject, cmd.subject);
    assert_eq!(event.traceparent, cmd.traceparent);
    assert_eq!(event.id, answer_id(&cmd, "evt.verify.failed.v1", ""));
    let data: VerifyEvent = serde_json::from_value(event.data.clone()).unwrap();
    assert_eq!(data.actor, "verifier");
    assert_eq!(data.plan_id, "0190e8a0-0000-7000-8000-0000000000aa");
    assert_eq!(data.verdict, "inconclusive");
    assert!(data.reason.contains("no data"), "{}", data.reason);
    assert_eq!(data.checks.len(), 1);
    let check = &data.checks[0];
    assert_eq!(check["name"], "check-1");
    assert_eq!(check["source"], "metric_1m");
    assert_eq!(check["query"], "resource=checkout");
    assert_eq!(check["threshold"], "p95_ms < 300");
    assert_eq!(check["verdict"], "inconclusive");
    assert_eq!(check["measurements"][0]["value"], serde_json::Value::Null);
    assert_eq!(check["measurements"][0]["passed"], serde_json::Value::Null);
    assert!(check["measurements"][0]["at"].is_string());
    assert!(check["reason"].as_str().unwrap().contains("no data"));
    assert_eq!(
        seen.lock().unwrap().clone(),
        [("metric_1m".to_string(), Verdict::Inconclusive.to_string())]
    );
}

#[tokio::test]
async fn a_pass_is_published_on_the_pass_topic() {
    let store = Metric1mStore::sqlite(sqlite_pool().await);
    let now = Utc::now();
    store
        .insert_batch(&[serde_json::from_value(json!({
            "tenant": "acme", "resource": "checkout", "metric": "p95_ms",
            "bucket": now - chrono::TimeDelta::minutes(2), "p95": 120.0
        }))
        .unwrap()])
        .await
        .unwrap();
    let worker = VerifierWorker::new(
        Verifier::default().with_source(METRIC_1M, Arc::new(Metric1mSource::new(store))),
    );
    let verify = json!({"checks": [{"source": "metric_1m", "query": "resource=checkout", "threshold": "p95_ms < 300"}]});
    let cmd = envelope(
        "cmd.verify.run",
        serde_json::to_value(command("acme", verify)).unwrap(),
    );
    let out = Collect::default();
    worker.handle(&cmd, &out).await.unwrap();
    let published = out.0.lock().unwrap().clone();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].kind, "evt.verify.pass.v1");
    assert_eq!(published[0].data["verdict"], "pass");
    assert_eq!(
        published[0].data["checks"][0]["measurements"][0]["value"],
        120.0
    );
}

#[tokio::test]
async fn a_malformed_command_is_poison() {
    let worker = VerifierWorker::new(Verifier::default());
    let out = Collect::default();
    let bad = envelope("cmd.verify.run", json!({"case": "nope"}));
    assert!(matches!(
        worker.handle(&bad, &out).await,
        Err(WorkerError::Poison(_))
    ));
    let wrong = envelope("cmd.exec.run", json!({}));
    assert!(matches!(
        worker.handle(&wrong, &out).await,
        Err(WorkerError::Poison(_))
    ));
    assert!(out.0.lock().unwrap().is_empty());
}
