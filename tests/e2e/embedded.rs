//! The embedded bus (the default, no server): the outbox is the log, in-process consumers get
//! each message, and a row is done only when every consumer handled it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bus::{Envelope, Handled, Handler};
use chrono::Utc;
use orchestrator::{
    EmbeddedTransport, InProgress, InProgressSettings, Relay, RelaySettings, Subscription,
};
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::helpers::{eventually, valid_plan, TestApp};
use crate::on_both_backends;

fn plan_proposed(case: Uuid) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        "opscase/planner",
        "evt.plan.proposed.v1",
        &case.to_string(),
        Utc::now(),
        json!({"plan": valid_plan()}),
    )
}

on_both_backends!(a_worker_event_on_the_embedded_bus_moves_the_case_once);
async fn a_worker_event_on_the_embedded_bus_moves_the_case_once(app: TestApp) {
    let case = app.case_in("ANALYZING").await;
    let event = plan_proposed(case);
    assert!(app.orchestrator.publish_event(&event).await.unwrap());
    assert!(
        !app.orchestrator.publish_event(&event).await.unwrap(),
        "the same message id is stored once"
    );
    eventually("the plan moving the case", 5, async || {
        app.case(case).await["status"] == "WAIT_GATE"
    })
    .await;
    let store = app.orchestrator.store().clone();
    eventually("every row delivered", 5, async || {
        store.outbox_pending().await.unwrap() == 0
    })
    .await;
    assert_eq!(app.case(case).await["version"], 4);
    let events = app.timeline_events(case).await;
    assert_eq!(
        events,
        ["open", "start_analysis", "analysis_done", "plan_ready"]
    );
}

/// Fails its first `failures` deliveries, then succeeds; counts what it saw.
struct Flaky {
    failures: usize,
    calls: AtomicUsize,
    done: AtomicUsize,
    poison: bool,
}

#[async_trait]
impl Handler for Flaky {
    async fn handle(&self, _envelope: &Envelope) -> Handled {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.poison {
            return Handled::Poison("cannot read this".into());
        }
        if call < self.failures {
            return Handled::Retry("not yet".into());
        }
        self.done.fetch_add(1, Ordering::SeqCst);
        Handled::Done
    }
}

fn embedded_relay(app: &TestApp, handler: Arc<Flaky>, max_deliver: i64) -> Relay {
    let transport = EmbeddedTransport::new(
        app.orchestrator.store().clone(),
        vec![Subscription {
            consumer: "test-consumer".into(),
            topics: vec!["evt.case.>".into()],
            handler,
        }],
        app.orchestrator.metrics().clone(),
        max_deliver,
    );
    Relay::new(
        app.orchestrator.store().clone(),
        Arc::new(transport),
        app.orchestrator.metrics().clone(),
        Arc::new(Notify::new()),
        RelaySettings::default(),
    )
}

on_both_backends!(
    an_unacked_message_is_delivered_again_after_a_restart,
    crate::helpers::without_relay
);
async fn an_unacked_message_is_delivered_again_after_a_restart(app: TestApp) {
    let case = app.open_case("t-001").await;
    let flaky = Arc::new(Flaky {
        failures: 1,
        calls: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        poison: false,
    });

    // The consumer fails: the row is not done, and stays in the outbox.
    let before_crash = embedded_relay(&app, flaky.clone(), 5);
    assert!(before_crash.relay_batch().await.is_err());
    assert_eq!(app.orchestrator.store().outbox_pending().await.unwrap(), 1);
    drop(before_crash);

    // A new process (a new transport, nothing in memory) delivers it again, once.
    let after_restart = embedded_relay(&app, flaky.clone(), 5);
    assert_eq!(after_restart.relay_batch().await.unwrap(), 1);
    assert_eq!(after_restart.relay_batch().await.unwrap(), 0);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    assert_eq!(flaky.done.load(Ordering::SeqCst), 1);
    assert_eq!(app.orchestrator.store().outbox_pending().await.unwrap(), 0);

    // Handled rows are not handed over again even if they were never marked (a crash between
    // the handler's ack and the mark): the inbox remembers.
    app.advance(case, json!({"event": "start_analysis"})).await;
    let message = app.outbox(case).await.pop().unwrap();
    app.orchestrator
        .store()
        .record_inbox("test-consumer", message.message_id, Utc::now())
        .await
        .unwrap();
    assert_eq!(after_restart.relay_batch().await.unwrap(), 1);
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        2,
        "the inbox turned the redelivery into a no-op"
    );
}

