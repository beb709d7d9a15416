//! Phase 2: lag at a steady rate. The full service runs in-process on the bench's database and
//! NATS; an open-loop client sends `--rate` transitions per second for `--seconds`, and the
//! lag of every outbox row written meanwhile is read back from the database.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bus::JetStreamTransport;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use opscase::config::Secret;
use opscase::{Application, Config};
use orchestrator::Store;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Client, RequestBuilder};
use serde_json::{json, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::cpu::CpuTimes;
use crate::setup::stored_events;
use crate::stats::Summary;
use crate::Args;

/// The bootstrap admin key of the bench's service (it lives only as long as the database).
const ADMIN_KEY: &str = "osk_relay_bench_0123456789abcdef0123456789abcdef";
/// Cases are opened before the load with this many requests at a time.
const OPEN_CONCURRENCY: usize = 32;
/// A request that takes longer is an error ("timeout"), which also bounds the final wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the outbox may take to empty after the case openings and after the load.
const RELAY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Lag {
    pub cases_opened: usize,
    pub open_cases_s: f64,
    pub load: Load,
    /// From the last response until the outbox was empty.
    pub emptied_after_load_s: f64,
    /// Commit-to-ack lag of the rows written during the load, in milliseconds.
    pub lag_ms: Option<Summary>,
    pub rows_in_window: u64,
    pub unpublished_in_window: i64,
    /// New messages in the events stream during the load (should equal `rows_in_window`).
    pub events_stored: u64,
    /// Each second of the load, to tell a one-off stall from a steady state.
    pub seconds: Vec<Second>,
    /// Share of all cores busy (not idle, not waiting for I/O) during the load, 0 to 1.
    pub cpu_busy: Option<f64>,
    /// PostgreSQL checkpoints (timed + requested) that started during the load.
    pub checkpoints: i64,
    /// Autovacuum and autoanalyze runs during the load: (what and which table, seconds in).
    pub maintenance: Vec<(String, f64)>,
}

/// One second of the load, by due time (HTTP) and by `created_at` (lag).
pub struct Second {
    pub second: u64,
    pub rows: usize,
    pub lag_ms: Option<Summary>,
    pub http_ms: Option<Summary>,
}

impl Lag {
    /// Every row written during the load reached the stream exactly once.
    pub fn integrity_ok(&self) -> bool {
        self.unpublished_in_window == 0 && self.events_stored == self.rows_in_window
    }
}

#[derive(Default)]
pub struct Load {
    /// `--rate` × `--seconds`.
    pub offered: u64,
    pub sent: u64,
    /// Slots that found `--in-flight` requests outstanding and were not sent.
    pub late: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer, by kind.
    pub errors: BTreeMap<String, u64>,
    /// From each slot's scheduled time to the end of its response body, in milliseconds.
    pub http_ms: Option<Summary>,
    /// From the first slot to the last response.
    pub elapsed_s: f64,
    /// The furthest a slot was sent behind its scheduled time.
    pub max_dispatch_delay_ms: f64,
}

impl Load {
    pub fn accepted(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| (200..300).contains(*status))
            .map(|(_, count)| count)
            .sum()
    }

    pub fn achieved_per_s(&self) -> f64 {
        self.accepted() as f64 / self.elapsed_s
    }
}

pub async fn run(
    args: &Args,
    database_url: &str,
    nats_url: &str,
    transport: &JetStreamTransport,
) -> anyhow::Result<Lag> {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.database.url = Some(database_url.to_string());
    config.bus.nats_url = Some(nats_url.to_string());
    config.auth.bootstrap_admin_key = Some(Secret::new(ADMIN_KEY));
    // Unlimited: the bench is the only client, and a token bucket would shape the load.
    config.auth.rate_limit_per_second = 0.0;
    let app = Application::build(&config)
        .await
        .context("the service did not start")?;
    let base = format!("http://{}", app.local_addr());
    let store = app.orchestrator().store().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    let measured = measure(args, &base, store.as_ref(), database_url, transport).await;

    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(30), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => eprintln!("relay-bench: the service stopped with: {error:#}"),
        Ok(Err(error)) => eprintln!("relay-bench: the service task failed: {error}"),
        Err(_) => eprintln!("relay-bench: the service did not stop within 30 s"),
    }
    measured
}

