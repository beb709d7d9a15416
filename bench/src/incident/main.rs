//! `incident-loop-bench`: the closed `auto` loop end to end. On demand only (never part of
//! `cargo test`); see bench/README.md.
//!
//! One run, on each backend (embedded SQLite + embedded bus, then PostgreSQL + JetStream):
//! 1. start the release `opscase serve` binary as a child process on a fresh store
//!    ([`server`]), ingest healthy `err_rate` points into `metric_1m`;
//! 2. offer `automation: auto` cases labelled `template: noop.check` on an open-loop
//!    timetable; each case is opened, sent `start_analysis`, and then left to the analyst,
//!    planner, gatekeeper, executor and verifier until it is CLOSED ([`load`]);
//! 3. read every case's timeline for the server-side create→CLOSED latency and its stages;
//!
//! then stop the services, drop the database and write `incident-loop.json|.md` ([`report`]).

mod load;
mod report;
mod server;

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context};
use chrono::Utc;
use clap::Parser;
use opscase_bench::setup::{self, BenchDatabase, PrivateNats};
use sqlx::postgres::PgConnectOptions;

/// Where results go unless `--out` says otherwise: `bench/results`, wherever cargo runs from.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

#[derive(Debug, Clone, Parser)]
#[command(
    name = "incident-loop-bench",
    about = "Closed-loop auto benchmark: automation=auto cases (noop.check) from creation to \
             CLOSED through the planner, gatekeeper, executor and verifier, on SQLite + embedded \
             bus and on PostgreSQL + JetStream"
)]
pub struct Args {
    /// Offered load, in new cases per second (open loop).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// How long the load offers cases.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
    /// A case not CLOSED or PARKED this many seconds after its due time counts as stuck.
    #[arg(long, default_value_t = 30)]
    pub case_timeout: u64,
    /// Shortest pause between two polls of one case (GET /v1/cases/{id}); the pause grows
    /// to a fifth of the case's age (at most 500 ms), so slow cases cost few polls.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Most polls per second across all cases: the client's watching is itself load on the
    /// service, and must not grow with a backlog. Polls beyond it wait their turn, which
    /// makes the client-side latency coarser, never the server-side one.
    #[arg(long, default_value_t = 250)]
    pub max_poll_rate: u32,
    /// Most cases in flight at once (opening, transitioning or being polled); a slot that finds
    /// them all busy is not sent and is counted late.
    #[arg(long, default_value_t = 2048)]
    pub in_flight: usize,
    /// Cases due in the first this many seconds are also reported apart (start-up effects:
    /// connection pools filling, first consumer fetches); the totals include them.
    #[arg(long, default_value_t = 1)]
    pub warm_up: u32,
    /// Extra `OPSCASE_*` settings for the service, `NAME=VALUE`, repeatable (e.g.
    /// `--service-env OPSCASE_SQLITE_SYNCHRONOUS=normal`); by default it runs with its
    /// defaults. They are recorded in the report.
    #[arg(long = "service-env", value_name = "NAME=VALUE")]
    pub service_env: Vec<String>,
    /// Backends to run, comma-separated: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub backends: Vec<Backend>,
    /// Directory for incident-loop.json and incident-loop.md (overwritten by each run).
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// The `opscase` binary to run. Default: build it (`cargo build --release --bin opscase`)
    /// into the bench's own target directory and use that.
    #[arg(long)]
    pub opscase_bin: Option<PathBuf>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite + embedded bus",
            Backend::Postgres => "PostgreSQL + JetStream",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite_embedded",
            Backend::Postgres => "postgres_jetstream",
        }
    }
}

