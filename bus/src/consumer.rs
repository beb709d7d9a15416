//! The consumer runtime every role shares: a durable JetStream pull consumer with explicit
//! acks. A handled message is acked; a transient failure is nak'ed with a growing delay; a
//! message that can never be handled, or has used up its deliveries, is copied to the
//! dead-letter stream and terminated, never dropped silently.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::AckKind;
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::{BusError, Envelope, JetStreamTransport};

/// Dead letters go to `dlq.<consumer>`, kept in this stream.
pub const STREAM_DEAD_LETTERS: &str = "OPS_DLQ";

/// What a handler made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Done,
    /// Worth another try later (the database is down, say).
    Retry(String),
    /// Will never succeed (unreadable, unknown case, ...).
    Poison(String),
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, envelope: &Envelope) -> Handled;
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Durable consumer name; also the dead-letter subject suffix and metric label.
    pub name: String,
    pub stream: String,
    pub filter_subject: String,
    /// Deliveries before a failing message is dead-lettered.
    pub max_deliver: i64,
    pub ack_wait: Duration,
    /// Delay before the n-th retry (the last one repeats).
    pub retry_delays: Vec<Duration>,
    /// Messages handled at once. Each is acknowledged only when its handler returns; while it
    /// runs, the consumer tells JetStream it is still in progress, so a long step or
    /// verification window is not redelivered for taking longer than `ack_wait`.
    pub concurrency: usize,
}

impl ConsumerSettings {
    pub fn new(name: &str, stream: &str, filter_subject: &str) -> Self {
        Self {
            name: name.into(),
            stream: stream.into(),
            filter_subject: filter_subject.into(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            retry_delays: vec![
                Duration::from_millis(500),
                Duration::from_secs(2),
                Duration::from_secs(10),
            ],
            concurrency: 1,
        }
    }
}

/// What to tell the server about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    RetryAfter(Duration),
    DeadLetter(String),
}

/// The decision, as a pure function of the outcome and the delivery count (1 for the first).
pub fn disposition(handled: Handled, delivered: i64, settings: &ConsumerSettings) -> Disposition {
    match handled {
        Handled::Done => Disposition::Ack,
        Handled::Poison(reason) => Disposition::DeadLetter(reason),
        Handled::Retry(reason) if delivered >= settings.max_deliver => {
            Disposition::DeadLetter(format!("gave up after {delivered} deliveries: {reason}"))
        }
        Handled::Retry(_) => {
            let index = usize::try_from(delivered.max(1) - 1).unwrap_or(0);
            let delay = settings
                .retry_delays
                .get(index)
                .or(settings.retry_delays.last())
                .copied()
                .unwrap_or(Duration::from_secs(1));
            Disposition::RetryAfter(delay)
        }
    }
}

/// Consume until `shutdown` turns true, finishing the message in hand. `on_dead_letter` is
/// told the consumer name each time a message is dead-lettered (for a metric).
pub async fn run_consumer(
    transport: Arc<JetStreamTransport>,
    settings: ConsumerSettings,
    handler: Arc<dyn Handler>,
    on_dead_letter: Arc<dyn Fn(&str) + Send + Sync>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let stream = transport
        .context()
        .get_stream(&settings.stream)
        .await
        .map_err(|e| BusError::Setup(format!("stream {}: {e}", settings.stream)))?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &settings.name,
            pull::Config {
                durable_name: Some(settings.name.clone()),
                filter_subject: settings.filter_subject.clone(),
                ack_wait: settings.ack_wait,
                max_deliver: settings.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| BusError::Setup(format!("consumer {}: {e}", settings.name)))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::Setup(format!("consumer {}: {e}", settings.name)))?;
    let settings = Arc::new(settings);
    let permits = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
    let mut in_hand = tokio::task::JoinSet::new();
    while !*shutdown.borrow() {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = shutdown.changed() => break,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::warn!(consumer = %settings.name, error = %error, "consumer stream error");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            None => break,
        };
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        while in_hand.try_join_next().is_some() {}
        let (transport, settings, handler, on_dead_letter) = (
            transport.clone(),
            settings.clone(),
            handler.clone(),
            on_dead_letter.clone(),
        );
        in_hand.spawn(async move {
            settle(
                &transport,
                &settings,
                handler.as_ref(),
                on_dead_letter.as_ref(),
                message,
            )
            .await;
            drop(permit);
        });
    }
    // Finish what is in hand: its results are acknowledged, nothing is left half done.
    while in_hand.join_next().await.is_some() {}
    Ok(())
}