async fn measure(
    args: &Args,
    base: &str,
    store: &dyn Store,
    database_url: &str,
    transport: &JetStreamTransport,
) -> anyhow::Result<Lag> {
    let client = http_client(args.in_flight)?;
    let transitions = u64::from(args.rate) * u64::from(args.seconds);
    // Each case takes two transitions: start_analysis, then cancel.
    let wanted = usize::try_from(transitions.div_ceil(2))?;
    let started = Instant::now();
    let cases = open_cases(&client, base, wanted).await?;
    let open_cases_s = started.elapsed().as_secs_f64();
    // Opening a case writes an outbox row too: let the relay catch up before the clock starts.
    wait_until_relayed(store).await?;
    eprintln!(
        "relay-bench: opened {} cases in {open_cases_s:.1} s; offering {} transitions/s for {} s",
        cases.len(),
        args.rate,
        args.seconds
    );

    // The bench's own queries, outside the service's pool.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await?;
    let checkpoints_before = checkpoints(&pool).await?;
    let cpu_before = CpuTimes::read();
    let events_before = stored_events(transport).await?;
    let window_start = Utc::now();
    let (load, http_by_due) = drive(&client, base, &cases, args).await;
    let window_end = Utc::now();
    let cpu_busy = CpuTimes::busy_between(cpu_before, CpuTimes::read());
    let checkpoints = checkpoints(&pool).await? - checkpoints_before;
    let emptied_after_load_s = wait_until_relayed(store).await?.as_secs_f64();
    let events_stored = stored_events(transport).await? - events_before;

    let (lags, unpublished_in_window) = lags_in(&pool, window_start, window_end).await?;
    let maintenance = maintenance_in(&pool, window_start, window_end).await?;
    pool.close().await;
    Ok(Lag {
        cases_opened: cases.len(),
        open_cases_s,
        load,
        emptied_after_load_s,
        rows_in_window: lags.len() as u64,
        lag_ms: Summary::of(lags.iter().map(|&(_, lag_ms)| lag_ms).collect()),
        unpublished_in_window,
        events_stored,
        seconds: per_second(args.seconds, &lags, &http_by_due),
        cpu_busy,
        checkpoints,
        maintenance,
    })
}

/// Group (offset in seconds, milliseconds) samples by whole second of the load; samples after
/// the last second (requests answered late) count in the last one.
fn per_second(seconds: u32, lags: &[(f64, f64)], http: &[(f64, f64)]) -> Vec<Second> {
    let last = u64::from(seconds.max(1) - 1);
    let bucket = |offset: f64| (offset.max(0.0) as u64).min(last);
    let mut lag_buckets = vec![Vec::new(); seconds as usize];
    let mut http_buckets = vec![Vec::new(); seconds as usize];
    for &(offset, value) in lags {
        lag_buckets[bucket(offset) as usize].push(value);
    }
    for &(offset, value) in http {
        http_buckets[bucket(offset) as usize].push(value);
    }
    lag_buckets
        .into_iter()
        .zip(http_buckets)
        .enumerate()
        .map(|(second, (lag, http))| Second {
            second: second as u64,
            rows: lag.len(),
            lag_ms: Summary::of(lag),
            http_ms: Summary::of(http),
        })
        .collect()
}