impl Args {
    /// Keep every loop and the whole run bounded, and every target on this machine.
    fn validate(&mut self) -> anyhow::Result<()> {
        if self.rate == 0 || self.rate > 2_000 {
            bail!("--rate must be 1 to 2,000 cases per second");
        }
        if self.seconds == 0 || self.seconds > 600 {
            bail!("--seconds must be 1 to 600");
        }
        if !(1..=600).contains(&self.case_timeout) {
            bail!("--case-timeout must be 1 to 600 seconds");
        }
        if !(1..=1_000).contains(&self.poll_ms) {
            bail!("--poll-ms must be 1 to 1,000");
        }
        if !(1..=10_000).contains(&self.max_poll_rate) {
            bail!("--max-poll-rate must be 1 to 10,000 per second");
        }
        if self.warm_up >= self.seconds {
            bail!("--warm-up must be shorter than --seconds");
        }
        if self.in_flight == 0 || self.in_flight > 65_536 {
            bail!("--in-flight must be 1 to 65,536");
        }
        for setting in &self.service_env {
            match setting.split_once('=') {
                Some((name, _)) if name.starts_with("OPSCASE_") => {}
                _ => bail!("--service-env takes OPSCASE_NAME=VALUE, not {setting:?}"),
            }
        }
        self.backends.dedup();
        if self.backends.is_empty() {
            bail!("--backends must name sqlite, postgres or both");
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

    fn uses_postgres(&self) -> bool {
        self.backends.contains(&Backend::Postgres)
    }
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

    let binary = match &args.opscase_bin {
        Some(path) => path.clone(),
        None => server::build_release_binary()?,
    };
    // Absolute: the service runs in a temp dir of its own.
    let binary = std::fs::canonicalize(&binary)
        .with_context(|| format!("{} not found (pass --opscase-bin)", binary.display()))?;

    let started_at = Utc::now();
    let machine = match setup::machine_facts(&args.postgres_url, Some(&args.nats_server)).await {
        Ok(machine) => machine,
        // A SQLite-only run does not need PostgreSQL; its facts are then left out.
        Err(error) if !args.uses_postgres() => serde_json::json!({
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "postgres_unreachable": format!("{error:#}"),
        }),
        Err(error) => return Err(error),
    };

    let mut runs = Vec::new();
    for &backend in &args.backends {
        runs.push(run_backend(&args, &binary, backend).await?);
    }

    let report = report::Report::new(&args, &binary, started_at, Utc::now(), machine, runs);
    let written = report.write(&args.out)?;
    println!("{}", report.markdown());
    for path in written {
        eprintln!("incident-loop-bench: wrote {}", path.display());
    }
    Ok(())
}

/// One backend: its own store (and NATS), its own `opscase serve`, one load.
async fn run_backend(
    args: &Args,
    binary: &std::path::Path,
    backend: Backend,
) -> anyhow::Result<load::Run> {
    match backend {
        Backend::Sqlite => {
            // Ctrl-C drops the service, which kills the child; its data dir is a temp dir.
            tokio::select! {
                run = measure(args, binary, backend, &server::Store::Embedded) => run,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            }
        }
        Backend::Postgres => {
            let nats = PrivateNats::start(&args.nats_server).await?;
            let database = BenchDatabase::create(&args.postgres_url).await?;
            eprintln!(
                "incident-loop-bench: database {}, NATS {}",
                database.name, nats.url
            );
            let store = server::Store::Postgres {
                database_url: database.url.clone(),
                nats_url: nats.url.clone(),
            };
            // Whatever happens (an error, Ctrl-C), the service is stopped and the database
            // dropped.
            let outcome = tokio::select! {
                run = measure(args, binary, backend, &store) => run,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            };
            database.drop_database().await;
            drop(nats);
            outcome
        }
    }
}

async fn measure(
    args: &Args,
    binary: &std::path::Path,
    backend: Backend,
    store: &server::Store,
) -> anyhow::Result<load::Run> {
    let service = server::Service::start(binary, backend, store, &args.service_env).await?;
    let outcome = load::run(args, &service).await;
    let stopped = service.stop().await;
    let mut run = outcome?;
    run.server = stopped;
    Ok(run)
}
