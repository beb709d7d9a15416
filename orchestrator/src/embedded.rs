//! The embedded bus: no server, the outbox table is the log. The relay hands each batch to
//! this transport, which delivers every message to the in-process consumers subscribed to its
//! topic; a row counts as delivered (and is marked published) only once every one of them has
//! handled it. A crash before that leaves the row unpublished, so it is delivered again after
//! a restart, and each consumer's inbox turns the repeat into a no-op.
//!
//! Long-running consumers (the executor's steps, the verifier's windows) must not hold up every
//! other message, so [`InProgress`] takes their commands off the relay at once but keeps each one
//! in the `bus_in_progress` table until its worker finished it, extending a lease meanwhile: the
//! embedded counterpart of JetStream's pending acks and in-progress acks. A command left there by
//! a crash is delivered again when the service starts (and any whose lease ran out, on a sweep).

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus::{
    BusError, ConsumerSettings, Delivery, Disposition, Envelope, Handled, Handler, Transport,
};
use chrono::Utc;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::model::DeadLetter;
use crate::store::Store;

/// An in-process consumer and the topics it takes (`evt.plan.>` matches a whole family).
pub struct Subscription {
    pub consumer: String,
    pub topics: Vec<String>,
    pub handler: Arc<dyn Handler>,
}

impl Subscription {
    fn wants(&self, topic: &str) -> bool {
        self.topics
            .iter()
            .any(|pattern| match pattern.strip_suffix('>') {
                Some(prefix) => topic.starts_with(prefix),
                None => pattern == topic,
            })
    }
}

pub struct EmbeddedTransport {
    store: Arc<dyn Store>,
    subscriptions: Vec<Subscription>,
    metrics: Metrics,
    /// Only `max_deliver` is used: the relay's backoff spaces the retries.
    policy: ConsumerSettings,
    attempts: Mutex<HashMap<(String, Uuid), i64>>,
}

