//! The model client of opscase (see `client`): models propose, opscase validates, and only
//! the orchestrator changes state.

pub mod breaker;
pub mod client;
pub mod metrics;
pub mod prompt;
pub mod redact;
pub mod settings;
pub mod store;
pub mod strict;

pub use client::{Answer, JsonRequest, LlmClient, LlmError};
pub use prompt::Section;
pub use settings::LlmSettings;
pub use store::{CallStore, LlmCall};
