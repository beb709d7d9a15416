//! The load: `automation: auto` cases on an open-loop timetable, each driven through its three
//! client calls and then watched until it is CLOSED, PARKED or out of time; afterwards every
//! case's timeline is read for the server-side times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use opscase_bench::cpu::{self, CpuTimes};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, ETAG, IF_MATCH};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use crate::server::{Database, Service, Stopped, ADMIN_KEY};
use crate::{Args, Backend};

/// The tenant and service of every case and metric point.
pub const TENANT: &str = "t-001";
pub const SERVICE: &str = "bench-checkout";
/// The healthy error rate ingested for the service (noop.check passes below 0.01).
const ERR_RATE: f64 = 0.001;
/// A request that takes longer is an error ("timeout").
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two polls of one case.
const MAX_POLL_PAUSE: Duration = Duration::from_millis(500);
/// Timelines are read after the load with this many requests at a time.
const TIMELINE_CONCURRENCY: usize = 8;
/// The applied events of an auto noop.check case, in order; `open` is the creation row.
pub const EVENTS: [&str; 7] = [
    "open",
    "start_analysis",
    "analysis_done",
    "plan_ready",
    "gate_approved",
    "exec_done",
    "verify_pass",
];

/// How a case ended as the client saw it.
#[derive(Debug, Clone)]
pub enum End {
    Closed,
    Parked,
    /// Not CLOSED or PARKED within `--case-timeout`; the status last seen.
    Stuck(String),
    /// A client call failed: which one and how (status or transport error).
    Failed(String),
}

/// One case of the load.
#[derive(Debug, Clone)]
pub struct CaseRun {
    /// Seconds from the first slot to this case's due time.
    pub due_s: f64,
    pub id: Option<String>,
    pub end: End,
    /// From the due time to the poll that saw CLOSED.
    pub client_ms: Option<f64>,
    /// Polls of GET /v1/cases/{id}.
    pub polls: u64,
    /// Read after the load.
    pub timeline: Option<Timeline>,
}

/// What a case's timeline says.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The first applied row of each event.
    pub applied: BTreeMap<String, DateTime<Utc>>,
    /// Applied rows beyond the first of the same event (should be none).
    pub duplicate_applied: u64,
    /// Rows by outcome (applied, rejected, ignored, noted, requested).
    pub outcomes: BTreeMap<String, u64>,
    pub final_status: Option<String>,
}

impl Timeline {
    /// Milliseconds from the applied row of `from` to that of `to`.
    pub fn between_ms(&self, from: &str, to: &str) -> Option<f64> {
        let (a, b) = (self.applied.get(from)?, self.applied.get(to)?);
        Some((*b - *a).num_microseconds()? as f64 / 1000.0)
    }
}

/// One backend's load and what it produced.
pub struct Run {
    pub backend: Backend,
    pub startup_s: f64,
    pub offered: u64,
    /// `--seconds`: how long the timetable offers cases.
    pub load_s: f64,
    pub sent: u64,
    /// Slots not sent because `--in-flight` cases were outstanding.
    pub late: u64,
    pub cases: Vec<CaseRun>,
    /// From the first slot to the last case's end (CLOSED, PARKED, stuck or failed).
    pub elapsed_s: f64,
    /// From the first slot to the last CLOSED seen.
    pub last_closed_s: Option<f64>,
    pub max_dispatch_delay_ms: f64,
    /// Latency of each client request by kind (open, start_analysis, poll), ms.
    pub request_ms: BTreeMap<&'static str, Vec<f64>>,
    /// Answers by kind and status ("open 201").
    pub statuses: BTreeMap<String, u64>,
    /// CPU of the service process over the load, as a share of all cores, and of the machine.
    pub service_cpu: Option<f64>,
    pub machine_busy: Option<f64>,
    /// CPU over the load by command name (share of all cores), largest first: the service,
    /// PostgreSQL, NATS, the bench itself, and whatever else ran on the machine.
    pub cpu_by_command: Vec<(String, f64)>,
    /// Selected series from the service's /metrics after the load, summed over labels.
    pub metrics: BTreeMap<String, f64>,
    /// Timelines that could not be read.
    pub timeline_errors: u64,
    /// Commit-to-published lag of every outbox row, by topic, in ms (`published_at -
    /// created_at`; on the embedded bus a row is published once every consumer handled it).
    pub outbox_lag_ms: BTreeMap<String, Vec<f64>>,
    /// Outbox rows still unpublished after the load.
    pub outbox_unpublished: i64,
    /// PostgreSQL only: checkpoints (timed + requested) that started during the load, and the
    /// autovacuum / autoanalyze runs on the service's tables in it (what, seconds in).
    pub pg_checkpoints: Option<i64>,
    pub pg_maintenance: Vec<(String, f64)>,
    pub server: Stopped,
}