impl EmbeddedTransport {
    pub fn new(
        store: Arc<dyn Store>,
        subscriptions: Vec<Subscription>,
        metrics: Metrics,
        max_deliver: i64,
    ) -> Self {
        let mut policy = ConsumerSettings::new("embedded", "outbox", ">");
        policy.max_deliver = max_deliver;
        policy.retry_delays = vec![Duration::ZERO];
        Self {
            store,
            subscriptions,
            metrics,
            policy,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Deliver one message to every subscriber that has not handled it yet.
    async fn deliver(&self, envelope: &Envelope) -> Result<(), String> {
        for subscription in self
            .subscriptions
            .iter()
            .filter(|s| s.wants(&envelope.kind))
        {
            let consumer = subscription.consumer.as_str();
            if self
                .store
                .inbox_contains(consumer, envelope.id)
                .await
                .map_err(|e| e.to_string())?
            {
                continue;
            }
            let span = bus::consume_span(consumer, envelope);
            let handled = tracing::Instrument::instrument(
                AssertUnwindSafe(subscription.handler.handle(envelope)).catch_unwind(),
                span,
            )
            .await
            .unwrap_or_else(|_| Handled::Poison("the handler panicked".into()));
            let reason = match &handled {
                Handled::Retry(reason) | Handled::Poison(reason) => reason.clone(),
                Handled::Done => String::new(),
            };
            let attempt = {
                let mut attempts = self.attempts.lock().expect("attempts lock");
                let count = attempts
                    .entry((consumer.to_string(), envelope.id))
                    .or_insert(0);
                *count += 1;
                *count
            };
            match bus::disposition(handled, attempt, &self.policy) {
                Disposition::Ack => {}
                Disposition::RetryAfter(_) => return Err(format!("{consumer}: {reason}")),
                Disposition::DeadLetter(reason) => {
                    dead_letter(
                        self.store.as_ref(),
                        &self.metrics,
                        consumer,
                        envelope,
                        reason,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
            }
            self.store
                .record_inbox(consumer, envelope.id, Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            self.attempts
                .lock()
                .expect("attempts lock")
                .remove(&(consumer.to_string(), envelope.id));
        }
        Ok(())
    }
}

/// Keep a message a consumer gave up on in the `dead_letter` table, and count it.
async fn dead_letter(
    store: &dyn Store,
    metrics: &Metrics,
    consumer: &str,
    envelope: &Envelope,
    reason: String,
) -> Result<(), crate::StoreError> {
    tracing::error!(consumer, message_id = %envelope.id, topic = %envelope.kind, %reason, "dead-lettering a message");
    store
        .insert_dead_letter(&DeadLetter {
            consumer: consumer.to_string(),
            message_id: envelope.id,
            topic: envelope.kind.clone(),
            envelope: serde_json::to_value(envelope).unwrap_or_default(),
            reason,
            created_at: Utc::now(),
        })
        .await?;
    metrics.dead_letter(consumer);
    Ok(())
}

#[async_trait]
impl Transport for EmbeddedTransport {
    async fn publish(&self, envelopes: &[Envelope]) -> Result<Vec<Delivery>, BusError> {
        let mut deliveries = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            if let Err(reason) = self.deliver(envelope).await {
                // Later messages wait for this one, so a case's messages arrive in order.
                deliveries.push(Delivery::Failed(reason));
                deliveries.resize(
                    envelopes.len(),
                    Delivery::Failed("waiting for an earlier message".into()),
                );
                break;
            }
            deliveries.push(Delivery::Acked { duplicate: false });
        }
        Ok(deliveries)
    }

    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }
}

impl crate::Orchestrator {
    /// Put a worker's event on the bus by way of the outbox (how in-process workers publish on
    /// the embedded bus). Publishing the same message id twice stores it once: `false` then.
    pub async fn publish_event(&self, envelope: &Envelope) -> Result<bool, crate::Error> {
        let mut headers = serde_json::Map::new();
        if let Some(traceparent) = &envelope.traceparent {
            headers.insert("traceparent".into(), traceparent.clone().into());
        }
        if let Some(tracestate) = &envelope.tracestate {
            headers.insert("tracestate".into(), tracestate.clone().into());
        }
        headers.insert("source".into(), envelope.source.clone().into());
        let message = crate::model::OutboxMessage {
            message_id: envelope.id,
            topic: envelope.kind.clone(),
            key: envelope.subject.clone(),
            payload: envelope.data.clone(),
            headers: serde_json::Value::Object(headers),
            created_at: Utc::now(),
        };
        // A message id already in the outbox is a redelivery: the insert fails, here or (when
        // the store defers it) at the commit.
        let mut tx = self.store().begin().await?;
        let written = match tx.append_outbox(&message).await {
            Ok(()) => tx.commit().await,
            Err(error) => Err(error),
        };
        match written {
            Ok(()) => {}
            Err(crate::StoreError::UniqueViolation(_)) => return Ok(false),
            Err(error) => return Err(error.into()),
        }
        self.outbox_written().notify_one();
        Ok(true)
    }
}

/// Workers of the embedded bus publish their events into the outbox, like everything else.
pub struct OutboxPublisher(pub Arc<crate::Orchestrator>);

#[async_trait]
impl bus::Publisher for OutboxPublisher {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.0
            .publish_event(&envelope)
            .await
            .map(|_| ())
            .map_err(|error| BusError::Unavailable(error.to_string()))
    }
}

/// Command claims in the database (embedded mode).
pub struct StoreClaims(pub Arc<dyn Store>);

#[async_trait]
impl bus::Claims for StoreClaims {
    async fn claim(&self, key: &str, holder: &str) -> Result<bus::Claim, BusError> {
        self.0
            .claim_command(key, holder, Utc::now())
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))
    }

    async fn finish(&self, key: &str, outcome: &serde_json::Value) -> Result<(), BusError> {
        self.0
            .finish_command(key, outcome, Utc::now())
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))
    }
}

/// How the embedded bus keeps a long-running consumer's commands in progress.
#[derive(Debug, Clone)]
pub struct InProgressSettings {
    /// A command stays taken this long without a heartbeat; a running worker extends it every
    /// third of it.
    pub lease: Duration,
    /// Deliveries before a command is dead-lettered: one that keeps failing, or keeps dying
    /// with its process, is not tried for ever.
    pub max_deliver: i64,
    /// Delay before the n-th retry of a command its worker could not handle for now (the last
    /// one repeats).
    pub retry_delays: Vec<Duration>,
    /// This process is the only consumer of the store (SQLite: one service owns the file), so at
    /// start-up every command still in progress was left by a process that is gone and is
    /// delivered again at once. Otherwise (PostgreSQL, where several services may share the
    /// embedded bus) only commands whose lease ran out are taken over.
    pub sole_consumer: bool,
}

impl InProgressSettings {
    pub fn new(max_deliver: i64, sole_consumer: bool) -> Self {
        Self {
            lease: Duration::from_secs(30),
            max_deliver,
            retry_delays: ConsumerSettings::new("in-progress", "outbox", ">").retry_delays,
            sole_consumer,
        }
    }
}

