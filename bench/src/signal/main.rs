//! `signal-bench`: the sensor's Alertmanager ingest and the Analyst's detection-to-case
//! latency, on the full service over HTTP on a loopback port, on the embedded SQLite default
//! and on PostgreSQL. On demand only (never part of `cargo test`); see bench/README.md.
//!
//! Each measurement gets a fresh `opscase serve` (the release binary, a child process, so its
//! peak RSS is the service's alone) on a fresh store:
//! 1. **ingest** at each `--rates` (alerts/s): Alertmanager v4 deliveries on an open-loop
//!    timetable ([`workload`], [`ingest`]), then the database checked: one case per group, no
//!    duplicate case, every envelope accounted for;
//! 2. **detect**: a rule with the default detector, a back-filled day per series, then one
//!    anomalous bucket per series, timed to its case ([`detect`]).
//!
//! Written: `signal-<UTC timestamp>.json|.md` in `--out` ([`report`]). The exit code is 1 only
//! when a group got two cases or the cases opened are not the ones expected.

mod db;
mod detect;
mod ingest;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use chrono::Utc;
use clap::Parser;
use opscase_bench::service::{self, Launch, Service, Stopped, ADMIN_KEY};
use opscase_bench::setup::{self, BenchDatabase};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;

/// Where results go unless `--out` says otherwise: `bench/results`, wherever cargo runs from.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