impl Run {
    pub fn count(&self, pick: fn(&End) -> bool) -> usize {
        self.cases.iter().filter(|case| pick(&case.end)).count()
    }

    pub fn closed(&self) -> usize {
        self.count(|end| matches!(end, End::Closed))
    }

    /// CLOSED cases per second, over the time from the first slot to the last CLOSED seen
    /// (at least the load's duration, so a short tail does not inflate it).
    pub fn achieved_per_s(&self) -> Option<f64> {
        self.last_closed_s
            .map(|s| s.max(self.load_s))
            .filter(|&s| s > 0.0)
            .map(|s| self.closed() as f64 / s)
    }

    /// Server-side: open row to verify_pass row of every case that reached it.
    pub fn server_ms(&self) -> Vec<f64> {
        self.stage_ms("open", "verify_pass")
    }

    pub fn stage_ms(&self, from: &str, to: &str) -> Vec<f64> {
        self.cases
            .iter()
            .filter_map(|case| case.timeline.as_ref()?.between_ms(from, to))
            .collect()
    }

    /// Server-side latency of the cases due at or after `from_s` seconds into the load.
    pub fn server_ms_from(&self, from_s: f64) -> Vec<f64> {
        self.cases
            .iter()
            .filter(|case| case.due_s >= from_s)
            .filter_map(|case| case.timeline.as_ref()?.between_ms("open", "verify_pass"))
            .collect()
    }

    pub fn client_ms(&self) -> Vec<f64> {
        self.cases
            .iter()
            .filter_map(|case| case.client_ms)
            .collect()
    }

    /// CLOSED cases per second by the server's clock: closed / (last verify_pass − first open).
    pub fn server_closed_per_s(&self) -> Option<f64> {
        let timelines = self.cases.iter().filter_map(|case| case.timeline.as_ref());
        let first = timelines
            .clone()
            .filter_map(|t| t.applied.get("open"))
            .min()?;
        let last = timelines
            .filter_map(|t| t.applied.get("verify_pass"))
            .max()?;
        let span = (*last - *first).num_microseconds()? as f64 / 1e6;
        (span > 0.0).then(|| self.closed() as f64 / span)
    }
}