on_both_backends!(
    a_message_that_keeps_failing_is_dead_lettered_not_dropped,
    crate::helpers::without_relay
);
async fn a_message_that_keeps_failing_is_dead_lettered_not_dropped(app: TestApp) {
    app.open_case("t-001").await;
    let failing = Arc::new(Flaky {
        failures: usize::MAX,
        calls: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        poison: false,
    });
    let relay = embedded_relay(&app, failing.clone(), 3);
    for _ in 0..2 {
        assert!(relay.relay_batch().await.is_err());
    }
    assert_eq!(
        relay.relay_batch().await.unwrap(),
        1,
        "the third delivery gives up and moves on"
    );
    assert_eq!(failing.calls.load(Ordering::SeqCst), 3);
    let letters = app.orchestrator.store().dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].consumer, "test-consumer");
    assert!(
        letters[0].reason.contains("3 deliveries"),
        "{}",
        letters[0].reason
    );
    assert_eq!(letters[0].envelope["type"], "evt.case.transition.v1");
    assert_eq!(
        app.metric("bus_dead_letter_total{consumer=\"test-consumer\"}")
            .await,
        1.0
    );

    app.open_case("t-001").await;
    let poison = Arc::new(Flaky {
        failures: 0,
        calls: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        poison: true,
    });
    assert_eq!(
        embedded_relay(&app, poison.clone(), 3)
            .relay_batch()
            .await
            .unwrap(),
        1,
        "poison is not retried"
    );
    assert_eq!(poison.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        app.orchestrator.store().dead_letters().await.unwrap().len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_while_the_process_is_dead_is_delivered_after_restart() {
    use crate::helpers::{client_with, Backend, TestDatabase, ADMIN_KEY};
    use crate::restart::{kill_hard, serve, terminate};

    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let client = client_with(ADMIN_KEY);
    let first = serve(&database, Some(ADMIN_KEY));
    let created: serde_json::Value = client
        .post(format!("{}/v1/cases", first.base))
        .json(&json!({"title": "crash test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let case: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let started = client
        .patch(format!("{}/v1/cases/{case}/transition", first.base))
        .header("Idempotency-Key", "start")
        .json(&json!({"event": "start_analysis"}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    kill_hard(first);

    // A worker's event is committed to the outbox while no process is there to deliver it.
    let store = orchestrator::connect(&database.url(), 2).await.unwrap();
    let writer = orchestrator::Orchestrator::new(
        store.clone(),
        orchestrator::Metrics::new(),
        orchestrator::Settings::default(),
    );
    assert!(writer.publish_event(&plan_proposed(case)).await.unwrap());
    store.close().await;

    let second = serve(&database, Some(ADMIN_KEY));
    let url = format!("{}/v1/cases/{case}", second.base);
    eventually("the event delivered after the restart", 5, async || {
        let case: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        case["status"] == "WAIT_GATE"
    })
    .await;
    terminate(second);
}

on_both_backends!(
    published_rows_are_pruned_after_the_retention_and_pending_ones_kept,
    crate::helpers::without_relay
);
async fn published_rows_are_pruned_after_the_retention_and_pending_ones_kept(app: TestApp) {
    let delivered = app.open_case("t-001").await;
    let idle = Arc::new(Flaky {
        failures: 0,
        calls: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        poison: false,
    });
    assert_eq!(
        embedded_relay(&app, idle, 5).relay_batch().await.unwrap(),
        1
    );
    let waiting = app.open_case("t-001").await; // committed after the relay ran: unpublished
    let store = app.orchestrator.store().clone();

    assert_eq!(
        store
            .prune_outbox(Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0,
        "too recent"
    );
    assert_eq!(
        store
            .prune_outbox(Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert!(app.outbox(delivered).await.is_empty());
    assert_eq!(
        app.outbox(waiting).await.len(),
        1,
        "an unpublished row is never pruned"
    );
    assert_eq!(store.outbox_pending().await.unwrap(), 1);
}

/// `database.sqlite_synchronous` reaches SQLite: FULL by default, NORMAL when asked.
#[tokio::test]
async fn the_sqlite_durability_setting_reaches_the_database() {
    for (setting, pragma) in [
        (orchestrator::SqliteDurability::Full, 2_i64),
        (orchestrator::SqliteDurability::Normal, 1),
    ] {
        let database = crate::helpers::TestDatabase::create(crate::helpers::Backend::Sqlite)
            .await
            .unwrap();
        let mut config = database.config();
        config.database.sqlite_synchronous = setting;
        let app = crate::helpers::TestApp::start(config).await;
        let case = app.open_case("t-001").await;
        app.advance(case, serde_json::json!({"event": "start_analysis"}))
            .await;
        let orchestrator::SqlPool::Sqlite(pool) = app.orchestrator.store().pool() else {
            panic!("an SQLite store");
        };
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(synchronous, pragma, "{setting:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Long-running consumers: a command stays in `bus_in_progress` until its handler finished it.

/// The consumer of these tests: not the service's own `executor`, whose start-up takeover
/// would otherwise take the tests' commands.
const CONSUMER: &str = "test-executor";

/// Waits for `release` before it answers; counts its calls and answers with `outcomes` in turn
/// (the last one repeats).
struct Slow {
    release: Arc<Notify>,
    calls: AtomicUsize,
    outcomes: Vec<Handled>,
}

impl Slow {
    fn new(outcomes: Vec<Handled>) -> Arc<Self> {
        Arc::new(Self {
            release: Arc::new(Notify::new()),
            calls: AtomicUsize::new(0),
            outcomes,
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, _envelope: &Envelope) -> Handled {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.release.notified().await;
        self.outcomes[call.min(self.outcomes.len() - 1)].clone()
    }
}

fn exec_command(case: Uuid) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        "opscase/orchestrator",
        "cmd.exec.run",
        &case.to_string(),
        Utc::now(),
        json!({}),
    )
}

fn in_progress(app: &TestApp, handler: Arc<Slow>, sole_consumer: bool) -> InProgress {
    let mut settings = InProgressSettings::new(3, sole_consumer);
    settings.retry_delays = vec![std::time::Duration::ZERO];
    InProgress::new(
        CONSUMER,
        handler,
        app.orchestrator.store().clone(),
        app.orchestrator.metrics().clone(),
        settings,
    )
}

on_both_backends!(a_long_command_is_in_progress_until_its_handler_finished);
async fn a_long_command_is_in_progress_until_its_handler_finished(app: TestApp) {
    let store = app.orchestrator.store().clone();
    let slow = Slow::new(vec![
        Handled::Retry("the database blinked".into()),
        Handled::Done,
    ]);
    let tracked = in_progress(&app, slow.clone(), true);
    let command = exec_command(Uuid::now_v7());

    assert_eq!(
        tracked.handle(&command).await,
        Handled::Done,
        "taken at once"
    );
    assert_eq!(
        tracked.handle(&command).await,
        Handled::Done,
        "a repeat while it runs is not started twice"
    );
    eventually("the handler to start", 5, async || slow.calls() == 1).await;
    let pending = store.in_progress(CONSUMER).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].message_id, command.id);
    assert_eq!(pending[0].deliveries, 1);
    assert!(!store.inbox_contains(CONSUMER, command.id).await.unwrap());

    slow.release.notify_one(); // a retry: delivered again, in this process
    eventually("the second delivery", 5, async || slow.calls() == 2).await;
    assert_eq!(store.in_progress(CONSUMER).await.unwrap()[0].deliveries, 2);
    slow.release.notify_one();
    eventually("the command finished", 5, async || {
        store.in_progress(CONSUMER).await.unwrap().is_empty()
    })
    .await;
    assert!(store.inbox_contains(CONSUMER, command.id).await.unwrap());
    assert_eq!(slow.calls(), 2);
    assert!(store.dead_letters().await.unwrap().is_empty());
}

on_both_backends!(a_command_left_in_progress_is_taken_over_at_start_or_when_its_lease_ran_out);
async fn a_command_left_in_progress_is_taken_over_at_start_or_when_its_lease_ran_out(app: TestApp) {
    let store = app.orchestrator.store().clone();
    let now = Utc::now();
    let (left, leased) = (exec_command(Uuid::now_v7()), exec_command(Uuid::now_v7()));
    // What a process that died left behind: one lease still running, one run out.
    store
        .deliver_in_progress(
            CONSUMER,
            &left,
            "gone",
            now - chrono::Duration::seconds(1),
            now,
        )
        .await
        .unwrap();
    store
        .deliver_in_progress(
            CONSUMER,
            &leased,
            "gone",
            now + chrono::Duration::hours(1),
            now,
        )
        .await
        .unwrap();

    // Sharing the store (PostgreSQL): only the expired lease is taken over.
    let slow = Slow::new(vec![Handled::Done]);
    let shared = in_progress(&app, slow.clone(), false);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn({
        let shared = shared.clone();
        async move { shared.run(stopped).await }
    });
    eventually("the expired command taken over", 5, async || {
        slow.calls() == 1
    })
    .await;
    slow.release.notify_one();
    eventually("it finished", 5, async || {
        store.in_progress(CONSUMER).await.unwrap().len() == 1
    })
    .await;
    let _ = stop.send(true);
    run.await.unwrap();
    assert!(store.inbox_contains(CONSUMER, left.id).await.unwrap());
    let still = store.in_progress(CONSUMER).await.unwrap();
    assert_eq!(still[0].message_id, leased.id, "a live lease is left alone");

    // The sole consumer (SQLite): everything a previous process left is delivered at once.
    let slow = Slow::new(vec![Handled::Done]);
    let sole = in_progress(&app, slow.clone(), true);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn({
        let sole = sole.clone();
        async move { sole.run(stopped).await }
    });
    eventually("the leased command taken over", 5, async || {
        slow.calls() == 1
    })
    .await;
    slow.release.notify_one();
    eventually("it finished", 5, async || {
        store.in_progress(CONSUMER).await.unwrap().is_empty()
    })
    .await;
    let _ = stop.send(true);
    run.await.unwrap();
    assert_eq!(
        app.metric("bus_redelivery_total{consumer=\"test-executor\"}")
            .await,
        2.0
    );
}

on_both_backends!(a_command_that_keeps_dying_with_its_process_is_dead_lettered);
async fn a_command_that_keeps_dying_with_its_process_is_dead_lettered(app: TestApp) {
    let store = app.orchestrator.store().clone();
    let command = exec_command(Uuid::now_v7());
    let now = Utc::now();
    // Delivered max_deliver (3) times already, each time by a process that died.
    for _ in 0..3 {
        store
            .deliver_in_progress(CONSUMER, &command, "gone", now, now)
            .await
            .unwrap();
    }
    let slow = Slow::new(vec![Handled::Done]);
    let tracked = in_progress(&app, slow.clone(), true);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn({
        let tracked = tracked.clone();
        async move { tracked.run(stopped).await }
    });
    eventually("the command dead-lettered and finished", 5, async || {
        store.dead_letters().await.unwrap().len() == 1
            && store.in_progress(CONSUMER).await.unwrap().is_empty()
    })
    .await;
    let _ = stop.send(true);
    run.await.unwrap();
    let letter = &store.dead_letters().await.unwrap()[0];
    assert_eq!(letter.message_id, command.id);
    assert!(letter.reason.contains("4 times"), "{}", letter.reason);
    assert_eq!(slow.calls(), 0, "not run a fourth time");
    assert!(store.in_progress(CONSUMER).await.unwrap().is_empty());
    assert_eq!(
        app.metric("bus_dead_letter_total{consumer=\"test-executor\"}")
            .await,
        1.0
    );
}
