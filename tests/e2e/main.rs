//! End-to-end tests: the service over real HTTP on a random port, on SQLite and PostgreSQL.
//!
//! PostgreSQL tests create a database of their own on `OPSCASE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Outside CI they skip, saying so, when it is
//! unreachable; with `CI=true` they fail.

mod helpers;

mod access;
mod alertmanager;
mod analysis;
mod analyst;
mod cli;
mod concurrency;
mod console;
mod consumer;
mod contract;
mod crash;
mod distributed;
mod docs;
mod embedded;
mod events;
mod http;
mod incident;
mod kb;
mod kb_vectors;
mod llm;
mod logstores;
mod monitoring;
mod nats;
mod otlp;
mod outage;
mod readiness;
mod related;
mod relay;
mod restart;
mod signals;
mod slow_clients;
mod store;
mod tls;
mod transitions;
mod watchdog;
