//! Phases 2 and 3: the full service in the bench's process (`opscase::Application`, embedded
//! bus, in-process relay, no NATS: the default `opscase serve` shape) under a closed-loop load.
//! C workers each loop: take an open case, PATCH `start_analysis` then `cancel` with a fresh
//! `Idempotency-Key` and the `If-Match` version it tracks, move to its next case.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use opscase::config::Secret;
use opscase::{Application, Config};
use opscase_bench::cpu::CpuTimes;
use opscase_bench::stats::Summary;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, ETAG};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::Args;

/// The bootstrap admin key of the bench's services (they live only as long as the run).
pub const ADMIN_KEY: &str = "osk_transition_bench_0123456789abcdef0123456789abcdef";
/// Cases are opened before a load with this many requests at a time.
const OPEN_CONCURRENCY: usize = 32;
/// A request that takes longer is an error ("timeout"); it also bounds each load's end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most cases opened ahead of one load.
const MAX_TOP_UP: usize = 150_000;
/// Start-up-to-ready samples on fresh data dirs.
const STARTUP_SAMPLES: usize = 3;

pub enum Target<'a> {
    Postgres(&'a str),
    Sqlite,
}

/// One backend (PostgreSQL or SQLite) across all client counts.
pub struct Backend {
    pub name: &'static str,
    pub pool_size: u32,
    pub levels: Vec<Level>,
    /// Peak resident set of the bench process from just before the service was built to the
    /// end of its last load (VmHWM, reset through /proc/self/clear_refs when the kernel allows).
    pub peak_rss_mib: Option<f64>,
    pub rss_reset: bool,
    pub cases_opened: usize,
    pub open_s: f64,
}

/// One closed-loop load at one concurrency.
pub struct Level {
    pub clients: usize,
    pub accepted: u64,
    pub elapsed_s: f64,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an HTTP answer, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Every transition request, answered or not, in ms.
    pub latency_ms: Option<Summary>,
    /// Cases a worker had to open during the load because the pool ran dry (not timed).
    pub opened_inline: u64,
    /// VmHWM at the end of this load (cumulative over the backend's loads).
    pub peak_rss_mib: Option<f64>,
    /// Whole machine busy, and this process (service + load generator), as shares of all cores.
    pub cpu_busy: Option<f64>,
    pub cpu_process: Option<f64>,
    /// SQLite only: write transactions and the COMMITs that made them durable during the load
    /// (from the service's `/metrics`); their ratio is the average group-commit size.
    pub group_commits: Option<(u64, u64)>,
}

impl Level {
    pub fn tps(&self) -> f64 {
        self.accepted as f64 / self.elapsed_s
    }

    pub fn failures(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| !(200..300).contains(*status))
            .map(|(_, count)| count)
            .sum::<u64>()
            + self.errors.values().sum::<u64>()
    }
}

/// Start-up to ready on the embedded default: `Application::build` on a fresh data dir (SQLite
/// created and migrated), then the first `/readyz` answered 200.
pub struct Startup {
    pub build_s: f64,
    pub ready_s: f64,
}

pub fn base_config(key: &str) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.auth.bootstrap_admin_key = Some(Secret::new(key));
    // Unlimited: the bench is the only client, and a token bucket would shape the load.
    config.auth.rate_limit_per_second = 0.0;
    config.bus.nats_url = None;
    config.bus.relay_in_process = true;
    Ok(config)
}

/// A running service and how to stop it.
pub struct Running {
    pub base: String,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let app = Application::build(config)
            .await
            .context("the service did not start")?;
        let base = format!("http://{}", app.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Ok(Self { base, stop, server })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(30), self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                eprintln!("transition-bench: the service stopped with: {error:#}")
            }
            Ok(Err(error)) => eprintln!("transition-bench: the service task failed: {error}"),
            Err(_) => eprintln!("transition-bench: the service did not stop within 30 s"),
        }
    }
}

