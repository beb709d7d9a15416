//! The outbox relay: publishes committed outbox rows to the bus, in order, at least once.
//!
//! A batch is claimed, published with every ack awaited, and only then marked published; a
//! crash in between republishes the batch, and the bus's duplicate window (keyed by the stable
//! message id) or the consumer's inbox makes that harmless. There is no "last id seen" cursor:
//! every batch takes whatever is still unpublished, so a row committed late with a lower id
//! still goes out.

use std::sync::Arc;
use std::time::Duration;

use bus::{BusError, Delivery, Envelope, Transport};
use chrono::Utc;
use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;
use crate::model::OutboxMessage;
use crate::store::{OutboxClaim, Store, StoreError};

/// The CloudEvents `source` of everything the orchestrator publishes.
pub const SOURCE: &str = "opscase/orchestrator";

#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub batch_size: u32,
    /// Look for rows this often even without a wake-up (rows written by another process).
    pub poll_interval: Duration,
    /// Longest pause between attempts while the bus is failing.
    pub max_backoff: Duration,
    /// Published rows are deleted after this long.
    pub retention: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{failed} of {claimed} messages were not acknowledged: {reason}")]
    Partial {
        claimed: usize,
        failed: usize,
        reason: String,
    },
}

pub struct Relay {
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    metrics: Metrics,
    wake: Arc<Notify>,
    settings: RelaySettings,
}

impl Relay {
    /// `wake` is notified after commits that wrote outbox rows.
    pub fn new(
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
        metrics: Metrics,
        wake: Arc<Notify>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            store,
            transport,
            metrics,
            wake,
            settings,
        }
    }

    /// Publish one batch; returns how many rows were published.
    pub async fn relay_batch(&self) -> Result<usize, RelayError> {
        let claim = self.store.claim_outbox(self.settings.batch_size).await?;
        let claimed = claim.rows().len();
        if claimed == 0 {
            return Ok(0);
        }
        let span = tracing::info_span!("relay_batch", messages = claimed);
        tracing::Instrument::instrument(self.publish_claimed(claim), span).await
    }

    /// Publish a claimed batch and mark what the bus acknowledged.
    async fn publish_claimed(&self, claim: Box<dyn OutboxClaim>) -> Result<usize, RelayError> {
        let claimed = claim.rows().len();
        let (envelopes, _publish_spans): (Vec<Envelope>, Vec<tracing::Span>) = claim
            .rows()
            .iter()
            .map(|row| {
                let mut envelope = envelope_of(&row.message);
                let span = publish_span(&mut envelope);
                (envelope, span)
            })
            .unzip();
        // A transport error drops the claim: the rows stay unpublished for the next attempt.
        let deliveries = self.transport.publish(&envelopes).await?;
        let now = Utc::now();
        // Only the acknowledged prefix is marked, so a retry never puts a case's later message
        // before an earlier one.
        let mut published = Vec::with_capacity(claimed);
        let mut failure = None;
        for (row, delivery) in claim.rows().iter().zip(&deliveries) {
            let topic = row.message.topic.as_str();
            match delivery {
                Delivery::Acked { duplicate } if failure.is_none() => {
                    let status = if *duplicate { "duplicate" } else { "acked" };
                    self.metrics.outbox_published(topic, status);
                    let lag = (now - row.message.created_at).to_std().unwrap_or_default();
                    self.metrics.outbox_lag(lag);
                    published.push(row.id);
                }
                Delivery::Acked { .. } => self.metrics.outbox_published(topic, "requeued"),
                Delivery::Failed(reason) => {
                    self.metrics.outbox_published(topic, "failed");
                    failure.get_or_insert_with(|| reason.clone());
                }
            }
        }
        let count = published.len();
        claim.mark_published(&published, now).await?;
        match failure {
            None => Ok(count),
            Some(reason) => Err(RelayError::Partial {
                claimed,
                failed: claimed - count,
                reason,
            }),
        }
    }

    /// Relay until `shutdown` turns true, finishing the batch in hand.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if let Err(error) = self.store.wake_on_outbox_commits(self.wake.clone()).await {
            tracing::warn!(error = %error, "cannot listen for outbox commits; relying on the poll interval");
        }
        let mut backoff = Duration::ZERO;
        let mut last_prune = tokio::time::Instant::now();
        while !*shutdown.borrow() {
            let pause = match self.relay_batch().await {
                Ok(published) if published as u32 == self.settings.batch_size => {
                    backoff = Duration::ZERO;
                    Duration::ZERO
                }
                Ok(_) => {
                    backoff = Duration::ZERO;
                    self.settings.poll_interval
                }
                Err(error) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), self.settings.max_backoff);
                    tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "outbox relay cannot publish");
                    backoff
                }
            };
            if let Ok(pending) = self.store.outbox_pending().await {
                self.metrics.set_outbox_pending(pending);
            }
            if last_prune.elapsed() >= Duration::from_secs(60) {
                last_prune = tokio::time::Instant::now();
                self.prune().await;
            }
            if pause.is_zero() {
                continue;
            }
            // A failing bus is waited out in full; otherwise a commit wakes the relay at once.
            let woken = async {
                if backoff.is_zero() {
                    self.wake.notified().await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn prune(&self) {
        let Ok(retention) = chrono::Duration::from_std(self.settings.retention) else {
            return;
        };
        match self.store.prune_outbox(Utc::now() - retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned published outbox rows"),
            Err(error) => tracing::warn!(error = %error, "outbox pruning failed"),
        }
    }
}

/// The CloudEvents envelope of an outbox row: its id is the row's stable message id.
pub fn envelope_of(message: &OutboxMessage) -> Envelope {
    let header = |name: &str| message.headers[name].as_str().map(str::to_string);
    // A worker's event on the embedded bus keeps the worker as its source.
    let source = message.headers["source"].as_str().unwrap_or(SOURCE);
    Envelope::new(
        message.message_id,
        source,
        &message.topic,
        &message.key,
        message.created_at,
        message.payload.clone(),
    )
    .with_traceparent(header("traceparent"))
    .with_tracestate(header("tracestate"))
}

/// The span of relaying one outbox message: a child of the context its row was written in,
/// and the parent the message carries onto the bus (so the trace reads request, transition,
/// publish, consume).
fn publish_span(envelope: &mut Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = %format!("publish {}", envelope.kind),
        otel.kind = "producer",
        message_id = %envelope.id,
        case_id = %envelope.subject,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let trace = bus::trace::continue_span(&span, &envelope.trace_carrier());
    if envelope.traceparent.is_some() {
        envelope.traceparent = Some(trace.traceparent());
        envelope.tracestate = trace.tracestate();
    }
    span
}
