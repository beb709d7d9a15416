//! What the bench binaries share: a fresh PostgreSQL database per run and the machine facts
//! ([`setup`]), `opscase serve` as a child process ([`service`]), nearest-rank percentiles
//! ([`stats`]), CPU accounting ([`cpu`]) and number formatting for the reports ([`format`]).

pub mod cpu;
pub mod format;
pub mod service;
pub mod setup;
pub mod stats;