pub async fn startup_samples() -> anyhow::Result<Vec<Startup>> {
    let client = Client::builder().timeout(Duration::from_secs(5)).build()?;
    let mut samples = Vec::new();
    for _ in 0..STARTUP_SAMPLES {
        let dir = tempfile::tempdir().context("temp data dir")?;
        let mut config = base_config(ADMIN_KEY)?;
        config.database.data_dir = dir.path().to_path_buf();
        let started = Instant::now();
        let running = Running::start(&config).await?;
        let build_s = started.elapsed().as_secs_f64();
        let url = format!("{}/readyz", running.base);
        let ready = loop {
            if let Ok(response) = client.get(&url).send().await {
                if response.status() == StatusCode::OK {
                    break Some(started.elapsed().as_secs_f64());
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        running.stop().await;
        let ready_s = ready.context("/readyz did not answer 200 within 10 s")?;
        eprintln!(
            "transition-bench: embedded start-up: build {build_s:.3} s, ready {ready_s:.3} s"
        );
        samples.push(Startup { build_s, ready_s });
    }
    Ok(samples)
}

pub async fn run(args: &Args, target: Target<'_>) -> anyhow::Result<Backend> {
    let data_dir = tempfile::tempdir().context("temp data dir")?;
    let (config, name) = service_config(args, target, data_dir.path())?;
    let rss_reset = reset_peak_rss();
    let running = Running::start(&config).await?;
    let measured = measure(
        args,
        &running.base,
        name,
        config.database.pool_size,
        rss_reset,
    )
    .await;
    running.stop().await;
    measured
}

/// The service under test on `target`: PostgreSQL (pool `--pg-pool-size`, else the default), or the embedded default
/// with SQLite in `data_dir`.
pub fn service_config(
    args: &Args,
    target: Target<'_>,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Config, &'static str)> {
    let mut config = base_config(ADMIN_KEY)?;
    let name = match target {
        Target::Postgres(url) => {
            config.database.url = Some(url.to_string());
            if let Some(size) = args.pg_pool_size {
                config.database.pool_size = size;
            }
            "postgres"
        }
        Target::Sqlite => {
            // The embedded default: no URL, SQLite in the data dir, default pool.
            config.database.data_dir = data_dir.to_path_buf();
            config.database.sqlite_synchronous = args.sqlite_synchronous;
            "sqlite"
        }
    };
    Ok((config, name))
}

async fn measure(
    args: &Args,
    base: &str,
    name: &'static str,
    pool_size: u32,
    rss_reset: bool,
) -> anyhow::Result<Backend> {
    let most = args.clients.iter().copied().max().unwrap_or(1);
    let client = http_client(most.max(OPEN_CONCURRENCY))?;
    let pool = Arc::new(Mutex::new(VecDeque::new()));
    let mut backend = Backend {
        name,
        pool_size,
        levels: Vec::new(),
        peak_rss_mib: None,
        rss_reset,
        cases_opened: 0,
        open_s: 0.0,
    };
    for &clients in &args.clients {
        // Enough open cases for this load: --cases, or what the previous load's rate needs
        // (two transitions per case) if this load runs up to 3 times as fast.
        let wanted = backend.levels.last().map_or(args.cases as usize, |last| {
            (last.tps() * f64::from(args.seconds) * 1.5) as usize
        });
        let wanted = wanted.clamp(args.cases as usize, MAX_TOP_UP);
        let have = pool.lock().expect("case pool").len();
        if have < wanted {
            let started = Instant::now();
            let opened = open_cases(&client, base, wanted - have).await?;
            let open_s = started.elapsed().as_secs_f64();
            eprintln!(
                "transition-bench: {name}: opened {} cases in {open_s:.1} s ({:.0}/s)",
                opened.len(),
                opened.len() as f64 / open_s
            );
            backend.cases_opened += opened.len();
            backend.open_s += open_s;
            pool.lock().expect("case pool").extend(opened);
        }
        eprintln!(
            "transition-bench: {name}: {clients} workers, {} s",
            args.seconds
        );
        let counters_before = group_commit_counters(&client, base).await;
        let mut level = drive(&client, base, &pool, clients, args.seconds).await;
        if let (Some(before), Some(after)) =
            (counters_before, group_commit_counters(&client, base).await)
        {
            level.group_commits = Some((after.0 - before.0, after.1 - before.1));
        }
        eprintln!(
            "transition-bench: {name} {clients} workers: {:.0} transitions/s, {} failed",
            level.tps(),
            level.failures()
        );
        backend.levels.push(level);
    }
    backend.peak_rss_mib = peak_rss_mib();
    Ok(backend)
}

/// Keep-alive HTTP/1.1 with a connection per worker, and the admin key on each request.
pub fn http_client(connections: usize) -> anyhow::Result<Client> {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {ADMIN_KEY}"))?,
    );
    Ok(Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

async fn open_case(client: &Client, base: &str, number: usize) -> anyhow::Result<String> {
    let response = client
        .post(format!("{base}/v1/cases"))
        .json(&json!({"title": format!("transition bench {number}")}))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if status != StatusCode::CREATED {
        bail!("opening a case answered {status}: {body}");
    }
    body["id"]
        .as_str()
        .map(str::to_string)
        .context("the opened case has no id")
}

pub async fn open_cases(client: &Client, base: &str, count: usize) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(0..count)
        .map(|number| open_case(client, base, number))
        .buffer_unordered(OPEN_CONCURRENCY)
        .try_collect()
        .await
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    accepted: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    latency_ms: Vec<f64>,
    opened_inline: u64,
}

/// Closed loop: `clients` workers each send one request at a time until `seconds` have passed;
/// the load ends when the last response is in.
async fn drive(
    client: &Client,
    base: &str,
    pool: &Arc<Mutex<VecDeque<String>>>,
    clients: usize,
    seconds: u32,
) -> Level {
    let cpu_before = CpuTimes::read();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(u64::from(seconds));
    let workers: Vec<_> = (0..clients)
        .map(|worker| {
            let client = client.clone();
            let base = base.to_string();
            let pool = pool.clone();
            tokio::spawn(async move { work(&client, &base, &pool, deadline, worker).await })
        })
        .collect();
    let mut total = Tally::default();
    for tally in futures::future::join_all(workers).await {
        let tally = match tally {
            Ok(tally) => tally,
            Err(error) => {
                *total.errors.entry(format!("worker: {error}")).or_default() += 1;
                continue;
            }
        };
        total.accepted += tally.accepted;
        total.opened_inline += tally.opened_inline;
        total.latency_ms.extend(tally.latency_ms);
        for (status, count) in tally.statuses {
            *total.statuses.entry(status).or_default() += count;
        }
        for (kind, count) in tally.errors {
            *total.errors.entry(kind).or_default() += count;
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let cpu_after = CpuTimes::read();
    Level {
        clients,
        accepted: total.accepted,
        elapsed_s,
        statuses: total.statuses,
        errors: total.errors,
        latency_ms: Summary::of(total.latency_ms),
        opened_inline: total.opened_inline,
        peak_rss_mib: peak_rss_mib(),
        cpu_busy: CpuTimes::busy_between(cpu_before, cpu_after),
        cpu_process: CpuTimes::process_between(cpu_before, cpu_after),
        group_commits: None,
    }
}

/// The embedded store's (transactions, commits) counters from `/metrics`; `None` when the
/// service does not export them (PostgreSQL) or they cannot be read.
async fn group_commit_counters(client: &Client, base: &str) -> Option<(u64, u64)> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))?
            .trim()
            .parse()
            .ok()
    };
    Some((
        value("sqlite_write_transactions_total")?,
        value("sqlite_commits_total")?,
    ))
}

/// One worker: walk each case it takes NEW → start_analysis → ANALYZING → cancel → CLOSED.
async fn work(
    client: &Client,
    base: &str,
    pool: &Mutex<VecDeque<String>>,
    deadline: Instant,
    worker: usize,
) -> Tally {
    let mut tally = Tally::default();
    // (case id, version the service last reported, whether start_analysis was accepted)
    let mut current: Option<(String, i64, bool)> = None;
    while Instant::now() < deadline {
        let (case, version, analyzing) = match current.take() {
            Some(case) => case,
            None => {
                let next = pool.lock().expect("case pool").pop_front();
                match next {
                    Some(id) => (id, 1, false),
                    // The pool ran dry: open one more (not timed, counted in the report).
                    None => match open_case(client, base, worker).await {
                        Ok(id) => {
                            tally.opened_inline += 1;
                            (id, 1, false)
                        }
                        Err(error) => {
                            *tally.errors.entry(format!("open: {error}")).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                }
            }
        };
        let body = if analyzing {
            json!({"event": "cancel", "reason": "transition-bench"})
        } else {
            json!({"event": "start_analysis"})
        };
        let sent = Instant::now();
        let url = format!("{base}/v1/cases/{case}/transition");
        let answer = patch_transition(client, &url, version, &body).await;
        tally.latency_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        match answer {
            Ok((status, etag)) => {
                *tally.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    tally.accepted += 1;
                    if !analyzing {
                        current = Some((case, etag.unwrap_or(version + 1), true));
                    }
                }
                // A refusal leaves the case where it is: take the next one.
            }
            Err(kind) => *tally.errors.entry(kind).or_default() += 1,
        }
    }
    tally
}

/// PATCH one transition with a fresh `Idempotency-Key` and `If-Match: "<version>"`, and read
/// the whole answer (so the connection goes back to the pool): its status and the version
/// its ETag names, or the kind of failure.
pub async fn patch_transition(
    client: &Client,
    url: &str,
    version: i64,
    body: &Value,
) -> Result<(u16, Option<i64>), String> {
    let response = client
        .patch(url)
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .header("If-Match", format!("\"{version}\""))
        .json(body)
        .send()
        .await
        .map_err(failure)?;
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get(ETAG)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim_matches('"').parse::<i64>().ok());
    response.bytes().await.map_err(failure)?;
    Ok((status, etag))
}

pub fn failure(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else if error.is_request() {
        "request"
    } else {
        "other"
    };
    kind.to_string()
}

/// Reset this process's peak RSS (VmHWM) to its current RSS: "5" to /proc/self/clear_refs.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// VmHWM of this process, in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}