#[derive(Debug, Clone, Parser)]
#[command(
    name = "signal-bench",
    about = "Sensor ingest of Alertmanager deliveries (latency, cases, duplicates, RSS) and the \
             Analyst's detection-to-case latency, on SQLite and PostgreSQL"
)]
pub struct Args {
    /// Backends, comma-separated: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub backends: Vec<Backend>,
    /// Offered ingest rates in alerts per second, comma-separated; each gets its own service.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    pub rates: Vec<u32>,
    /// How long each ingest load offers alerts.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
    /// Most alerts in one delivery (a delivery to an existing group has 1 to this many).
    #[arg(long, default_value_t = 5)]
    pub max_alerts_per_delivery: usize,
    /// Share of the alerts that open a new group.
    #[arg(long, default_value_t = 0.1)]
    pub new_group_share: f64,
    /// Most deliveries in flight; one due when all are taken is not sent and counts as late.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Series the Analyst watches (one anomaly each).
    #[arg(long, default_value_t = 200)]
    pub series: usize,
    /// Healthy one-minute buckets back-filled per series before the anomalies (at least a
    /// day: the default detector needs it).
    #[arg(long, default_value_t = 1440)]
    pub backfill_minutes: u32,
    /// Anomalous buckets sent per second (one POST each).
    #[arg(long, default_value_t = 10)]
    pub anomaly_rate: u32,
    /// How often the bench polls the database for the Analyst's cases.
    #[arg(long, default_value_t = 20)]
    pub poll_ms: u64,
    /// Leave out the ingest loads.
    #[arg(long)]
    pub skip_ingest: bool,
    /// Leave out the Analyst's detection.
    #[arg(long)]
    pub skip_detect: bool,
    /// Extra `OPSCASE_*` settings for the service, `NAME=VALUE`, repeatable.
    #[arg(long = "service-env", value_name = "NAME=VALUE")]
    pub service_env: Vec<String>,
    /// The `opscase` binary to run. Default: build it (`cargo build --release --bin opscase`)
    /// into the bench's own target directory.
    #[arg(long)]
    pub opscase_bin: Option<PathBuf>,
    /// A PostgreSQL database to connect to for CREATE / DROP DATABASE (loopback only).
    #[arg(
        long,
        env = "OPSCASE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres_url: String,
    /// Directory for signal-<UTC timestamp>.json and .md.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

impl Args {
    /// Keep every loop and the whole run bounded, and every target on this machine.
    fn validate(&mut self) -> anyhow::Result<()> {
        if self.rates.is_empty() || self.rates.iter().any(|rate| !(1..=10_000).contains(rate)) {
            bail!("--rates must be 1 to 10,000 alerts per second each");
        }
        if !(1..=600).contains(&self.seconds) {
            bail!("--seconds must be 1 to 600");
        }
        if !(1..=100).contains(&self.max_alerts_per_delivery) {
            bail!("--max-alerts-per-delivery must be 1 to 100");
        }
        if !(0.0..=1.0).contains(&self.new_group_share) || self.new_group_share == 0.0 {
            bail!("--new-group-share must be above 0 and at most 1");
        }
        if !(1..=4096).contains(&self.in_flight) {
            bail!("--in-flight must be 1 to 4,096");
        }
        if !(1..=5_000).contains(&self.series) {
            bail!("--series must be 1 to 5,000");
        }
        // The default detector's calibration starts from a prior that fades over about a day
        // (memory × ln 2 buckets): with less history it calls nothing rare.
        if !(1440..=7 * 1440).contains(&self.backfill_minutes) {
            bail!("--backfill-minutes must be 1,440 (a day) to 10,080 (a week)");
        }
        if !(1..=1_000).contains(&self.anomaly_rate) {
            bail!("--anomaly-rate must be 1 to 1,000 per second");
        }
        // The anomalies must all be sent well within analyst.max_age_s (600 s) of their bucket.
        if self.series as f64 / f64::from(self.anomaly_rate) > 300.0 {
            bail!("--series / --anomaly-rate must be at most 300 s");
        }
        if !(1..=1_000).contains(&self.poll_ms) {
            bail!("--poll-ms must be 1 to 1,000");
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
        if self.skip_ingest && self.skip_detect {
            bail!("--skip-ingest and --skip-detect leave nothing to measure");
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

/// What one service measured.
pub enum Measured {
    Ingest(ingest::IngestRun),
    Detect(detect::DetectRun),
}

/// One service's measurement: its backend, start-up, what it measured, how it ended.
pub struct Phase {
    pub backend: Backend,
    pub startup_s: f64,
    pub measured: Measured,
    pub stopped: Stopped,
}

#[derive(Clone, Copy)]
enum Part {
    Ingest(u32),
    Detect,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.validate()?;
    let binary = match &args.opscase_bin {
        Some(path) => path.clone(),
        None => service::build_release_binary()?,
    };
    // Absolute: the service runs in a temp dir of its own.
    let binary = std::fs::canonicalize(&binary)
        .with_context(|| format!("{} not found (pass --opscase-bin)", binary.display()))?;

    let started_at = Utc::now();
    let uses_postgres = args.backends.contains(&Backend::Postgres);
    let mut machine = match setup::machine_facts(&args.postgres_url, None).await {
        Ok(machine) => machine,
        Err(error) if !uses_postgres => json!({
            "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "postgres_unreachable": format!("{error:#}"),
        }),
        Err(error) => return Err(error),
    };
    machine["opscase_version"] = json!(opscase_version(&binary));

    let mut parts: Vec<Part> = Vec::new();
    if !args.skip_ingest {
        parts.extend(args.rates.iter().map(|rate| Part::Ingest(*rate)));
    }
    if !args.skip_detect {
        parts.push(Part::Detect);
    }
    let mut phases = Vec::new();
    for &backend in &args.backends {
        for &part in &parts {
            let phase = tokio::select! {
                phase = run_phase(&args, &binary, backend, part) => phase?,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            };
            eprintln!("signal-bench: {}", report::summary_line(&phase));
            phases.push(phase);
        }
    }

    let report = report::Report {
        args: args.clone(),
        binary,
        started_at,
        finished_at: Utc::now(),
        machine,
        phases,
    };
    let written = report.write(&args.out)?;
    println!("{}", report.markdown());
    for path in written {
        eprintln!("signal-bench: wrote {}", path.display());
    }
    if !report.integrity_ok() {
        eprintln!(
            "signal-bench: a group got two cases, or the cases opened are not the expected ones"
        );
        std::process::exit(1);
    }
    Ok(())
}

/// A fresh store and service for one measurement; the service is stopped and the database
/// dropped whatever happens (an interrupted run drops both: the child is killed with it).
async fn run_phase(
    args: &Args,
    binary: &Path,
    backend: Backend,
    part: Part,
) -> anyhow::Result<Phase> {
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(BenchDatabase::create(&args.postgres_url).await?),
    };
    let outcome = measure(args, binary, backend, part, database.as_ref()).await;
    if let Some(database) = database {
        database.drop_database().await;
    }
    outcome
}

async fn measure(
    args: &Args,
    binary: &Path,
    backend: Backend,
    part: Part,
    database: Option<&BenchDatabase>,
) -> anyhow::Result<Phase> {
    let service = Service::start(Launch {
        binary,
        postgres_url: database.map(|database| database.url.as_str()),
        config_toml: matches!(part, Part::Detect).then_some(detect::CONFIG_TOML),
        env: &args.service_env,
    })
    .await?;
    eprintln!(
        "signal-bench: {} service (pid {}) ready at {} after {:.2} s",
        backend.label(),
        service.pid,
        service.base,
        service.startup_s
    );
    let sensor_key = sensor_key(&service.base).await?;
    let measured = match part {
        Part::Ingest(rate) => {
            eprintln!(
                "signal-bench: {}: {rate} alerts/s for {} s",
                backend.label(),
                args.seconds
            );
            ingest::run(args, &service, &sensor_key, rate)
                .await
                .map(Measured::Ingest)
        }
        Part::Detect => {
            eprintln!(
                "signal-bench: {}: back-fill {} series, then one anomaly each",
                backend.label(),
                args.series
            );
            detect::run(args, &service, &sensor_key)
                .await
                .map(Measured::Detect)
        }
    };
    let startup_s = service.startup_s;
    let stopped = service.stop().await;
    Ok(Phase {
        backend,
        startup_s,
        measured: measured?,
        stopped,
    })
}

/// A key with the `sensor` role, as Alertmanager and a metrics shipper would post with.
async fn sensor_key(base: &str) -> anyhow::Result<String> {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/keys"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "signal-bench", "roles": ["sensor"]}))
        .send()
        .await
        .context("POST /v1/keys")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    match body["key"].as_str() {
        Some(key) if status.is_success() => Ok(key.to_string()),
        _ => bail!("POST /v1/keys answered {status}: {body}"),
    }
}

fn opscase_version(binary: &Path) -> Option<String> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
