//! The orchestrator: the transition service and its stores.

pub mod idempotency;
pub mod metrics;
pub mod model;
pub mod service;
pub mod store;

pub use idempotency::{IdempotencyClaim, StoredResponse};
pub use metrics::{ConflictReason, Metrics};
pub use service::{Error, Orchestrator, Reply, RequestContext, Settings, TransitionRequest};
pub use store::{connect, Backend, Store, StoreError};