/// What one case's task reports back.
struct Report {
    case: CaseRun,
    requests: Vec<(&'static str, Result<u16, String>, f64)>,
}

pub async fn run(args: &Args, service: &Service) -> anyhow::Result<Run> {
    let client = http_client(args.in_flight)?;
    ingest_metrics(&client, &service.base).await?;

    let checkpoints_before = match &service.database {
        Database::Postgres(url) => Some(checkpoints(url).await?),
        Database::Sqlite(_) => None,
    };
    let window_start = Utc::now();
    let cpu_before = CpuTimes::read();
    let processes_before = cpu::process_snapshot();
    let service_cpu_before = service.cpu_seconds();
    let load_started = std::time::Instant::now();
    eprintln!(
        "incident-loop-bench: {}: offering {} auto cases/s for {} s",
        service.backend.label(),
        args.rate,
        args.seconds
    );
    let mut run = drive(args, &client, &service.base).await;
    let wall = load_started.elapsed().as_secs_f64();
    run.machine_busy = CpuTimes::busy_between(cpu_before, CpuTimes::read());
    run.cpu_by_command = cpu::cpu_by_command(
        &processes_before,
        &cpu::process_snapshot(),
        wall,
        crate::server::clock_ticks(),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    run.service_cpu = match (service_cpu_before, service.cpu_seconds()) {
        (Some(before), Some(after)) if wall > 0.0 => Some((after - before) / wall / cores),
        _ => None,
    };
    run.backend = service.backend;
    run.startup_s = service.startup_s;
    if let (Some(before), Database::Postgres(url)) = (checkpoints_before, &service.database) {
        run.pg_checkpoints = Some(checkpoints(url).await? - before);
        run.pg_maintenance = maintenance_in(url, window_start, Utc::now()).await?;
    }

    // Timelines (and the metrics) after the load, so reading them does not load the service
    // while it is measured.
    run.timeline_errors = read_timelines(&client, &service.base, &mut run.cases).await;
    match outbox_lags(&service.database).await {
        Ok((lags, unpublished)) => {
            run.outbox_lag_ms = lags;
            run.outbox_unpublished = unpublished;
        }
        Err(error) => eprintln!("incident-loop-bench: cannot read the outbox: {error:#}"),
    }
    run.metrics = scrape_metrics(&client, &service.base)
        .await
        .unwrap_or_else(|error| {
            eprintln!("incident-loop-bench: cannot read /metrics: {error:#}");
            BTreeMap::new()
        });
    Ok(run)
}

/// Keep-alive HTTP/1.1 with room for every case in flight, and the admin key on each request.
fn http_client(in_flight: usize) -> anyhow::Result<Client> {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {ADMIN_KEY}"))?,
    );
    Ok(Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(in_flight.min(512))
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// Healthy `err_rate` points for the service in each of the last five minutes and this one.
async fn ingest_metrics(client: &Client, base: &str) -> anyhow::Result<()> {
    let now = Utc::now();
    let points: Vec<Value> = (0..5)
        .map(|ago| {
            let bucket = now - chrono::Duration::minutes(ago);
            json!({
                "tenant": TENANT,
                "resource": SERVICE,
                "metric": "err_rate",
                "bucket": bucket.format("%Y-%m-%dT%H:%M:00Z").to_string(),
                "avg": ERR_RATE,
            })
        })
        .collect();
    let response = client
        .post(format!("{base}/v1/metrics/1m"))
        .json(&json!({"points": points}))
        .send()
        .await
        .context("POST /v1/metrics/1m")?;
    let status = response.status();
    if status != StatusCode::OK {
        bail!(
            "POST /v1/metrics/1m answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Open loop: slot `k` is due at `k / rate` seconds whatever earlier cases are doing.
async fn drive(args: &Args, client: &Client, base: &str) -> Run {
    let offered = u64::from(args.rate) * u64::from(args.seconds);
    let permits = Arc::new(Semaphore::new(args.in_flight));
    let (done, mut finished) = mpsc::unbounded_channel::<Report>();
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut timetable = tokio::time::interval_at(started, period);
    // A dispatcher that falls behind sends the missed slots at once, keeping the timetable;
    // latency is measured from each slot's due time, so that delay is not hidden.
    timetable.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let case_timeout = Duration::from_secs(args.case_timeout);
    let polling = Arc::new(Polling {
        min: Duration::from_millis(args.poll_ms),
        period: Duration::from_secs_f64(1.0 / f64::from(args.max_poll_rate)),
        next: std::sync::Mutex::new(Instant::now()),
    });
    let mut run = Run {
        backend: Backend::Sqlite,
        startup_s: 0.0,
        offered,
        load_s: f64::from(args.seconds),
        sent: 0,
        late: 0,
        cases: Vec::with_capacity(offered as usize),
        elapsed_s: 0.0,
        last_closed_s: None,
        max_dispatch_delay_ms: 0.0,
        request_ms: BTreeMap::new(),
        statuses: BTreeMap::new(),
        service_cpu: None,
        machine_busy: None,
        cpu_by_command: Vec::new(),
        metrics: BTreeMap::new(),
        timeline_errors: 0,
        outbox_lag_ms: BTreeMap::new(),
        outbox_unpublished: 0,
        pg_checkpoints: None,
        pg_maintenance: Vec::new(),
        server: Stopped::default(),
    };
    let mut max_dispatch_delay = Duration::ZERO;
    for _slot in 0..offered {
        let due = timetable.tick().await;
        max_dispatch_delay = max_dispatch_delay.max(due.elapsed());
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            run.late += 1;
            continue;
        };
        let (client, base, done) = (client.clone(), base.to_string(), done.clone());
        let polling = polling.clone();
        let due_s = (due - started).as_secs_f64();
        tokio::spawn(async move {
            let report = one_case(&client, &base, due, due_s, case_timeout, &polling).await;
            let _ = done.send(report);
            drop(permit);
        });
        run.sent += 1;
    }
    drop(done);

    // Every case task ends by its deadline (plus one request timeout); the channel closes
    // when the last one does.
    let mut last_closed: Option<f64> = None;
    let mut last_end = 0.0f64;
    while let Ok(Some(report)) =
        tokio::time::timeout(case_timeout + REQUEST_TIMEOUT * 2, finished.recv()).await
    {
        let ended = started.elapsed().as_secs_f64();
        last_end = last_end.max(ended);
        if let (End::Closed, Some(ms)) = (&report.case.end, report.case.client_ms) {
            let closed_at = report.case.due_s + ms / 1000.0;
            last_closed = Some(last_closed.map_or(closed_at, |t: f64| t.max(closed_at)));
        }
        for (kind, outcome, ms) in report.requests {
            run.request_ms.entry(kind).or_default().push(ms);
            let key = match outcome {
                Ok(status) => format!("{kind} {status}"),
                Err(error) => format!("{kind} {error}"),
            };
            *run.statuses.entry(key).or_default() += 1;
        }
        run.cases.push(report.case);
    }
    run.cases.sort_by(|a, b| a.due_s.total_cmp(&b.due_s));
    run.elapsed_s = last_end;
    run.last_closed_s = last_closed;
    run.max_dispatch_delay_ms = max_dispatch_delay.as_secs_f64() * 1000.0;
    run
}

/// One case: open it, start and finish the analysis, then poll until it is CLOSED or PARKED
/// or its time is up.
async fn one_case(
    client: &Client,
    base: &str,
    due: Instant,
    due_s: f64,
    case_timeout: Duration,
    polling: &Polling,
) -> Report {
    let mut report = Report {
        case: CaseRun {
            due_s,
            id: None,
            end: End::Failed("not started".into()),
            client_ms: None,
            polls: 0,
            timeline: None,
        },
        requests: Vec::new(),
    };
    let body = json!({
        "title": format!("incident loop bench {due_s:.3}"),
        "tenant": TENANT,
        "severity": "low",
        "automation": "auto",
        "labels": {"template": "noop.check", "service": SERVICE},
        "actor": "incident-loop-bench",
    });
    let request = client
        .post(format!("{base}/v1/cases"))
        .header("Idempotency-Key", format!("bench-open-{}", Uuid::new_v4()))
        .json(&body);
    let Some((etag, opened)) = call(&mut report, "open", StatusCode::CREATED, request).await else {
        return report;
    };
    let Some(id) = opened["id"].as_str().map(str::to_string) else {
        report.case.end = End::Failed("open: no id in the answer".into());
        return report;
    };
    report.case.id = Some(id.clone());

    let mut etag = etag;
    // The analyst answers `cmd.analysis.run` with `analysis_done`: only the start is ours.
    for event in ["start_analysis"] {
        let mut request = client
            .patch(format!("{base}/v1/cases/{id}/transition"))
            .header("Idempotency-Key", format!("{id}-{event}"))
            .json(&json!({"event": event, "actor": "incident-loop-bench"}));
        if let Some(tag) = &etag {
            request = request.header(IF_MATCH, tag.as_str());
        }
        let Some((next, _)) = call(&mut report, event, StatusCode::OK, request).await else {
            return report;
        };
        etag = next;
    }

    // Watch it: the pause grows with the case's age, so slow cases cost few polls, and every
    // poll takes its turn in the shared pace.
    let url = format!("{base}/v1/cases/{id}");
    let deadline = due + case_timeout;
    let mut last_status = String::from("unknown");
    loop {
        polling.turn().await;
        let sent = Instant::now();
        let outcome = client.get(&url).send().await;
        report.case.polls += 1;
        match outcome {
            Ok(response) => {
                let status = response.status();
                let body: Option<Value> = response.json().await.ok();
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                report.requests.push(("poll", Ok(status.as_u16()), ms));
                if let Some(case_status) = body.as_ref().and_then(|b| b["status"].as_str()) {
                    last_status = case_status.to_string();
                }
                match last_status.as_str() {
                    "CLOSED" => {
                        report.case.client_ms = Some(due.elapsed().as_secs_f64() * 1000.0);
                        report.case.end = End::Closed;
                        return report;
                    }
                    "PARKED" => {
                        report.case.end = End::Parked;
                        return report;
                    }
                    _ => {}
                }
            }
            Err(error) => {
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                report.requests.push(("poll", Err(failure(&error)), ms));
            }
        }
        if Instant::now() >= deadline {
            report.case.end = End::Stuck(last_status);
            return report;
        }
        let pause = (due.elapsed() / 5).clamp(polling.min, MAX_POLL_PAUSE.max(polling.min));
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// How cases are watched: the shortest pause between two polls of one case, and a pace shared
/// by all of them (at most one poll per `period`, no bursts).
struct Polling {
    min: Duration,
    period: Duration,
    next: std::sync::Mutex<Instant>,
}

impl Polling {
    /// Wait for this poll's slot: the next free one, at least one period after the last.
    async fn turn(&self) {
        let slot = {
            let mut next = self.next.lock().expect("poll pace lock");
            let slot = (*next).max(Instant::now());
            *next = slot + self.period;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Send one client call; on the expected status, its ETag and body. Anything else ends the
/// case as failed.
async fn call(
    report: &mut Report,
    kind: &'static str,
    expected: StatusCode,
    request: reqwest::RequestBuilder,
) -> Option<(Option<String>, Value)> {
    let sent = Instant::now();
    let answered = async {
        let response: Response = request.send().await?;
        let status = response.status();
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, etag, body))
    }
    .await;
    let ms = sent.elapsed().as_secs_f64() * 1000.0;
    match answered {
        Ok((status, etag, body)) => {
            report.requests.push((kind, Ok(status.as_u16()), ms));
            if status != expected {
                let detail = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|problem| problem["detail"].as_str().map(str::to_string))
                    .unwrap_or_default();
                report.case.end = End::Failed(format!("{kind} {}: {detail}", status.as_u16()));
                return None;
            }
            Some((etag, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
        Err(error) => {
            let kind_of = failure(&error);
            report.requests.push((kind, Err(kind_of.clone()), ms));
            report.case.end = End::Failed(format!("{kind} {kind_of}"));
            None
        }
    }
}

fn failure(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else if error.is_decode() || error.is_body() {
        "body".into()
    } else {
        "transport".into()
    }
}

/// Read the timeline of every case that has an id; returns how many could not be read.
async fn read_timelines(client: &Client, base: &str, cases: &mut [CaseRun]) -> u64 {
    let reads = futures::stream::iter(cases.iter().enumerate().filter_map(|(index, case)| {
        let id = case.id.clone()?;
        let url = format!("{base}/v1/cases/{id}/timeline?limit=200");
        Some(async move { (index, read_timeline(client, &url).await) })
    }))
    .buffer_unordered(TIMELINE_CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    let mut errors = 0;
    for (index, read) in reads {
        match read {
            Ok(timeline) => cases[index].timeline = Some(timeline),
            Err(error) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("incident-loop-bench: cannot read a timeline: {error:#}");
                }
            }
        }
    }
    errors
}

async fn read_timeline(client: &Client, url: &str) -> anyhow::Result<Timeline> {
    let response = client.get(url).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if status != StatusCode::OK {
        bail!("GET timeline answered {status}: {body}");
    }
    let items = body["items"].as_array().context("timeline without items")?;
    let mut timeline = Timeline::default();
    for item in items {
        let outcome = item["outcome"].as_str().unwrap_or("?").to_string();
        *timeline.outcomes.entry(outcome.clone()).or_default() += 1;
        if outcome != "applied" {
            continue;
        }
        let event = item["event"].as_str().unwrap_or("?").to_string();
        let at: DateTime<Utc> = item["created_at"]
            .as_str()
            .context("timeline row without created_at")?
            .parse()
            .context("timeline created_at is not RFC 3339")?;
        match timeline.applied.entry(event) {
            std::collections::btree_map::Entry::Occupied(_) => timeline.duplicate_applied += 1,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(at);
            }
        }
        if let Some(to) = item["to_status"].as_str() {
            timeline.final_status = Some(to.to_string());
        }
    }
    Ok(timeline)
}

/// The service's own counters after the load, summed over their labels.
async fn scrape_metrics(client: &Client, base: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    const WANTED: [&str; 8] = [
        "case_transition_total",
        "conflict_total",
        "idempotent_replay_total",
        "inbox_dedup_total",
        "bus_dead_letter_total",
        "outbox_pending",
        "outbox_publish_total",
        "cases_open",
    ];
    let response = client.get(format!("{base}/metrics")).send().await?;
    let status = response.status();
    let text = response.text().await?;
    if status != StatusCode::OK {
        bail!("GET /metrics answered {status}");
    }
    let mut sums = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if !WANTED.contains(&name) {
            continue;
        }
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        // outbox_publish_total: by status, which is what tells failures apart.
        let key = if name == "outbox_publish_total" {
            let status = series
                .split("status=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?");
            format!("{name}{{status=\"{status}\"}}")
        } else {
            name.to_string()
        };
        *sums.entry(key).or_default() += value;
    }
    Ok(sums)
}

/// Every outbox row's commit-to-published lag by topic, read from the service's database
/// (read-only, outside its pool), and how many rows are unpublished.
async fn outbox_lags(database: &Database) -> anyhow::Result<(BTreeMap<String, Vec<f64>>, i64)> {
    type Row = (String, DateTime<Utc>, Option<DateTime<Utc>>);
    const QUERY: &str = "SELECT topic, created_at, published_at FROM outbox";
    let rows: Vec<Row> = match database {
        Database::Sqlite(path) => {
            use sqlx::sqlite::SqliteConnectOptions;
            use sqlx::{ConnectOptions, Connection};
            let mut connection = SqliteConnectOptions::new()
                .filename(path)
                .read_only(true)
                .connect()
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            let rows = sqlx::query_as(QUERY).fetch_all(&mut connection).await?;
            connection.close().await?;
            rows
        }
        Database::Postgres(url) => {
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(url).await?;
            let rows = sqlx::query_as(QUERY).fetch_all(&mut connection).await?;
            connection.close().await?;
            rows
        }
    };
    let mut lags: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut unpublished = 0;
    for (topic, created_at, published_at) in rows {
        match published_at {
            Some(published_at) => {
                let ms = (published_at - created_at)
                    .num_microseconds()
                    .map_or(f64::NAN, |us| us as f64 / 1000.0);
                lags.entry(topic).or_default().push(ms);
            }
            None => unpublished += 1,
        }
    }
    Ok((lags, unpublished))
}

async fn checkpoints(url: &str) -> anyhow::Result<i64> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let count =
        sqlx::query_scalar("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
            .fetch_one(&mut connection)
            .await?;
    connection.close().await?;
    Ok(count)
}

/// The last autovacuum and autoanalyze of each of the service's tables, when in the window:
/// they compete for the same two cores and disk.
async fn maintenance_in(
    url: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Vec<(String, f64)>> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let runs = sqlx::query_as(
        "SELECT kind || ' ' || relname, EXTRACT(EPOCH FROM at - $1)::float8 FROM ( \
             SELECT relname, 'autovacuum' AS kind, last_autovacuum AS at FROM pg_stat_user_tables \
             UNION ALL \
             SELECT relname, 'autoanalyze', last_autoanalyze FROM pg_stat_user_tables \
         ) AS runs WHERE at BETWEEN $1 AND $2 ORDER BY at",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut connection)
    .await?;
    connection.close().await?;
    Ok(runs)
}
