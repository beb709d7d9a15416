//! The bus between the orchestrator and the workers.
//!
//! Every message is a CloudEvents 1.0 JSON envelope whose `id` is the outbox message id and is
//! sent as `Nats-Msg-Id`, so a message published twice is stored once (within the stream's
//! duplicate window) and consumers can dedup by id beyond it.

mod claims;
mod consumer;
mod envelope;
mod jetstream;
pub mod trace;
mod worker;

use async_trait::async_trait;

pub use claims::{StreamClaims, CLAIMS_STREAM};
pub use consumer::{
    disposition, run_consumer, ConsumerSettings, Disposition, Handled, Handler, STREAM_DEAD_LETTERS,
};
pub use envelope::Envelope;
pub use jetstream::{JetStreamSettings, JetStreamTransport, STREAM_COMMANDS, STREAM_EVENTS};
pub use trace::{consume_span, TraceContext};
pub use worker::{
    answer, answer_id, Claim, Claims, Publisher, TransportPublisher, Worker, WorkerError,
};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is unreachable: {0}")]
    Unavailable(String),
    #[error("the bus refused the message: {0}")]
    Rejected(String),
    #[error("bus setup failed: {0}")]
    Setup(String),
}

/// What the bus said about one published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Stored (or recognised as a duplicate of a stored message).
    Acked { duplicate: bool },
    /// Not stored; publish it again later.
    Failed(String),
}

/// Somewhere to publish envelopes.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Publish in order and wait for every acknowledgement. One answer per envelope, in order.
    async fn publish(&self, envelopes: &[Envelope]) -> Result<Vec<Delivery>, BusError>;
    /// Reachable right now.
    async fn check(&self) -> Result<(), BusError>;
}
