//! The outbox relay against a real nats-server: every committed row reaches the stream once,
//! whatever fails in between.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bus::{
    BusError, Delivery, Envelope, JetStreamSettings, JetStreamTransport, Transport, STREAM_EVENTS,
};
use orchestrator::{Relay, RelayError, RelaySettings};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::helpers::{eventually, happy_path, TestApp};
use crate::nats::TestNats;
use crate::on_both_backends;

fn relay(app: &TestApp, transport: Arc<dyn Transport>, batch_size: u32) -> Relay {
    Relay::new(
        app.orchestrator.store().clone(),
        transport,
        app.orchestrator.metrics().clone(),
        Arc::new(Notify::new()),
        RelaySettings {
            batch_size,
            ..RelaySettings::default()
        },
    )
}

/// Relay until nothing is pending. An empty batch while rows are pending means another
/// claim still holds them (on PostgreSQL a dropped claim's rows stay locked until its
/// rollback has run): wait a little and try again, for up to ten seconds.
async fn drain(app: &TestApp, relay: &Relay) -> usize {
    let mut total = 0;
    for _ in 0..200 {
        match relay.relay_batch().await.expect("relay batch") {
            0 if app.orchestrator.store().outbox_pending().await.unwrap() == 0 => return total,
            0 => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            n => total += n,
        }
    }
    total
}

/// Every envelope in OPS_EVT, in stream order.
async fn stream_events(transport: &JetStreamTransport) -> Vec<Envelope> {
    let mut stream = transport.context().get_stream(STREAM_EVENTS).await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    let mut envelopes = Vec::new();
    for sequence in 1..=count {
        let message = stream.get_raw_message(sequence).await.unwrap();
        envelopes.push(Envelope::from_json(&message.payload).unwrap());
    }
    envelopes
}

/// Open cases and move them, returning every outbox message id the database holds for them.
async fn make_traffic(app: &TestApp, cases: usize, steps: usize) -> (Vec<Uuid>, HashSet<Uuid>) {
    let mut ids = Vec::new();
    for _ in 0..cases {
        let case = app.open_case("t-001").await;
        for (event, _) in happy_path().into_iter().take(steps) {
            app.advance(case, event).await;
        }
        ids.push(case);
    }
    let mut messages = HashSet::new();
    for case in &ids {
        messages.extend(app.outbox(*case).await.into_iter().map(|m| m.message_id));
    }
    (ids, messages)
}

on_both_backends!(
    every_committed_transition_reaches_the_stream_once,
    crate::helpers::without_relay
);
async fn every_committed_transition_reaches_the_stream_once(app: TestApp) {
    let Some(nats) = TestNats::start().await else {
        return;
    };
    let transport = Arc::new(
        JetStreamTransport::connect(&nats.url, &JetStreamSettings::default())
            .await
            .unwrap(),
    );
    let (cases, committed) = make_traffic(&app, 60, 4).await;
    assert_eq!(committed.len(), 60 * 5);

    let relay = relay(&app, transport.clone(), 64);
    assert_eq!(drain(&app, &relay).await, committed.len());
    assert_eq!(app.orchestrator.store().outbox_pending().await.unwrap(), 0);
    assert_eq!(drain(&app, &relay).await, 0, "nothing is published twice");

    let events = stream_events(&transport).await;
    let published: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        published.len(),
        committed.len(),
        "one stream message per row"
    );
    assert_eq!(published.iter().copied().collect::<HashSet<_>>(), committed);

    // Per case, the stream holds the versions in order; envelopes are CloudEvents.
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for event in &events {
        assert_eq!(event.specversion, "1.0");
        assert_eq!(event.kind, "evt.case.transition.v1");
        versions
            .entry(event.subject.clone())
            .or_default()
            .push(event.data["version"].as_i64().unwrap());
    }
    assert_eq!(versions.len(), cases.len());
    assert!(
        versions.values().all(|v| *v == vec![1, 2, 3, 4, 5]),
        "{versions:?}"
    );
    assert_eq!(
        app.metric("outbox_publish_total{status=\"acked\",topic=\"evt.case.transition.v1\"}")
            .await,
        300.0
    );
}

