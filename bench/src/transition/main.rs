//! `transition-bench`: the transition hot path against PostgreSQL's own limit. On demand only
//! (never part of `cargo test`); see bench/README.md.
//!
//! One run, at each client count of `--clients`:
//! 1. pgbench runs bench/transition.sql, the service's transition transaction in plain SQL, on
//!    a fresh migrated and seeded database ([`pgbench`]);
//! 2. the full service on PostgreSQL takes a closed-loop HTTP load of transitions ([`http`]);
//! 3. the same load against the embedded SQLite default, after timing its start-up to ready;
//!
//! then the databases are dropped and `transition-<timestamp>.json|.md` written ([`report`]).

mod http;
mod open_loop;
mod pgbench;
mod report;

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context};
use chrono::Utc;
use clap::Parser;
use opscase_bench::setup::{self, BenchDatabase};
use sqlx::postgres::PgConnectOptions;

/// Where results go unless `--out` says otherwise: `bench/results`, wherever cargo runs from.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");
/// The pgbench script, kept next to the crate.
const DEFAULT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/transition.sql");

#[derive(Debug, Clone, Parser)]
#[command(
    name = "transition-bench",
    about = "Transition hot path: pgbench's limit for the same transaction vs the HTTP service \
             on PostgreSQL and on embedded SQLite"
)]
pub struct Args {
    /// How long each measurement (one tool, one client count) runs.
    #[arg(long, default_value_t = 15)]
    pub seconds: u32,
    /// Client counts (pgbench clients, HTTP workers), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,
    /// Cases seeded for pgbench and opened over HTTP before the first load (more are opened
    /// between loads when the previous rate says they are needed).
    #[arg(long, default_value_t = 10_000)]
    pub cases: u32,
    /// Directory for transition-<UTC timestamp>.json and .md.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// A PostgreSQL database to connect to for CREATE / DROP DATABASE (loopback only).
    #[arg(
        long,
        env = "OPSCASE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres_url: String,
    /// The pgbench binary.
    #[arg(long, default_value = "/usr/bin/pgbench")]
    pub pgbench: PathBuf,
    /// The pgbench script (the transaction shape of one transition).
    #[arg(long, default_value = DEFAULT_SCRIPT)]
    pub script: PathBuf,
    /// The embedded service's `database.sqlite_synchronous`: full (the default) or normal.
    #[arg(long, default_value = "full", value_parser = parse_durability)]
    pub sqlite_synchronous: orchestrator::SqliteDurability,
    /// pgbench's query protocol (`-M`): simple (its default), extended or prepared (parsed
    /// once per connection, like the service's statements).
    #[arg(long, default_value = "simple", value_parser = ["simple", "extended", "prepared"])]
    pub pgbench_protocol: String,
    /// The service's PostgreSQL pool (`database.pool_size`); its default (16) when absent.
    #[arg(long)]
    pub pg_pool_size: Option<u32>,
    /// Instead of pgbench and the closed loops: an open-loop load of N transitions/s for
    /// `--seconds` on PostgreSQL and SQLite, written to open-loop-<UTC timestamp>.json|.md.
    #[arg(long)]
    pub open_loop_rate: Option<u32>,
}

fn parse_durability(text: &str) -> Result<orchestrator::SqliteDurability, String> {
    match text {
        "full" => Ok(orchestrator::SqliteDurability::Full),
        "normal" => Ok(orchestrator::SqliteDurability::Normal),
        other => Err(format!("{other:?} is not one of full, normal")),
    }
}