/// The autovacuum and autoanalyze runs PostgreSQL started on the bench's tables in the window
/// (the last of each kind per table): they compete for the same two cores and disks.
async fn maintenance_in(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Vec<(String, f64)>> {
    let runs: Vec<(String, f64)> = sqlx::query_as(
        "SELECT kind || ' ' || relname, EXTRACT(EPOCH FROM at - $1)::float8 FROM ( \
             SELECT relname, 'autovacuum' AS kind, last_autovacuum AS at FROM pg_stat_user_tables \
             UNION ALL \
             SELECT relname, 'autoanalyze', last_autoanalyze FROM pg_stat_user_tables \
         ) AS runs WHERE at BETWEEN $1 AND $2 ORDER BY at",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    Ok(runs)
}

async fn checkpoints(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
            .fetch_one(pool)
            .await?,
    )
}

/// Keep-alive HTTP/1.1 with room for every request in flight, and the admin key on each.
fn http_client(in_flight: usize) -> anyhow::Result<Client> {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {ADMIN_KEY}"))?,
    );
    Ok(Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(in_flight)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

async fn open_cases(client: &Client, base: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let url = format!("{base}/v1/cases");
    futures::stream::iter(0..count)
        .map(|number| {
            let request = client
                .post(&url)
                .json(&json!({"title": format!("relay bench {number}")}));
            async move {
                let response = request.send().await?;
                let status = response.status();
                let body: Value = response.json().await?;
                if status != reqwest::StatusCode::CREATED {
                    bail!("opening a case answered {status}: {body}");
                }
                body["id"]
                    .as_str()
                    .map(str::to_string)
                    .context("the opened case has no id")
            }
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .try_collect()
        .await
}

/// Poll until no outbox row is unpublished; returns how long that took.
async fn wait_until_relayed(store: &dyn Store) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while store.outbox_pending().await? > 0 {
        if started.elapsed() > RELAY_TIMEOUT {
            bail!(
                "the outbox was not empty after {} s",
                RELAY_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

/// What became of one request: its HTTP status or the kind of failure, its latency, and when it
/// was due (seconds into the load).
type Outcome = (Result<u16, String>, Duration, f64);

/// Open loop: slot `k` is due at `k / rate` seconds whatever the earlier requests are doing,
/// so a slow service meets a growing queue rather than a politely waiting client. Also returns
/// each answered request's (due offset in seconds, latency in milliseconds).
async fn drive(
    client: &Client,
    base: &str,
    cases: &[String],
    args: &Args,
) -> (Load, Vec<(f64, f64)>) {
    let mut load = Load {
        offered: u64::from(args.rate) * u64::from(args.seconds),
        ..Load::default()
    };
    let permits = Arc::new(Semaphore::new(args.in_flight));
    let (done, mut finished) = mpsc::unbounded_channel::<Outcome>();
    let started = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut timetable = tokio::time::interval_at(started, period);
    // A dispatcher that falls behind sends the missed slots at once, keeping the timetable;
    // latency is measured from each slot's due time, so that delay is not hidden.
    timetable.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut max_dispatch_delay = Duration::ZERO;
    for slot in 0..load.offered {
        let due = timetable.tick().await;
        max_dispatch_delay = max_dispatch_delay.max(due.elapsed());
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            load.late += 1;
            continue;
        };
        let request = transition(client, base, cases, slot);
        let done = done.clone();
        tokio::spawn(async move {
            let outcome = match request.send().await {
                // Read the body so the connection goes back to the pool.
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.bytes().await.map(|_| status).map_err(failure)
                }
                Err(error) => Err(failure(error)),
            };
            let offset = (due - started).as_secs_f64();
            let _ = done.send((outcome, due.elapsed(), offset));
            drop(permit);
        });
        load.sent += 1;
    }
    drop(done);

    let mut by_due = Vec::with_capacity(load.sent as usize);
    // Every request ends within REQUEST_TIMEOUT; the channel closes when the last one does.
    while let Ok(Some((outcome, latency, offset))) =
        tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(10), finished.recv()).await
    {
        match outcome {
            Ok(status) => *load.statuses.entry(status).or_default() += 1,
            Err(kind) => *load.errors.entry(kind).or_default() += 1,
        }
        by_due.push((offset, latency.as_secs_f64() * 1000.0));
    }
    load.elapsed_s = started.elapsed().as_secs_f64();
    load.max_dispatch_delay_ms = max_dispatch_delay.as_secs_f64() * 1000.0;
    load.http_ms = Summary::of(by_due.iter().map(|&(_, ms)| ms).collect());
    (load, by_due)
}

/// Slot `k` of the timetable. The first half of the slots start the analysis of one case each,
/// the second half cancel them in the same order, so a case's cancel comes half the run after
/// its start_analysis. Each accepted transition writes exactly one outbox row.
fn transition(client: &Client, base: &str, cases: &[String], slot: u64) -> RequestBuilder {
    let slot = slot as usize;
    let (case, body) = if slot < cases.len() {
        (&cases[slot], json!({"event": "start_analysis"}))
    } else {
        (
            &cases[slot - cases.len()],
            json!({"event": "cancel", "reason": "bench"}),
        )
    };
    client
        .patch(format!("{base}/v1/cases/{case}/transition"))
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&body)
}

fn failure(error: reqwest::Error) -> String {
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

/// The exact lag of every outbox row created in the window as (seconds into the window,
/// milliseconds of lag): `created_at` is stamped when the transition starts, before its
/// transaction begins, and `published_at` once the relay holds every ack of the row's batch.
/// Also how many rows of the window are unpublished.
async fn lags_in(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<(Vec<(f64, f64)>, i64)> {
    let lags: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM created_at - $1)::float8, \
                (EXTRACT(EPOCH FROM published_at - created_at) * 1000)::float8 \
         FROM outbox WHERE created_at BETWEEN $1 AND $2 AND published_at IS NOT NULL",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE created_at BETWEEN $1 AND $2 AND published_at IS NULL",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    Ok((lags, unpublished))
}
