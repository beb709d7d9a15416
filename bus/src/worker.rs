//! The contract between a worker role and the runtime that feeds it: the runtime delivers
//! commands (from JetStream or the embedded outbox) and gives the worker a [`Publisher`] for
//! its answers; the worker never sees which bus it runs on.

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;
use uuid::Uuid;

use crate::{BusError, Envelope};

/// Where a worker's events go: the outbox (embedded) or JetStream (distributed).
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publish one event; a message id seen before is accepted and dropped by the bus.
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError>;
}

/// Why a command was not handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The command can never be handled (malformed): dead-letter it.
    #[error("poison command: {0}")]
    Poison(String),
    /// A transient failure (bus or store unreachable): deliver it again later.
    #[error("retry: {0}")]
    Retry(String),
}

/// One worker role.
#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// `planner`, `gatekeeper`, `executor` or `verifier`.
    fn role(&self) -> &'static str;
    /// The command topics it takes, e.g. `["cmd.exec.run", "cmd.exec.rollback"]`.
    fn commands(&self) -> &'static [&'static str];
    /// Long-running work (steps, verification windows) is handed to its own task so it does
    /// not hold up delivery; such a worker must make redelivery safe itself (the executor
    /// claims each command durably before it runs anything).
    fn detached(&self) -> bool {
        false
    }
    async fn handle(&self, command: &Envelope, out: &dyn Publisher) -> Result<(), WorkerError>;
}

/// What a durable claim on a command found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This caller holds the claim now: run the command.
    Claimed,
    /// Someone claimed it earlier and has not finished (or died while running it).
    Running { holder: String },
    /// It was run to the end; the recorded outcome (the events published) is attached.
    Finished(Value),
}

/// Durable, exactly-once claims on command message ids: the database in embedded mode, a
/// JetStream key-value bucket in distributed mode.
#[async_trait]
pub trait Claims: Send + Sync {
    async fn claim(&self, key: &str, holder: &str) -> Result<Claim, BusError>;
    /// Record the outcome of a claimed command, so a redelivery can report it.
    async fn finish(&self, key: &str, outcome: &Value) -> Result<(), BusError>;
}

/// The id of the answer `kind` (with an optional distinguishing `part`, e.g. a step and
/// attempt) to `command`: the same on every redelivery, so the bus drops repeats.
pub fn answer_id(command: &Envelope, kind: &str, part: &str) -> Uuid {
    Uuid::new_v5(&command.id, format!("{kind}/{part}").as_bytes())
}

/// An event answering `command`: same subject (the case id) and trace; its parent is the span
/// handling the command (the `consume` span), or the command's own when there is none.
pub fn answer(command: &Envelope, source: &str, kind: &str, part: &str, data: Value) -> Envelope {
    Envelope::new(
        answer_id(command, kind, part),
        source,
        kind,
        &command.subject,
        Utc::now(),
        data,
    )
    .with_trace(crate::trace::current_or(command.trace()).as_ref())
}

/// Publishes worker events straight to a transport (JetStream in distributed mode).
pub struct TransportPublisher(pub std::sync::Arc<dyn crate::Transport>);

#[async_trait]
impl Publisher for TransportPublisher {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        match self.0.publish(std::slice::from_ref(&envelope)).await?.pop() {
            Some(crate::Delivery::Acked { .. }) => Ok(()),
            Some(crate::Delivery::Failed(reason)) => Err(BusError::Unavailable(reason)),
            None => Err(BusError::Unavailable("no acknowledgement".into())),
        }
    }
}
