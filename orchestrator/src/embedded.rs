//! The embedded bus: no server, the outbox table is the log. The relay hands each batch to
//! this transport, which delivers every message to the in-process consumers subscribed to its
//! topic; a row counts as delivered (and is marked published) only once every one of them has
//! handled it. A crash before that leaves the row unpublished, so it is delivered again after
//! a restart, and each consumer's inbox turns the repeat into a no-op.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus::{
    BusError, ConsumerSettings, Delivery, Disposition, Envelope, Handled, Handler, Transport,
};
use chrono::Utc;
use futures::FutureExt;
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
                    tracing::error!(consumer, message_id = %envelope.id, topic = %envelope.kind, %reason, "dead-lettering a message");
                    self.store
                        .insert_dead_letter(&DeadLetter {
                            consumer: consumer.to_string(),
                            message_id: envelope.id,
                            topic: envelope.kind.clone(),
                            envelope: serde_json::to_value(envelope).unwrap_or_default(),
                            reason,
                            created_at: Utc::now(),
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    self.metrics.dead_letter(consumer);
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