impl Args {
    /// Keep every loop and the whole run bounded, and every target on this machine.
    fn validate(&mut self) -> anyhow::Result<()> {
        if self.seconds == 0 || self.seconds > 120 {
            bail!("--seconds must be 1 to 120");
        }
        if self.clients.is_empty() || self.clients.len() > 8 {
            bail!("--clients must list 1 to 8 counts");
        }
        if self.clients.iter().any(|&c| c == 0 || c > 256) {
            bail!("each --clients count must be 1 to 256");
        }
        if let Some(rate) = self.open_loop_rate {
            if !(1..=5_000).contains(&rate) {
                bail!("--open-loop-rate must be 1 to 5,000");
            }
        }
        if self
            .pg_pool_size
            .is_some_and(|size| !(1..=256).contains(&size))
        {
            bail!("--pg-pool-size must be 1 to 256");
        }
        self.clients.sort_unstable();
        self.clients.dedup();
        if !(100..=200_000).contains(&self.cases) {
            bail!("--cases must be 100 to 200,000");
        }
        if !self.pgbench.exists() {
            bail!("{} not found (pass --pgbench)", self.pgbench.display());
        }
        if !self.script.exists() {
            bail!("{} not found (pass --script)", self.script.display());
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

/// Everything one run measured.
pub struct Measured {
    pub pgbench: Vec<pgbench::PgbenchRun>,
    pub http_postgres: http::Backend,
    pub startup: Vec<http::Startup>,
    pub http_sqlite: http::Backend,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.validate()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let started_at = Utc::now();
    let mut machine = setup::machine_facts(&args.postgres_url, None).await?;
    machine["pgbench"] = pgbench::version(&args.pgbench).into();

    if let Some(rate) = args.open_loop_rate {
        return open_loop_main(&args, rate, started_at, machine).await;
    }

    // Every database of the run is created up front, so that whatever happens (an error,
    // Ctrl-C) all of them are dropped afterwards: one per pgbench client count, one for HTTP.
    let mut databases = Vec::new();
    let created = async {
        for _ in 0..=args.clients.len() {
            databases.push(BenchDatabase::create(&args.postgres_url).await?);
        }
        anyhow::Ok(())
    }
    .await;
    let outcome = match created {
        Ok(()) => {
            tokio::select! {
                outcome = run_phases(&args, &databases) => outcome,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Err(error) => Err(error),
    };
    for database in &databases {
        database.drop_database().await;
    }
    let measured = outcome?;

    let report = report::Report::new(&args, started_at, Utc::now(), machine, measured);
    let written = report.write(&args.out)?;
    println!("{}", report.markdown());
    for path in written {
        eprintln!("transition-bench: wrote {}", path.display());
    }
    Ok(())
}

async fn run_phases(args: &Args, databases: &[BenchDatabase]) -> anyhow::Result<Measured> {
    let (http_database, pgbench_databases) =
        databases.split_last().context("no database was created")?;
    let mut runs = Vec::new();
    for (&clients, database) in args.clients.iter().zip(pgbench_databases) {
        runs.push(pgbench::run(args, &database.url, clients).await?);
    }
    let http_postgres = http::run(args, http::Target::Postgres(&http_database.url)).await?;
    let startup = http::startup_samples().await?;
    let http_sqlite = http::run(args, http::Target::Sqlite).await?;
    Ok(Measured {
        pgbench: runs,
        http_postgres,
        startup,
        http_sqlite,
    })
}

/// `--open-loop-rate`: PostgreSQL (a fresh database, dropped at the end), then SQLite.
async fn open_loop_main(
    args: &Args,
    rate: u32,
    started_at: chrono::DateTime<Utc>,
    machine: serde_json::Value,
) -> anyhow::Result<()> {
    let database = BenchDatabase::create(&args.postgres_url).await?;
    let outcome = tokio::select! {
        outcome = async {
            let postgres = open_loop::run(args, rate, http::Target::Postgres(&database.url)).await?;
            let sqlite = open_loop::run(args, rate, http::Target::Sqlite).await?;
            anyhow::Ok(vec![postgres, sqlite])
        } => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    database.drop_database().await;
    let runs = outcome?;
    let json = open_loop::json(args, rate, started_at, Utc::now(), &machine, &runs);
    let markdown = open_loop::markdown(args, rate, started_at, &machine, &runs);
    let written =
        opscase_bench::format::write_results(&args.out, "open-loop", started_at, &json, &markdown)?;
    println!("{markdown}");
    for path in written {
        eprintln!("transition-bench: wrote {}", path.display());
    }
    Ok(())
}
