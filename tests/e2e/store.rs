//! The stores' transactions directly: writes they defer (and send with the next read or the
//! commit) behave like writes sent at once.

use chrono::Utc;
use orchestrator::model::{Automation, Case, NewTimelineEntry, OutboxMessage, Outcome, Severity};
use orchestrator::store::{IdempotencyRecord, KeyOrCase, IDEMPOTENCY_KEY};
use orchestrator::{Store, StoreError};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Backend, TestDatabase};

async fn open(backend: Backend) -> Option<(TestDatabase, std::sync::Arc<dyn Store>)> {
    let database = TestDatabase::create(backend).await?;
    let store = orchestrator::connect(&database.url(), 4).await.unwrap();
    store.migrate().await.unwrap();
    Some((database, store))
}

fn new_case() -> Case {
    let now = Utc::now();
    Case {
        id: Uuid::now_v7(),
        tenant: "default".into(),
        title: "deferred".into(),
        severity: Severity::High,
        labels: Default::default(),
        automation: Automation::Manual,
        evidence: Vec::new(),
        status: workflow::Status::New,
        version: 1,
        resolution: None,
        current_plan_id: None,
        source: "api".into(),
        created_by: "test".into(),
        created_at: now,
        updated_at: now,
    }
}

fn opened(case: &Case) -> NewTimelineEntry {
    NewTimelineEntry {
        case_id: case.id,
        version: 1,
        event: "open".into(),
        outcome: Outcome::Applied,
        from_status: None,
        to_status: Some(workflow::Status::New),
        actor: "test".into(),
        principal_id: None,
        principal_name: None,
        reason: None,
        correlation_id: None,
        request_id: None,
        meta: Default::default(),
        created_at: case.created_at,
    }
}

fn key_record(key: &str) -> IdempotencyRecord {
    let now = Utc::now();
    IdempotencyRecord {
        scope: "test".into(),
        key: key.into(),
        fingerprint: "f".into(),
        status_code: 201,
        response: json!({"ok": true}),
        headers: json!({}),
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
    }
}

async fn deferred_writes_are_read_back_and_committed_together(backend: Backend) {
    let Some((database, store)) = open(backend).await else {
        return;
    };
    let case = new_case();
    let mut tx = store.begin().await.unwrap();
    tx.insert_case(&case).await.unwrap();
    tx.record_timeline(&opened(&case)).await.unwrap();
    // A read in the same transaction sees the writes before it.
    let locked = tx
        .lock_case(case.id)
        .await
        .unwrap()
        .expect("the case just inserted");
    assert_eq!(locked.case.title, "deferred");
    let mut moved = locked.case.clone();
    moved.status = workflow::Status::Analyzing;
    moved.version = 2;
    tx.update_case(&moved).await.unwrap();
    tx.append_outbox(&OutboxMessage {
        message_id: Uuid::now_v7(),
        topic: "evt.case.transition.v1".into(),
        key: case.id.to_string(),
        payload: json!({"to": "ANALYZING"}),
        headers: json!({}),
        created_at: Utc::now(),
    })
    .await
    .unwrap();
    tx.save_idempotency(&key_record("k-1")).await.unwrap();
    tx.commit().await.unwrap();

    let stored = store.get_case(case.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.version),
        (workflow::Status::Analyzing, 2)
    );
    assert_eq!(store.timeline(case.id, None, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.outbox_for(&case.id.to_string()).await.unwrap().len(),
        1
    );
    let mut tx = store.begin().await.unwrap();
    let record = tx
        .find_idempotency("test", "k-1", Utc::now())
        .await
        .unwrap();
    assert_eq!(record.map(|r| r.status_code), Some(201));
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deferred_writes_are_read_back_and_committed_together() {
    deferred_writes_are_read_back_and_committed_together(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deferred_writes_are_read_back_and_committed_together() {
    deferred_writes_are_read_back_and_committed_together(Backend::Postgres).await;
}

/// Two processes racing one idempotency key on PostgreSQL: both looked and found nothing; the
/// later commit fails with the key's violation (the service answers "in flight") and keeps
/// nothing it wrote. (On SQLite write transactions never overlap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_key_saved_by_a_concurrent_transaction_fails_the_later_commit() {
    let Some((database, store)) = open(Backend::Postgres).await else {
        return;
    };
    let mut first = store.begin().await.unwrap();
    let mut second = store.begin().await.unwrap();
    let now = Utc::now();
    assert!(first
        .find_idempotency("test", "race", now)
        .await
        .unwrap()
        .is_none());
    assert!(second
        .find_idempotency("test", "race", now)
        .await
        .unwrap()
        .is_none());
    first.save_idempotency(&key_record("race")).await.unwrap();
    first.commit().await.unwrap();

    let loser = new_case();
    second.insert_case(&loser).await.unwrap();
    second.save_idempotency(&key_record("race")).await.unwrap();
    match second.commit().await {
        Err(StoreError::UniqueViolation(constraint)) => assert_eq!(constraint, IDEMPOTENCY_KEY),
        other => panic!("expected the idempotency key's violation, got {other:?}"),
    }
    assert!(store.get_case(loser.id).await.unwrap().is_none());
    database.drop_database().await;
}

async fn a_transition_reads_the_key_or_else_the_case(backend: Backend) {
    let Some((database, store)) = open(backend).await else {
        return;
    };
    let case = new_case();
    let mut expired = key_record("expired");
    expired.expires_at = Utc::now() - chrono::Duration::seconds(1);
    let mut tx = store.begin().await.unwrap();
    tx.insert_case(&case).await.unwrap();
    tx.save_idempotency(&key_record("live")).await.unwrap();
    tx.save_idempotency(&expired).await.unwrap();
    tx.commit().await.unwrap();

    let now = Utc::now();
    let mut tx = store.begin().await.unwrap();
    match tx
        .find_idempotency_or_lock("test", "live", now, case.id)
        .await
    {
        Ok(KeyOrCase::Key(record)) => assert_eq!(record.status_code, 201),
        other => panic!("a live key is answered from its record, got {other:?}"),
    }
    for key in ["expired", "unused"] {
        match tx.find_idempotency_or_lock("test", key, now, case.id).await {
            Ok(KeyOrCase::Case(Some(locked))) => assert_eq!(locked.case.id, case.id),
            other => panic!("key {key:?}: expected the locked case, got {other:?}"),
        }
    }
    match tx
        .find_idempotency_or_lock("test", "unused", now, Uuid::now_v7())
        .await
    {
        Ok(KeyOrCase::Case(None)) => {}
        other => panic!("an unknown case is none, got {other:?}"),
    }
    drop(tx);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_transition_reads_the_key_or_else_the_case() {
    a_transition_reads_the_key_or_else_the_case(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_transition_reads_the_key_or_else_the_case() {
    a_transition_reads_the_key_or_else_the_case(Backend::Postgres).await;
}
