//! Integration tests of the verifier: real SQLite (and PostgreSQL when available) with the
//! real migrations, wiremock for Prometheus, paused tokio time for the canary loop.

mod canary;
mod common;
mod metric_1m;
mod prometheus;
mod store;
mod worker;
