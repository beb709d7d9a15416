//! Step runner of opscase: adapters (noop, script.exec, http.call, k8s.rollout), timeouts,
//! retries, rollback, durable claims.

pub mod adapter;
pub mod adapters;
pub mod runner;
pub mod worker;

pub use adapter::{Adapter, Adapters, StepContext, StepError, StepOutput};
pub use runner::{AttemptSink, Job, Phase, Redact, RunSummary, Runner};
pub use worker::{Executor, OutputStore};
