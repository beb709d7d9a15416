//! The built-in adapters.

pub mod http;
pub mod k8s;
pub mod noop;
pub mod script;

pub use noop::Noop;
pub use script::{ScriptConfig, ScriptExec};
