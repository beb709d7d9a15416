//! Part 2, the Analyst's detection-to-case latency: a rule with the default detector watches
//! `p95_ms` of `--series` services. A day of healthy one-minute buckets per series is
//! back-filled first (it only warms the detectors up: it must open no case), then each series
//! gets one clearly anomalous bucket, one `POST /v1/metrics/1m` each on an open-loop
//! timetable, and the time from that POST's start to the case is measured two ways:
//! - **stamped**: the case's `created_at` in the database (stamped by the sensor when it starts
//!   taking the finding, just before its transaction) minus the bench's clock at the POST's
//!   start; the same machine, the same clock. It leaves out the commit, so it is a lower bound;
//! - **observed**: when the bench's own poll of the database (every `--poll-ms`) first saw the
//!   case, committed, minus the same start: an upper bound, by at most one poll.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, DurationRound, Utc};
use opscase_bench::cpu::{self, CpuTimes};
use opscase_bench::service::{clock_ticks, Service};
use reqwest::Client;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::db::{Db, Query};
use crate::workload::SplitMix64;
use crate::Args;

/// The tenant and metric of every series; a series is one resource (`svc-NNNNN`).
const TENANT: &str = "t-001";
const METRIC: &str = "p95_ms";
/// The rule the service runs with: the minimal rule of the README, default detector.
pub const RULE_NAME: &str = "bench-latency";
pub const CONFIG_TOML: &str = r#"# signal-bench: the Analyst watches p95_ms of every resource with the default detector.
[[analyst.rules]]
name = "bench-latency"
metric = "p95_ms"
"#;
/// The anomalous bucket is this many times the series' baseline.
pub const ANOMALY_FACTOR: f64 = 10.0;
/// How long the back-fill may take to be judged, and the anomalies to open their cases.
const JUDGE_TIMEOUT: Duration = Duration::from_secs(600);
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Back-fill requests in flight at once.
const BACKFILL_CONCURRENCY: usize = 2;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct DetectRun {
    pub series: usize,
    pub backfill_points: u64,
    pub backfill_requests: u64,
    /// From the first back-fill POST to the last answer, and to every series judged up to its
    /// last back-filled bucket (`analyst_series.last_bucket`).
    pub backfill_post_s: f64,
    pub backfill_judged_s: f64,
    pub backfill_http_ms: Vec<f64>,
    /// Analyst cases once the back-fill was judged: must be 0.
    pub backfill_cases: u64,
    /// Age of the anomalous bucket when the first anomaly was sent (must stay under
    /// `analyst.max_age_s`, 600 s, for it to open a case).
    pub anomaly_bucket_age_s: f64,
    pub anomalies_sent: u64,
    pub anomaly_errors: BTreeMap<String, u64>,
    pub anomaly_http_ms: Vec<f64>,
    pub max_dispatch_delay_ms: f64,
    /// Per series with a case: created_at − POST start, and first seen − POST start, ms.
    pub stamped_ms: Vec<f64>,
    pub observed_ms: Vec<f64>,
    /// Analyst cases after the anomalies, series sent an anomaly without a case, and cases
    /// beyond one per series.
    pub cases_opened: u64,
    pub missing: u64,
    pub extra_cases: u64,
    pub service_cpu: Option<f64>,
    pub machine_busy: Option<f64>,
    /// CPU while the anomalies were sent and cased, by command name, largest first.
    pub cpu_by_command: Vec<(String, f64)>,
}

impl DetectRun {
    pub fn ok(&self) -> bool {
        self.backfill_cases == 0 && self.missing == 0 && self.extra_cases == 0
    }
}

const JUDGED: Query = Query {
    sqlite: "SELECT resource, last_bucket FROM analyst_series",
    postgres: "SELECT resource, last_bucket FROM analyst_series",
};
const ANALYST_CASES: Query = Query {
    sqlite: "SELECT labels, created_at FROM ops_case WHERE source = 'analyst'",
    postgres: "SELECT labels::text, created_at FROM ops_case WHERE source = 'analyst'",
};

fn resource(series: usize) -> String {
    format!("svc-{series:05}")
}

/// The series' healthy level, and a healthy bucket: ±5% of it, uniform (bounded noise, so a
/// day of it holds no outlier the detector would call rare).
fn baseline(series: usize) -> f64 {
    80.0 + ((series * 37) % 120) as f64
}

