//! The orchestrator: the transition service and its stores.

pub mod access;
pub mod commands;
pub mod consumer;
pub mod embedded;
pub mod exposition;
pub mod idempotency;
pub mod metrics;
pub mod model;
pub mod redact;
pub mod relay;
pub mod service;
pub mod store;
pub mod watchdog;

pub use access::{ApiKey, NewApiKey, Principal, Role};
pub use consumer::{
    embedded_subscription, event_consumers, Consumed, EventHandler, CONSUMER, WORKER_EVENTS,
};
pub use embedded::{EmbeddedTransport, InProgress, InProgressSettings, Subscription};
pub use idempotency::{IdempotencyClaim, StoredResponse};
pub use metrics::{ConflictReason, Metrics};
pub use relay::{Relay, RelayError, RelaySettings};
pub use service::{
    Bootstrap, Error, IfMatch, Note, Orchestrator, Reply, RequestContext, Settings,
    TransitionRequest,
};
pub use store::{
    connect, connect_with, Backend, CommitFailure, PoolSettings, SqlPool, SqlValue,
    SqliteDurability, Store, StoreError, Tx, TxConnection,
};
