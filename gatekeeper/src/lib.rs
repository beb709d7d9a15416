//! Deterministic change gate of opscase: a policy file decides auto-approval, human review or
//! rejection.
//!
//! * [`Policy`]: the policy keys (TOML or YAML, see `policy.example.toml`), parsed with
//!   unknown keys refused and errors naming the file, key and line; [`DEFAULT_POLICY_TOML`] is
//!   the built-in policy.
//! * [`evaluate`] / [`evaluate_adhoc`]: pure decisions (no I/O, the time is an input).
//! * [`PolicySource`]: the current policy, hot-reloaded from its file (checked lazily, at most
//!   once a second, on [`PolicySource::current`]); a broken rewrite keeps the old policy.
//! * [`Gatekeeper`]: the `bus::Worker` for `cmd.gate.eval`.
//!
//! The policy revision ([`policy_rev`]) is the first 16 hex characters of the SHA-256 of the
//! policy file's bytes.

mod decide;
pub mod explain;
pub mod freeze;
mod policy;
mod source;
mod worker;

pub use decide::{evaluate, evaluate_adhoc, Decision, GateInput, Outcome};
pub use freeze::Freeze;
pub use policy::{
    policy_rev, Adhoc, Format, Limits, LoadedPolicy, Policy, PolicyError, TenantRule,
    BUILTIN_ORIGIN, DEFAULT_POLICY_TOML,
};
pub use source::{PolicySource, DEFAULT_CHECK_INTERVAL};
pub use worker::{Gatekeeper, ROLE, SOURCE};
