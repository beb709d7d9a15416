//! The watchdog on both backends: a case stalled on a worker is noted (timeline row, metric)
//! with its command delivered again, and parked a bound later; a case waiting for a person is
//! noted once and left alone. Sweeps are run with a clock moved forward, not by waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bus::{Envelope, Handled, Handler};
use chrono::Utc;
use opscase::Config;
use orchestrator::watchdog::WatchdogSettings;
use orchestrator::{EmbeddedTransport, Relay, RelaySettings, Subscription};
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;
use workflow::watchdog::Verdict;
use workflow::{Event, Status};

use crate::helpers::TestApp;
use crate::on_both_backends;

/// No workers and no relay of the service's own: the test plays a planner that takes its
/// command and dies before answering.
fn no_workers(config: &mut Config) {
    config.workers.in_process = false;
    config.bus.relay_in_process = false;
    config.watchdog.enabled = false;
}

fn settings() -> WatchdogSettings {
    WatchdogSettings {
        stall_after: Duration::from_secs(600),
        interval: Duration::from_secs(30),
    }
}

/// Takes every command and never answers; counts the deliveries.
#[derive(Default)]
struct Silent {
    deliveries: AtomicUsize,
}

#[async_trait]
impl Handler for Silent {
    async fn handle(&self, _envelope: &Envelope) -> Handled {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        Handled::Done
    }
}

fn relay_to(app: &TestApp, planner: Arc<Silent>) -> Relay {
    let transport = EmbeddedTransport::new(
        app.orchestrator.store().clone(),
        vec![Subscription {
            consumer: "planner".into(),
            topics: vec!["cmd.plan.generate".into()],
            handler: planner,
        }],
        app.orchestrator.metrics().clone(),
        5,
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
    a_stalled_planner_is_noted_its_command_redelivered_then_the_case_parked,
    super::no_workers
);
async fn a_stalled_planner_is_noted_its_command_redelivered_then_the_case_parked(app: TestApp) {
    let response = app
        .client
        .post(app.url("/v1/cases"))
        .json(&json!({"title": "checkout errors", "tenant": "t-001", "automation": "auto"}))
        .send()
        .await
        .unwrap();
    let case: Uuid = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for event in ["start_analysis", "analysis_done"] {
        app.advance(case, json!({"event": event})).await;
    }
    let planner = Arc::new(Silent::default());
    let relay = relay_to(&app, planner.clone());
    while relay.relay_batch().await.unwrap() > 0 {}
    assert_eq!(planner.deliveries.load(Ordering::SeqCst), 1);
    let now = Utc::now();

    let early = app
        .orchestrator
        .watchdog_sweep(&settings(), now + chrono::Duration::seconds(599))
        .await
        .unwrap();
    assert!(early.is_empty(), "within the bound: {early:?}");

    let noted = app
        .orchestrator
        .watchdog_sweep(&settings(), now + chrono::Duration::seconds(601))
        .await
        .unwrap();
    assert_eq!(noted.len(), 1, "{noted:?}");
    assert_eq!(noted[0].verdict, Verdict::Note { redeliver: true });
    let row = app.timeline(case).await.pop().unwrap();
    assert_eq!(row["event"], "watchdog");
    assert_eq!(row["outcome"], "noted");
    assert_eq!(row["to_status"], "PLANNING");
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("cmd.plan.generate delivered again"),
        "{row:#}"
    );
    assert_eq!(row["meta"]["redelivered"]["topic"], "cmd.plan.generate");
    assert_eq!(
        app.metric("case_stall_total{status=\"PLANNING\"}").await,
        1.0
    );
    // Delivered again, to a consumer that had handled it: the same message, past its inbox.
    while relay.relay_batch().await.unwrap() > 0 {}
    assert_eq!(planner.deliveries.load(Ordering::SeqCst), 2);

    let again = app
        .orchestrator
        .watchdog_sweep(&settings(), now + chrono::Duration::seconds(900))
        .await
        .unwrap();
    assert!(again.is_empty(), "noted once per stall: {again:?}");

    let failed = app
        .orchestrator
        .watchdog_sweep(&settings(), now + chrono::Duration::seconds(1202))
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].verdict, Verdict::Fail(Event::PlanFailed));
    assert_eq!(failed[0].status, Status::Planning);
    let case_now = app.case(case).await;
    assert_eq!(case_now["status"], "PARKED");
    let row = app.timeline(case).await.pop().unwrap();
    assert_eq!(row["event"], "plan_failed");
    assert_eq!(row["actor"], "watchdog");
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("no answer to cmd.plan.generate in PLANNING"),
        "{row:#}"
    );
    let parked = app
        .orchestrator
        .watchdog_sweep(&settings(), now + chrono::Duration::seconds(9999))
        .await
        .unwrap();
    assert!(parked.is_empty(), "a parked case is not watched");
}

on_both_backends!(
    a_case_waiting_for_a_person_is_noted_once_and_never_parked,
    super::no_workers
);
async fn a_case_waiting_for_a_person_is_noted_once_and_never_parked(app: TestApp) {
    let executing = app.case_in("EXECUTING").await; // by hand: no command was sent
    let at_gate = app.case_in("WAIT_GATE").await;
    let now = Utc::now();
    // Past the bound of valid_plan's execution (see the next test).
    let first = app
        .orchestrator
        .watchdog_sweep(&settings(), now + chrono::Duration::seconds(1501))
        .await
        .unwrap();
    assert_eq!(
        first.len(),
        1,
        "WAIT_GATE without a gate command waits for an approver"
    );
    assert_eq!(first[0].case_id, executing);
    assert_eq!(first[0].verdict, Verdict::Note { redeliver: false });
    let row = app.timeline(executing).await.pop().unwrap();
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("the case waits for someone to act"),
        "{row:#}"
    );
    let later = app
        .orchestrator
        .watchdog_sweep(&settings(), now + chrono::Duration::seconds(99_999))
        .await
        .unwrap();
    assert!(later.is_empty(), "{later:?}");
    assert_eq!(app.case(executing).await["status"], "EXECUTING");
    assert_eq!(app.case(at_gate).await["status"], "WAIT_GATE");
    assert_eq!(
        app.metric("case_stall_total{status=\"EXECUTING\"}").await,
        1.0
    );
}

on_both_backends!(
    the_plan_extends_the_bound_of_an_execution,
    super::no_workers
);
async fn the_plan_extends_the_bound_of_an_execution(app: TestApp) {
    // valid_plan's step and rollback: 300 s with one retry, and 300 s.
    let case = app.case_in("EXECUTING").await;
    let now = Utc::now();
    let within = app
        .orchestrator
        .watchdog_sweep(&settings(), now + chrono::Duration::seconds(600 + 899))
        .await
        .unwrap();
    assert!(within.is_empty(), "{within:?}");
    let past = app
        .orchestrator
        .watchdog_sweep(&settings(), now + chrono::Duration::seconds(600 + 901))
        .await
        .unwrap();
    assert_eq!(past.len(), 1);
    assert_eq!(past[0].case_id, case);
}
