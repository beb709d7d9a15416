//! Phase 1: PostgreSQL's own limit. A fresh database is migrated exactly as the service does
//! (`orchestrator::connect(..).migrate()`, so the outbox NOTIFY trigger is there), seeded with
//! `--cases` NEW cases whose ids pgbench can compute (`md5('opscase-bench-' || n)::uuid`), then
//! `pgbench -n -f transition.sql -c C -j min(C,2) -T seconds` runs the transition transaction.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use opscase_bench::stats::Summary;
use sqlx::postgres::PgPoolOptions;

use crate::Args;

pub struct PgbenchRun {
    pub clients: usize,
    pub threads: usize,
    pub tps: f64,
    pub latency_avg_ms: f64,
    pub processed: u64,
    pub failed: u64,
    /// Per-transaction latency from pgbench's `--log` files.
    pub latency_ms: Option<Summary>,
    /// Average latency of each statement of the script (`--report-per-command`), in ms.
    pub per_command: Vec<(f64, String)>,
    pub seed_s: f64,
}

/// `pgbench --version`, e.g. "pgbench (PostgreSQL) 15.20".
pub fn version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

pub async fn run(args: &Args, database_url: &str, clients: usize) -> anyhow::Result<PgbenchRun> {
    let started = Instant::now();
    let store = orchestrator::connect(database_url, 2).await?;
    store.migrate().await?;
    store.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await?;
    let seeded = sqlx::query(
        "INSERT INTO ops_case (id, tenant, title, severity, status, version, created_by, \
         created_at, updated_at) \
         SELECT md5('opscase-bench-' || n)::uuid, 'default', 'bench ' || n, 'medium', 'NEW', 1, \
                'transition-bench', now(), now() \
         FROM generate_series(1, $1) AS n",
    )
    .bind(i64::from(args.cases))
    .execute(&pool)
    .await?;
    if seeded.rows_affected() != u64::from(args.cases) {
        bail!(
            "seeded {} cases, not {}",
            seeded.rows_affected(),
            args.cases
        );
    }
    sqlx::raw_sql("VACUUM (ANALYZE)").execute(&pool).await?;
    pool.close().await;
    let seed_s = started.elapsed().as_secs_f64();

    let threads = clients.min(2);
    let logs = tempfile::tempdir().context("temp dir for pgbench logs")?;
    let prefix = logs.path().join("pgbench_log");
    let pgbench = args.pgbench.clone();
    let script = args.script.clone();
    let seconds = args.seconds;
    let ncases = args.cases;
    let url = database_url.to_string();
    let prefix_arg = prefix.display().to_string();
    let protocol = args.pgbench_protocol.clone();
    eprintln!("transition-bench: pgbench, {clients} clients, {seconds} s");
    // pgbench blocks for --seconds: off the async threads.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&pgbench)
            .args(["-n", "-M", &protocol, "-f"])
            .arg(&script)
            .args(["-D", &format!("ncases={ncases}")])
            .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
            .args(["-T", &seconds.to_string()])
            .args(["--report-per-command", "--log", "--log-prefix", &prefix_arg])
            .arg(&url)
            .output()
    })
    .await?
    .with_context(|| format!("cannot run {}", args.pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let value = |label: &str| -> Option<f64> {
        let line = stdout.lines().find(|line| line.starts_with(label))?;
        line[label.len()..].split_whitespace().next()?.parse().ok()
    };
    let run = PgbenchRun {
        clients,
        threads,
        tps: value("tps = ").context("no tps in pgbench's output")?,
        latency_avg_ms: value("latency average = ").context("no latency in pgbench's output")?,
        processed: value("number of transactions actually processed: ").unwrap_or(0.0) as u64,
        failed: value("number of failed transactions: ").unwrap_or(0.0) as u64,
        latency_ms: Summary::of(read_logs(logs.path())?),
        per_command: per_command(&stdout),
        seed_s,
    };
    eprintln!(
        "transition-bench: pgbench {clients} clients: {:.0} tps, latency average {:.2} ms",
        run.tps, run.latency_avg_ms
    );
    Ok(run)
}

/// Every transaction's latency from the `--log` files, in ms. Each line is
/// `client_id transaction_no time script_no time_epoch time_us`, with `time` in µs.
fn read_logs(dir: &Path) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        latencies.extend(text.lines().filter_map(|line| {
            let micros: f64 = line.split_whitespace().nth(2)?.parse().ok()?;
            Some(micros / 1000.0)
        }));
    }
    Ok(latencies)
}

/// The `--report-per-command` lines after "statement latencies in milliseconds": the average
/// latency and the start of each statement.
fn per_command(stdout: &str) -> Vec<(f64, String)> {
    stdout
        .lines()
        .skip_while(|line| !line.contains("statement latencies in milliseconds"))
        .skip(1)
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let average: f64 = words.next()?.parse().ok()?;
            // pgbench 15 also prints the failures and retries columns.
            let rest: Vec<&str> = words.skip_while(|w| w.parse::<f64>().is_ok()).collect();
            let statement: String = rest.join(" ").chars().take(60).collect();
            Some((average, statement))
        })
        .collect()
}