/// Publishes for real, then reports the acks as lost: the relay must not mark the rows.
struct AckLost {
    inner: Arc<JetStreamTransport>,
}

#[async_trait]
impl Transport for AckLost {
    async fn publish(&self, envelopes: &[Envelope]) -> Result<Vec<Delivery>, BusError> {
        self.inner.publish(envelopes).await?;
        Err(BusError::Unavailable(
            "connection lost before the acks were read".into(),
        ))
    }

    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }
}

on_both_backends!(
    a_relay_that_dies_between_publish_and_mark_causes_no_duplicate,
    crate::helpers::without_relay
);
async fn a_relay_that_dies_between_publish_and_mark_causes_no_duplicate(app: TestApp) {
    let Some(nats) = TestNats::start().await else {
        return;
    };
    let transport = Arc::new(
        JetStreamTransport::connect(&nats.url, &JetStreamSettings::default())
            .await
            .unwrap(),
    );
    let (_, committed) = make_traffic(&app, 10, 2).await;

    let crashing = relay(
        &app,
        Arc::new(AckLost {
            inner: transport.clone(),
        }),
        500,
    );
    assert!(matches!(
        crashing.relay_batch().await,
        Err(RelayError::Bus(_))
    ));
    assert_eq!(
        app.orchestrator.store().outbox_pending().await.unwrap(),
        committed.len() as i64,
        "nothing marked"
    );

    let healthy = relay(&app, transport.clone(), 500);
    assert_eq!(drain(&app, &healthy).await, committed.len());
    let events = stream_events(&transport).await;
    assert_eq!(
        events.len(),
        committed.len(),
        "the republished batch was deduplicated by Nats-Msg-Id"
    );
    assert_eq!(
        app.metric("outbox_publish_total{status=\"duplicate\",topic=\"evt.case.transition.v1\"}")
            .await,
        committed.len() as f64
    );
}