pub async fn run(args: &Args, service: &Service, sensor_key: &str) -> anyhow::Result<DetectRun> {
    let client = Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let url = format!("{}/v1/metrics/1m", service.base);
    let authorization = format!("Bearer {sensor_key}");
    let mut run = DetectRun {
        series: args.series,
        ..DetectRun::default()
    };

    // 1. A day of healthy buckets per series, one request per series (oldest bucket first),
    //    ending two minutes ago.
    let now = Utc::now().duration_trunc(chrono::Duration::minutes(1))?;
    let last_backfilled = now - chrono::Duration::minutes(2);
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(BACKFILL_CONCURRENCY));
    let mut tasks = Vec::with_capacity(args.series);
    for series in 0..args.series {
        let mut rng = SplitMix64(series as u64 + 1);
        let base = baseline(series);
        let points: Vec<Value> = (0..args.backfill_minutes)
            .rev()
            .map(|ago| {
                let bucket = last_backfilled - chrono::Duration::minutes(i64::from(ago));
                json!({"tenant": TENANT, "resource": resource(series), "metric": METRIC,
                       "bucket": bucket.to_rfc3339(), "p95": base * (0.95 + 0.1 * rng.unit())})
            })
            .collect();
        run.backfill_points += points.len() as u64;
        let request = client
            .post(&url)
            .header("Authorization", &authorization)
            .json(&json!({ "points": points }));
        let permit = permits.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = post(request).await;
            drop(permit);
            (outcome, sent.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    for task in tasks {
        let (outcome, ms) = task.await?;
        outcome.context("back-fill POST /v1/metrics/1m")?;
        run.backfill_http_ms.push(ms);
        run.backfill_requests += 1;
    }
    run.backfill_post_s = started.elapsed().as_secs_f64();

    // 2. Until the rule has judged every series up to its last back-filled bucket.
    let mut db = Db::open(&service.database).await?;
    loop {
        let judged: Vec<(String, Option<DateTime<Utc>>)> = db.rows(&JUDGED).await?;
        let done = judged
            .iter()
            .filter(|(_, last)| *last == Some(last_backfilled))
            .count();
        if done == args.series {
            break;
        }
        if started.elapsed() > JUDGE_TIMEOUT {
            bail!(
                "the analyst judged {done} of {} back-filled series within {} s",
                args.series,
                JUDGE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    run.backfill_judged_s = started.elapsed().as_secs_f64();
    let cases: Vec<(String, DateTime<Utc>)> = db.rows(&ANALYST_CASES).await?;
    run.backfill_cases = cases.len() as u64;
    eprintln!(
        "signal-bench: back-fill of {} points posted in {:.1} s, judged after {:.1} s, {} cases",
        run.backfill_points, run.backfill_post_s, run.backfill_judged_s, run.backfill_cases
    );

    // 3. One anomalous bucket per series in this minute, on a timetable, while a poll of the
    //    database watches for the cases.
    let anomaly_bucket = Utc::now().duration_trunc(chrono::Duration::minutes(1))?;
    run.anomaly_bucket_age_s = (Utc::now() - anomaly_bucket).num_milliseconds() as f64 / 1000.0;
    let seen: Arc<Mutex<BTreeMap<String, DateTime<Utc>>>> = Arc::default();
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = tokio::spawn(watch_cases(
        db,
        Duration::from_millis(args.poll_ms),
        seen.clone(),
        watching.clone(),
        args.series,
    ));
    let cpu_before = CpuTimes::read();
    let processes_before = cpu::process_snapshot();
    let service_cpu_before = service.cpu_seconds();
    let anomalies_started = Instant::now();
    let mut sends = Vec::with_capacity(args.series);
    let mut max_delay = Duration::ZERO;
    for series in 0..args.series {
        let due = anomalies_started
            + Duration::from_secs_f64(series as f64 / f64::from(args.anomaly_rate));
        tokio::time::sleep_until(due).await;
        max_delay = max_delay.max(due.elapsed());
        let point = json!({"tenant": TENANT, "resource": resource(series), "metric": METRIC,
                           "bucket": anomaly_bucket.to_rfc3339(),
                           "p95": baseline(series) * ANOMALY_FACTOR});
        let request = client
            .post(&url)
            .header("Authorization", &authorization)
            .json(&json!({ "points": [point] }));
        sends.push(tokio::spawn(async move {
            let sent_at = Utc::now();
            let sent = Instant::now();
            let outcome = post(request).await;
            (
                series,
                sent_at,
                outcome,
                sent.elapsed().as_secs_f64() * 1000.0,
            )
        }));
    }
    run.max_dispatch_delay_ms = max_delay.as_secs_f64() * 1000.0;
    let mut sent_at_of = BTreeMap::new();
    for send in sends {
        let (series, sent_at, outcome, ms) = send.await?;
        run.anomalies_sent += 1;
        match outcome {
            Ok(()) => {
                run.anomaly_http_ms.push(ms);
                sent_at_of.insert(resource(series), sent_at);
            }
            Err(error) => {
                *run.anomaly_errors.entry(format!("{error:#}")).or_default() += 1;
            }
        }
    }
    // Every anomaly was answered: the poll now gives the cases still to come CASE_TIMEOUT.
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut db = poller.await??;
    let wall = anomalies_started.elapsed().as_secs_f64();
    run.machine_busy = CpuTimes::busy_between(cpu_before, CpuTimes::read());
    run.cpu_by_command = cpu::cpu_by_command(
        &processes_before,
        &cpu::process_snapshot(),
        wall,
        clock_ticks(),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    run.service_cpu = match (service_cpu_before, service.cpu_seconds()) {
        (Some(before), Some(after)) if wall > 0.0 => Some((after - before) / wall / cores),
        _ => None,
    };

    // 4. Each case's stamp against its POST.
    let cases: Vec<(String, DateTime<Utc>)> = db.rows(&ANALYST_CASES).await?;
    db.close().await;
    run.cases_opened = cases.len() as u64;
    let seen = seen.lock().expect("seen lock").clone();
    let mut with_case = BTreeSet::new();
    for (labels, created_at) in &cases {
        let labels: Value = serde_json::from_str(labels).unwrap_or(Value::Null);
        let service_label = labels["service"].as_str().unwrap_or("").to_string();
        let Some(sent_at) = sent_at_of.get(&service_label) else {
            run.extra_cases += 1;
            continue;
        };
        if !with_case.insert(service_label.clone()) {
            run.extra_cases += 1;
            continue;
        }
        run.stamped_ms.push(millis(*created_at - *sent_at));
        if let Some(seen_at) = seen.get(&service_label) {
            run.observed_ms.push(millis(*seen_at - *sent_at));
        }
    }
    run.missing = sent_at_of
        .keys()
        .filter(|series| !with_case.contains(*series))
        .count() as u64;
    Ok(run)
}

fn millis(duration: chrono::Duration) -> f64 {
    duration
        .num_microseconds()
        .map_or(f64::NAN, |us| us as f64 / 1000.0)
}

async fn post(request: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let response = request.send().await?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        bail!("POST /v1/metrics/1m answered {status}: {body}");
    }
    Ok(())
}

/// Poll the analyst's cases every `every` and note when each series' case was first seen,
/// until `expected` are seen or [`CASE_TIMEOUT`] after the sends stopped; hands the connection
/// back.
async fn watch_cases(
    mut db: Db,
    every: Duration,
    seen: Arc<Mutex<BTreeMap<String, DateTime<Utc>>>>,
    sending: Arc<std::sync::atomic::AtomicBool>,
    expected: usize,
) -> anyhow::Result<Db> {
    let mut deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cases: Vec<(String, DateTime<Utc>)> = db.rows(&ANALYST_CASES).await?;
        let now = Utc::now();
        let count = {
            let mut seen = seen.lock().expect("seen lock");
            for (labels, _) in &cases {
                let labels: Value = serde_json::from_str(labels).unwrap_or(Value::Null);
                if let Some(service) = labels["service"].as_str() {
                    seen.entry(service.to_string()).or_insert(now);
                }
            }
            seen.len()
        };
        if count >= expected {
            return Ok(db);
        }
        if !sending.load(std::sync::atomic::Ordering::Relaxed) {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + CASE_TIMEOUT);
            if Instant::now() > deadline {
                return Ok(db);
            }
        }
    }
}