/// Handle one message and acknowledge it by what the handler said; while the handler runs,
/// keep telling JetStream the message is in progress.
async fn settle(
    transport: &JetStreamTransport,
    settings: &ConsumerSettings,
    handler: &dyn Handler,
    on_dead_letter: &(dyn Fn(&str) + Send + Sync),
    message: async_nats::jetstream::Message,
) {
    let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
    let handled = match Envelope::from_json(&message.payload) {
        Err(error) => Handled::Poison(format!("not a CloudEvents envelope: {error}")),
        Ok(envelope) => {
            let span = crate::consume_span(&settings.name, &envelope);
            let handling = tracing::Instrument::instrument(
                AssertUnwindSafe(handler.handle(&envelope)).catch_unwind(),
                span,
            );
            tokio::pin!(handling);
            let mut heartbeat = tokio::time::interval(settings.ack_wait / 3);
            heartbeat.tick().await;
            loop {
                tokio::select! {
                    outcome = &mut handling => {
                        break outcome.unwrap_or_else(|_| Handled::Poison("the handler panicked".into()));
                    }
                    _ = heartbeat.tick() => {
                        if let Err(error) = message.ack_with(AckKind::Progress).await {
                            tracing::warn!(consumer = %settings.name, error = %error, "in-progress ack failed");
                        }
                    }
                }
            }
        }
    };
    let ack = match disposition(handled, delivered, settings) {
        Disposition::Ack => message.ack_with(AckKind::Ack).await,
        Disposition::RetryAfter(delay) => message.ack_with(AckKind::Nak(Some(delay))).await,
        Disposition::DeadLetter(reason) => {
            tracing::error!(consumer = %settings.name, subject = %message.subject, %reason, "dead-lettering a message");
            match dead_letter(transport, &settings.name, &message, &reason).await {
                Ok(()) => {
                    on_dead_letter(&settings.name);
                    message.ack_with(AckKind::Term).await
                }
                Err(error) => {
                    tracing::error!(consumer = %settings.name, error = %error, "dead-letter publish failed");
                    message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await
                }
            }
        }
    };
    if let Err(error) = ack {
        tracing::warn!(consumer = %settings.name, error = %error, "ack failed; the message will be redelivered");
    }
}

async fn dead_letter(
    transport: &JetStreamTransport,
    consumer: &str,
    message: &async_nats::jetstream::Message,
    reason: &str,
) -> Result<(), BusError> {
    let mut headers = HeaderMap::new();
    let original_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    headers.insert(
        NATS_MESSAGE_ID,
        format!("{consumer}:{original_id}:{}", message.subject).as_str(),
    );
    headers.insert("Opscase-Dead-Letter-Reason", reason);
    headers.insert("Opscase-Original-Subject", message.subject.as_str());
    let publish = PublishMessage::build()
        .headers(headers)
        .payload(message.payload.clone());
    transport
        .context()
        .send_publish(format!("dlq.{consumer}"), publish)
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_acks_poison_dead_letters_and_retries_back_off_until_exhausted() {
        let settings = ConsumerSettings::new("c", "S", "x.>");
        assert_eq!(disposition(Handled::Done, 1, &settings), Disposition::Ack);
        assert!(
            matches!(disposition(Handled::Poison("bad".into()), 1, &settings), Disposition::DeadLetter(r) if r == "bad")
        );
        let retry = |delivered| disposition(Handled::Retry("db down".into()), delivered, &settings);
        assert_eq!(
            retry(1),
            Disposition::RetryAfter(Duration::from_millis(500))
        );
        assert_eq!(retry(2), Disposition::RetryAfter(Duration::from_secs(2)));
        assert_eq!(
            retry(4),
            Disposition::RetryAfter(Duration::from_secs(10)),
            "the last delay repeats"
        );
        assert!(matches!(retry(5), Disposition::DeadLetter(r) if r.contains("5 deliveries")));
    }
}
