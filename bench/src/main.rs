//! `relay-bench`: how fast the outbox relay drains a backlog, and how far behind the commits it
//! runs under a steady open-loop load. On demand only (never part of `cargo test`); see
//! bench/README.md for how to run it and what each number means.
//!
//! One run: start a private nats-server and a fresh PostgreSQL database, measure
//! 1. the drain of a backlog inserted straight into the outbox ([`drain`]),
//! 2. the commit-to-ack lag while the full service takes transitions at a fixed rate ([`lag`]),
//!
//! then drop the database, stop NATS, and write `relay-<timestamp>.json|.md` ([`report`]).

mod drain;
mod lag;
mod report;

// Shared with transition-bench; `crate::setup` etc. resolve through these imports.
use opscase_bench::{cpu, format, setup, stats};

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context};
use bus::{JetStreamSettings, JetStreamTransport};
use chrono::Utc;
use clap::Parser;
use sqlx::postgres::PgConnectOptions;

/// Where results go unless `--out` says otherwise: `bench/results`, wherever cargo runs from.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

#[derive(Debug, Clone, Parser)]
#[command(
    name = "relay-bench",
    about = "Outbox relay benchmark: backlog drain rate and commit-to-ack lag at a steady rate"
)]
pub struct Args {
    /// Unpublished outbox rows inserted for each drain repetition.
    #[arg(long, default_value_t = 50_000)]
    pub rows: u32,
    /// Drain repetitions, each on freshly inserted rows; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repetitions: u32,
    /// Offered load of the lag phase, in transitions per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// How long the lag phase offers its load.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
    /// Most HTTP requests in flight at once; a slot that finds them all busy is counted late.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Directory for relay-<UTC timestamp>.json and .md.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// A PostgreSQL database to connect to for CREATE / DROP DATABASE (loopback only).
    #[arg(
        long,
        env = "OPSCASE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres_url: String,
    /// The nats-server binary; the bench starts a private one on a random loopback port.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    pub nats_server: PathBuf,
}

impl Args {
    /// Keep every loop and the whole run bounded, and every target on this machine.
    fn validate(&self) -> anyhow::Result<()> {
        if self.rows == 0 || self.rows > 2_000_000 {
            bail!("--rows must be 1 to 2,000,000");
        }
        if !(1..=10).contains(&self.repetitions) {
            bail!("--repetitions must be 1 to 10");
        }
        if self.rate == 0 || self.rate > 20_000 {
            bail!("--rate must be 1 to 20,000 per second");
        }
        if self.seconds == 0 || self.seconds > 600 {
            bail!("--seconds must be 1 to 600");
        }
        if self.in_flight == 0 || self.in_flight > 4096 {
            bail!("--in-flight must be 1 to 4096");
        }
        let options = PgConnectOptions::from_str(&self.postgres_url)
            .context("--postgres-url is not a PostgreSQL URL")?;
        let host = options.get_host();
        // A path is a Unix socket, which is local too.
        if !(matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]") || host.starts_with('/')) {
            bail!("--postgres-url must point at this machine (loopback), not {host}");
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    args.validate()?;
    // Warnings from the relay and the service (e.g. a failing publish) show on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let started_at = Utc::now();
    let machine = setup::machine_facts(&args.postgres_url, Some(&args.nats_server)).await?;
    let nats = setup::PrivateNats::start(&args.nats_server).await?;
    let database = setup::BenchDatabase::create(&args.postgres_url).await?;
    eprintln!("relay-bench: database {}, NATS {}", database.name, nats.url);
    // Whatever happens in the phases (an error, Ctrl-C), the database is dropped afterwards.
    let outcome = tokio::select! {
        outcome = run_phases(&args, &database.url, &nats.url) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    database.drop_database().await;
    drop(nats);
    let (drain, lag) = outcome?;

    let report = report::Report::new(&args, started_at, Utc::now(), machine, drain, lag);
    let written = report.write(&args.out)?;
    println!("{}", report.markdown());
    for path in written {
        eprintln!("relay-bench: wrote {}", path.display());
    }
    // Numbers are reported, never asserted; only lost or duplicated messages fail the run.
    Ok(if report.integrity_ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!("relay-bench: message counts do not match (see the report)");
        ExitCode::FAILURE
    })
}

async fn run_phases(
    args: &Args,
    database_url: &str,
    nats_url: &str,
) -> anyhow::Result<(drain::Drain, lag::Lag)> {
    // This connection creates the streams, relays the backlog, and counts stored events in
    // both phases; the service in the lag phase has a connection of its own.
    let transport = Arc::new(
        JetStreamTransport::connect(nats_url, &JetStreamSettings::default())
            .await
            .context("cannot connect to the private nats-server")?,
    );
    let drain = drain::run(args, database_url, transport.clone()).await?;
    let lag = lag::run(args, database_url, nats_url, &transport).await?;
    Ok((drain, lag))
}