/// A long-running consumer on the embedded bus. The relay's delivery only records the command as
/// in progress (durably) and starts it on a task of its own; the command leaves
/// `bus_in_progress` (and enters the consumer's inbox) only when the handler finished it. A
/// handler that asks for a retry gets it after a delay, up to `max_deliver` deliveries; one that
/// gives up, or panics, dead-letters the command.
#[derive(Clone)]
pub struct InProgress {
    shared: Arc<InProgressShared>,
}

struct InProgressShared {
    consumer: String,
    handler: Arc<dyn Handler>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    settings: InProgressSettings,
    /// This process, as the holder of what it runs: a restart is a new holder.
    holder: String,
    /// Commands running in this process, so a delivery of one of them is not started twice.
    running: Mutex<HashSet<Uuid>>,
    tasks: Mutex<JoinSet<()>>,
}

impl InProgress {
    pub fn new(
        consumer: &str,
        handler: Arc<dyn Handler>,
        store: Arc<dyn Store>,
        metrics: Metrics,
        settings: InProgressSettings,
    ) -> Self {
        metrics.redeliveries_of(consumer);
        Self {
            shared: Arc::new(InProgressShared {
                consumer: consumer.to_string(),
                handler,
                store,
                metrics,
                settings,
                holder: format!("{consumer}/{}/{}", std::process::id(), Uuid::now_v7()),
                running: Mutex::new(HashSet::new()),
                tasks: Mutex::new(JoinSet::new()),
            }),
        }
    }

    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }

    /// Deliver again what a previous process left in progress, then keep the leases of what runs
    /// here alive and take over commands whose lease ran out, until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let shared = &self.shared;
        self.recover(true).await;
        let mut beat = tokio::time::interval(shared.settings.lease / 3);
        beat.tick().await;
        while !*shutdown.borrow() {
            tokio::select! {
                _ = beat.tick() => {}
                _ = shutdown.changed() => break,
            }
            let lease_until = Utc::now() + lease(&shared.settings);
            if let Err(error) = shared
                .store
                .extend_in_progress(&shared.consumer, &shared.holder, lease_until)
                .await
            {
                tracing::warn!(consumer = %shared.consumer, %error, "cannot extend the leases of running commands");
            }
            self.recover(false).await;
        }
    }

    /// Wait (up to `grace`) for the commands still running; the rest stay in progress and are
    /// delivered again after the restart.
    pub async fn drain(&self, grace: Duration) {
        let mut running = std::mem::take(&mut *self.shared.tasks.lock().expect("not poisoned"));
        let all_done = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!(
                consumer = %self.shared.consumer,
                "shutdown: commands still running stay in progress and run again after the restart"
            );
        }
    }

    /// Take over commands in progress that nobody runs: at start-up those left by a previous
    /// process (when this one is the sole consumer), and any whose lease ran out.
    async fn recover(&self, at_start: bool) {
        let shared = &self.shared;
        let left = match shared.store.in_progress(&shared.consumer).await {
            Ok(left) => left,
            Err(error) => {
                tracing::warn!(consumer = %shared.consumer, %error, "cannot read the commands in progress");
                return;
            }
        };
        let now = Utc::now();
        for delivery in left {
            let orphaned = delivery.lease_until < now
                || (at_start && shared.settings.sole_consumer && delivery.holder != shared.holder);
            if !orphaned || shared.is_running(delivery.message_id) {
                continue;
            }
            let envelope = match serde_json::from_value::<Envelope>(delivery.envelope.clone()) {
                Ok(envelope) => envelope,
                Err(error) => {
                    tracing::error!(consumer = %shared.consumer, message_id = %delivery.message_id, %error,
                        "a command in progress is not an envelope; it is left for an operator");
                    continue;
                }
            };
            tracing::warn!(
                consumer = %shared.consumer, message_id = %envelope.id, topic = %envelope.kind,
                case_id = %envelope.subject, holder = %delivery.holder,
                deliveries = delivery.deliveries,
                "delivering again a command that was in progress when its process stopped"
            );
            shared.metrics.redelivery(&shared.consumer);
            if let Handled::Retry(reason) = self.take(&envelope, Arrival::TakeOver).await {
                tracing::warn!(consumer = %shared.consumer, message_id = %envelope.id, %reason,
                    "cannot take over the command now; the next sweep tries again");
            }
        }
    }

    /// Record the command as in progress for this process and start it, unless it runs here
    /// already (or, taken over, was finished meanwhile).
    async fn take(&self, envelope: &Envelope, arrival: Arrival) -> Handled {
        let shared = &self.shared;
        if !shared
            .running
            .lock()
            .expect("not poisoned")
            .insert(envelope.id)
        {
            return Handled::Done;
        }
        let now = Utc::now();
        let lease_until = now + lease(&shared.settings);
        let (consumer, holder) = (shared.consumer.as_str(), shared.holder.as_str());
        let delivered = match arrival {
            Arrival::Relay => shared
                .store
                .deliver_in_progress(consumer, envelope, holder, lease_until, now)
                .await
                .map(Some),
            Arrival::TakeOver => {
                shared
                    .store
                    .redeliver_in_progress(consumer, envelope.id, holder, lease_until, now)
                    .await
            }
        };
        let deliveries = match delivered {
            Ok(Some(deliveries)) => deliveries,
            Ok(None) => {
                shared.stopped(envelope.id);
                return Handled::Done;
            }
            Err(error) => {
                shared.stopped(envelope.id);
                return Handled::Retry(format!("recording the command as in progress: {error}"));
            }
        };
        let this = self.clone();
        let envelope = envelope.clone();
        // The task goes on in the message's span: its logs keep the trace.
        let work = tracing::Instrument::in_current_span(async move {
            this.work(envelope, deliveries).await;
        });
        let mut tasks = shared.tasks.lock().expect("not poisoned");
        while tasks.try_join_next().is_some() {}
        tasks.spawn(work);
        Handled::Done
    }

    /// Run the command to an end the bus can act on: finished, or dead-lettered.
    async fn work(&self, envelope: Envelope, mut deliveries: i64) {
        let shared = &self.shared;
        let policy = ConsumerSettings {
            max_deliver: shared.settings.max_deliver,
            retry_delays: shared.settings.retry_delays.clone(),
            ..ConsumerSettings::new(&shared.consumer, "outbox", ">")
        };
        loop {
            let handled = if deliveries > shared.settings.max_deliver {
                // Delivered that often without finishing: its process died each time.
                Handled::Poison(format!(
                    "delivered {deliveries} times without finishing (bus.max_deliver = {})",
                    shared.settings.max_deliver
                ))
            } else {
                AssertUnwindSafe(shared.handler.handle(&envelope))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Handled::Poison("the handler panicked".into()))
            };
            match bus::disposition(handled, deliveries, &policy) {
                Disposition::Ack => break,
                Disposition::DeadLetter(reason) => {
                    shared
                        .until_stored("dead-lettering the command", || {
                            dead_letter(
                                shared.store.as_ref(),
                                &shared.metrics,
                                &shared.consumer,
                                &envelope,
                                reason.clone(),
                            )
                        })
                        .await;
                    break;
                }
                Disposition::RetryAfter(delay) => {
                    tokio::time::sleep(delay).await;
                    let now = Utc::now();
                    let lease_until = now + lease(&shared.settings);
                    match shared
                        .until_stored("counting the delivery", || {
                            shared.store.redeliver_in_progress(
                                &shared.consumer,
                                envelope.id,
                                &shared.holder,
                                lease_until,
                                now,
                            )
                        })
                        .await
                    {
                        Some(deliveries_now) => deliveries = deliveries_now,
                        None => break,
                    }
                }
            }
        }
        shared
            .until_stored("finishing the command", || {
                shared
                    .store
                    .finish_in_progress(&shared.consumer, envelope.id, Utc::now())
            })
            .await;
        shared.stopped(envelope.id);
    }
}

impl InProgressShared {
    fn is_running(&self, id: Uuid) -> bool {
        self.running.lock().expect("not poisoned").contains(&id)
    }

    fn stopped(&self, id: Uuid) {
        self.running.lock().expect("not poisoned").remove(&id);
    }

    /// Retry a write to the store with backoff until it succeeds: the command's outcome must
    /// not be lost to a passing database error. Meanwhile the command stays in progress.
    async fn until_stored<T, F, Fut>(&self, what: &str, mut write: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::StoreError>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match write().await {
                Ok(value) => return value,
                Err(error) => {
                    tracing::warn!(consumer = %self.consumer, %error, retry_in_ms = wait.as_millis() as u64, "{what} failed");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn lease(settings: &InProgressSettings) -> chrono::Duration {
    chrono::Duration::from_std(settings.lease).unwrap_or(chrono::Duration::seconds(30))
}

/// How a command reached [`InProgress::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// From the relay: the first delivery, or a repeat of one whose outbox row was not marked.
    Relay,
    /// Taken over from a process that stopped, or whose lease ran out.
    TakeOver,
}

#[async_trait]
impl Handler for InProgress {
    async fn handle(&self, envelope: &Envelope) -> Handled {
        self.take(envelope, Arrival::Relay).await
    }
}