on_both_backends!(
    while_nats_is_down_rows_wait_and_then_drain_in_order,
    crate::helpers::without_relay
);
async fn while_nats_is_down_rows_wait_and_then_drain_in_order(app: TestApp) {
    let Some(mut nats) = TestNats::start().await else {
        return;
    };
    let transport = Arc::new(
        JetStreamTransport::connect(&nats.url, &JetStreamSettings::default())
            .await
            .unwrap(),
    );
    let relay = relay(&app, transport.clone(), 50);
    let case = app.open_case("t-001").await;
    assert_eq!(drain(&app, &relay).await, 1);

    nats.stop();
    for (event, _) in happy_path() {
        app.advance(case, event).await; // writes do not depend on the bus
    }
    assert!(
        relay.relay_batch().await.is_err(),
        "publishing fails while NATS is down"
    );
    assert!(transport.check().await.is_err());
    // Six transitions, and the outcome beside the last (CLOSED).
    assert_eq!(app.orchestrator.store().outbox_pending().await.unwrap(), 7);

    nats.resume().await;
    let mut drained = 0;
    for _ in 0..100 {
        match relay.relay_batch().await {
            Ok(n) => {
                drained += n;
                if app.orchestrator.store().outbox_pending().await.unwrap() == 0 {
                    break;
                }
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert_eq!(drained, 7, "the backlog drains once NATS is back");
    assert_nothing_lost_in_order(&stream_events(&transport).await);
}

/// The stream holds versions 1 to 7 of the case's transitions in order, and its outcome
/// (`evt.case.outcome.v1`, written with the last transition, in one transaction) once.
fn assert_nothing_lost_in_order(events: &[Envelope]) {
    let version = |e: &Envelope| e.data["version"].as_i64().unwrap();
    let (outcomes, transitions): (Vec<&Envelope>, Vec<&Envelope>) =
        events.iter().partition(|e| e.kind == "evt.case.outcome.v1");
    let versions: Vec<i64> = transitions.iter().map(|e| version(e)).collect();
    assert_eq!(
        versions,
        (1..=7).collect::<Vec<_>>(),
        "nothing lost, order kept"
    );
    assert_eq!(outcomes.iter().map(|e| version(e)).collect::<Vec<_>>(), [7]);
}

/// Counts how often each message id is handed to the bus.
struct Counting {
    inner: Arc<JetStreamTransport>,
    published: Arc<Mutex<HashMap<Uuid, usize>>>,
}

#[async_trait]
impl Transport for Counting {
    async fn publish(&self, envelopes: &[Envelope]) -> Result<Vec<Delivery>, BusError> {
        {
            let mut published = self.published.lock().unwrap();
            for envelope in envelopes {
                *published.entry(envelope.id).or_default() += 1;
            }
        }
        self.inner.publish(envelopes).await
    }

    async fn check(&self) -> Result<(), BusError> {
        self.inner.check().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_on_one_postgres_database_never_take_the_same_row() {
    crate::helpers::run_with(
        crate::helpers::Backend::Postgres,
        crate::helpers::without_relay,
        |app: TestApp| async move {
            let Some(nats) = TestNats::start().await else {
                return;
            };
            let transport = Arc::new(
                JetStreamTransport::connect(&nats.url, &JetStreamSettings::default())
                    .await
                    .unwrap(),
            );
            let (_, committed) = make_traffic(&app, 50, 3).await;
            let published = Arc::new(Mutex::new(HashMap::new()));
            let relays: Vec<Relay> = (0..2)
                .map(|_| {
                    relay(
                        &app,
                        Arc::new(Counting {
                            inner: transport.clone(),
                            published: published.clone(),
                        }),
                        7,
                    )
                })
                .collect();
            let (a, b) = tokio::join!(drain(&app, &relays[0]), drain(&app, &relays[1]));
            assert_eq!(a + b, committed.len());
            assert!(a > 0 && b > 0, "both relays took part: {a} and {b}");
            let published = published.lock().unwrap().clone();
            assert_eq!(published.keys().copied().collect::<HashSet<_>>(), committed);
            assert!(
                published.values().all(|n| *n == 1),
                "a row was published twice"
            );
            assert_eq!(stream_events(&transport).await.len(), committed.len());
        },
    )
    .await;
}

async fn serve_relays_through_an_outage(backend: crate::helpers::Backend) {
    let Some(database) = crate::helpers::TestDatabase::create(backend).await else {
        return;
    };
    let Some(mut nats) = TestNats::start().await else {
        return;
    };
    let mut config = database.config();
    config.bus.nats_url = Some(nats.url.clone());
    config.bus.relay_poll_interval_ms = 100;
    let app = TestApp::start(config).await;
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(
        (status.as_u16(), ready["checks"]["bus"].as_str()),
        (200, Some("ok"))
    );

    let case = app.open_case("t-001").await;
    let store = app.orchestrator.store().clone();
    eventually("the relay publishing the new case", 5, async || {
        store.outbox_pending().await.unwrap() == 0
    })
    .await;

    nats.stop();
    eventually("/readyz noticing the bus is gone", 10, async || {
        app.get_json("/readyz").await.0.as_u16() == 503
    })
    .await;
    let (_, problem) = app.get_json("/readyz").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("bus"),
        "{problem}"
    );
    assert_eq!(app.get_json("/livez").await.0.as_u16(), 200);
    for (event, _) in happy_path() {
        app.advance(case, event).await; // writes go on while the bus is down
    }
    assert_eq!(
        store.outbox_pending().await.unwrap(),
        7,
        "the rows wait in the outbox (six transitions and the outcome)"
    );

    nats.resume().await;
    eventually("the backlog draining after NATS is back", 30, async || {
        store.outbox_pending().await.unwrap() == 0
    })
    .await;
    eventually("/readyz recovering", 10, async || {
        app.get_json("/readyz").await.0.as_u16() == 200
    })
    .await;
    let reader = JetStreamTransport::connect(&nats.url, &JetStreamSettings::default())
        .await
        .unwrap();
    assert_nothing_lost_in_order(&stream_events(&reader).await);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_relays_through_a_nats_outage_on_sqlite() {
    serve_relays_through_an_outage(crate::helpers::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_relays_through_a_nats_outage_on_postgres() {
    serve_relays_through_an_outage(crate::helpers::Backend::Postgres).await;
}

async fn worker_events_over_nats(backend: crate::helpers::Backend) {
    use async_nats::jetstream::message::PublishMessage;

    let Some(database) = crate::helpers::TestDatabase::create(backend).await else {
        return;
    };
    let Some(nats) = TestNats::start().await else {
        return;
    };
    let mut config = database.config();
    config.bus.nats_url = Some(nats.url.clone());
    let app = TestApp::start(config).await;
    let case = app.case_in("ANALYZING").await;
    let publisher = JetStreamTransport::connect(&nats.url, &JetStreamSettings::default())
        .await
        .unwrap();
    let publish_raw = async |subject: &str, msg_id: String, payload: Vec<u8>| {
        let message = PublishMessage::build()
            .message_id(msg_id)
            .payload(payload.into());
        publisher
            .context()
            .send_publish(subject.to_string(), message)
            .await
            .unwrap()
            .await
            .unwrap();
    };

    let proposed = Envelope::new(
        Uuid::now_v7(),
        "opscase/planner",
        "evt.plan.proposed.v1",
        &case.to_string(),
        chrono::Utc::now(),
        serde_json::json!({"plan": crate::helpers::valid_plan()}),
    );
    // Two copies the stream keeps apart, as a redelivery past the duplicate window would be.
    for copy in ["a", "b"] {
        publish_raw(
            "evt.plan.proposed.v1",
            format!("{}-{copy}", proposed.id),
            proposed.to_json(),
        )
        .await;
    }
    eventually("the plan moving the case once", 10, async || {
        app.case(case).await["status"] == "WAIT_GATE"
            && app.metric("inbox_dedup_total").await == 1.0
    })
    .await;
    let events = app.timeline_events(case).await;
    assert_eq!(
        events,
        ["open", "start_analysis", "analysis_done", "plan_ready"]
    );

    let poison = b"{not json".to_vec();
    publish_raw("evt.verify.pass.v1", "poison-1".into(), poison.clone()).await;
    eventually("the poison message dead-lettered", 10, async || {
        app.metric("bus_dead_letter_total{consumer=\"orchestrator-verify\"}")
            .await
            == 1.0
    })
    .await;
    let dead = publisher
        .context()
        .get_stream(bus::STREAM_DEAD_LETTERS)
        .await
        .unwrap();
    let letter = dead.get_raw_message(1).await.unwrap();
    assert_eq!(
        letter.payload.to_vec(),
        poison,
        "the dead letter keeps the original bytes"
    );
    assert!(letter
        .headers
        .get("Opscase-Dead-Letter-Reason")
        .unwrap()
        .as_str()
        .contains("not a CloudEvents envelope"));
    assert_eq!(
        app.case(case).await["version"],
        4,
        "the poison changed nothing"
    );
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_events_over_nats_apply_once_and_poison_is_dead_lettered_on_sqlite() {
    worker_events_over_nats(crate::helpers::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_events_over_nats_apply_once_and_poison_is_dead_lettered_on_postgres() {
    worker_events_over_nats(crate::helpers::Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_in_another_process_is_woken_by_postgres_notify() {
    crate::helpers::run_with(
        crate::helpers::Backend::Postgres,
        crate::helpers::without_relay,
        |app: TestApp| async move {
            let Some(nats) = TestNats::start().await else {
                return;
            };
            let transport = Arc::new(
                JetStreamTransport::connect(&nats.url, &JetStreamSettings::default())
                    .await
                    .unwrap(),
            );
            // Its own wake-up and a poll interval of a minute: only a NOTIFY can make it publish soon.
            let relay = Relay::new(
                app.orchestrator.store().clone(),
                transport.clone(),
                app.orchestrator.metrics().clone(),
                Arc::new(Notify::new()),
                RelaySettings {
                    poll_interval: std::time::Duration::from_secs(60),
                    ..RelaySettings::default()
                },
            );
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let running = tokio::spawn(relay.run(stopped));
            tokio::time::sleep(std::time::Duration::from_millis(300)).await; // past its first, empty batch
            let case = app.open_case("t-001").await;
            let store = app.orchestrator.store().clone();
            eventually("a NOTIFY-woken publish", 5, async || {
                store.outbox_pending().await.unwrap() == 0
            })
            .await;
            let published = stream_events(&transport).await;
            assert_eq!(published.len(), 1);
            assert_eq!(published[0].subject, case.to_string());
            stop.send(true).unwrap();
            running.await.unwrap();
        },
    )
    .await;
}
