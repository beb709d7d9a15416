//! `--open-loop-rate N`: the "p99 under 20 ms at 1,000 transitions/s steady". Instead
//! of the pgbench and closed-loop phases, the same in-process service (PostgreSQL, then
//! embedded SQLite) gets an open-loop load: slot `k` is due at `k / N` seconds for `--seconds`,
//! whatever earlier requests are doing. The first half of the slots send `start_analysis` to
//! one freshly opened case each, the second half `cancel` to the same cases in the same order
//! (`If-Match` from the first answer's ETag); every request has a fresh `Idempotency-Key`.
//! Latency runs from each slot's *scheduled* time to the end of its answer, so a request that
//! waits for the generator (timer, in-flight cap, a busy core) is charged for the wait.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use opscase_bench::cpu::CpuTimes;
use opscase_bench::format::{met, ms, percentiles, thousands};
use opscase_bench::stats::{round3, Summary};
use reqwest::Client;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::http::{self, Running, Target};
use crate::Args;

/// Most requests outstanding; a slot that finds them all busy waits (and is charged for it).
const IN_FLIGHT: usize = 512;
/// A request sent more than this after its scheduled time is counted late (tokio's timer
/// ticks per millisecond, so up to about 1 ms is the timer, not the load).
const LATE_MS: f64 = 2.0;
/// The target, checked at 1,000/s only.
const TARGET_RATE: u32 = 1_000;
const TARGET_P99_MS: f64 = 20.0;

/// One open-loop load on one backend.
pub struct OpenLoop {
    pub name: &'static str,
    pub pool_size: u32,
    pub cases_opened: usize,
    pub open_s: f64,
    pub offered: u64,
    pub accepted: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an HTTP answer, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Sent more than [`LATE_MS`] after their scheduled time.
    pub late: u64,
    /// Actual send minus scheduled time, ms.
    pub send_delay_ms: Option<Summary>,
    /// Scheduled time to end of answer, ms (every request, answered or not).
    pub latency_ms: Option<Summary>,
    /// Actual send to end of answer, ms: the service alone, without the generator's queue.
    pub service_ms: Option<Summary>,
    /// The same latency by second of the schedule.
    pub by_second: Vec<Option<Summary>>,
    /// Schedule start to the last answer.
    pub elapsed_s: f64,
    pub cpu_busy: Option<f64>,
    pub cpu_process: Option<f64>,
}

impl OpenLoop {
    pub fn achieved(&self) -> f64 {
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

pub async fn run(args: &Args, rate: u32, target: Target<'_>) -> anyhow::Result<OpenLoop> {
    let data_dir = tempfile::tempdir().context("temp data dir")?;
    let (config, name) = http::service_config(args, target, data_dir.path())?;
    let running = Running::start(&config).await?;
    let measured = measure(args, rate, &running.base, name, config.database.pool_size).await;
    running.stop().await;
    measured
}

/// One request's outcome: status or failure kind, send delay, latency from due, from send.
type Outcome = (Result<u16, String>, f64, f64, f64);

async fn measure(
    args: &Args,
    rate: u32,
    base: &str,
    name: &'static str,
    pool_size: u32,
) -> anyhow::Result<OpenLoop> {
    let client = http::http_client(IN_FLIGHT)?;
    let offered = u64::from(rate) * u64::from(args.seconds);
    let started = std::time::Instant::now();
    let cases = http::open_cases(&client, base, usize::try_from(offered.div_ceil(2))?).await?;
    let open_s = started.elapsed().as_secs_f64();
    eprintln!(
        "transition-bench: {name}: opened {} cases in {open_s:.1} s; offering {rate} \
         transitions/s for {} s",
        cases.len(),
        args.seconds
    );
    let cases = Arc::new(cases);
    // The version each case's start_analysis answered with (0: not yet).
    let versions: Arc<Vec<AtomicI64>> = Arc::new(cases.iter().map(|_| AtomicI64::new(0)).collect());
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let cpu_before = CpuTimes::read();
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = Vec::with_capacity(offered as usize);
    for slot in 0..offered {
        let due = start + Duration::from_secs_f64(slot as f64 / f64::from(rate));
        tokio::time::sleep_until(due).await;
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let (index, cancel) = match usize::try_from(slot)? {
            slot if slot < cases.len() => (slot, false),
            slot => (slot - cases.len(), true),
        };
        let client = client.clone();
        let url = format!("{base}/v1/cases/{}/transition", cases[index]);
        let versions = versions.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = send(&client, &url, cancel, &versions[index], due).await;
            drop(permit);
            outcome
        }));
    }
    let mut statuses = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let (mut delays, mut latencies, mut services) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_second = vec![Vec::new(); args.seconds as usize];
    let mut late = 0;
    for (slot, task) in tasks.into_iter().enumerate() {
        let (answer, delay, latency, service) = match task.await {
            Ok(outcome) => outcome,
            Err(error) => {
                *errors.entry(format!("task: {error}")).or_default() += 1;
                continue;
            }
        };
        match answer {
            Ok(status) => *statuses.entry(status).or_default() += 1,
            Err(kind) => *errors.entry(kind).or_default() += 1,
        }
        late += u64::from(delay > LATE_MS);
        delays.push(delay);
        latencies.push(latency);
        services.push(service);
        let last = by_second.len() - 1;
        by_second[(slot / rate as usize).min(last)].push(latency);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let cpu_after = CpuTimes::read();
    let accepted = statuses
        .iter()
        .filter(|(status, _)| (200..300).contains(*status))
        .map(|(_, count)| count)
        .sum();
    Ok(OpenLoop {
        name,
        pool_size,
        cases_opened: cases.len(),
        open_s,
        offered,
        accepted,
        statuses,
        errors,
        late,
        send_delay_ms: Summary::of(delays),
        latency_ms: Summary::of(latencies),
        service_ms: Summary::of(services),
        by_second: by_second.into_iter().map(Summary::of).collect(),
        elapsed_s,
        cpu_busy: CpuTimes::busy_between(cpu_before, cpu_after),
        cpu_process: CpuTimes::process_between(cpu_before, cpu_after),
    })
}

async fn send(
    client: &Client,
    url: &str,
    cancel: bool,
    version: &AtomicI64,
    due: Instant,
) -> Outcome {
    let (body, if_match) = if cancel {
        // Version 2 unless start_analysis answered (or has not answered yet: then the service
        // decides, and a refusal is counted).
        let known = version.load(Ordering::Acquire);
        (
            json!({"event": "cancel", "reason": "transition-bench open loop"}),
            if known > 0 { known } else { 2 },
        )
    } else {
        (json!({"event": "start_analysis"}), 1)
    };
    let sent = Instant::now();
    let answer = http::patch_transition(client, url, if_match, &body)
        .await
        .map(|(status, etag)| {
            if let (false, true, Some(etag)) = (cancel, (200..300).contains(&status), etag) {
                version.store(etag, Ordering::Release);
            }
            status
        });
    let done = Instant::now();
    let millis = |from: Instant| done.saturating_duration_since(from).as_secs_f64() * 1000.0;
    (
        answer,
        sent.saturating_duration_since(due).as_secs_f64() * 1000.0,
        millis(due),
        millis(sent),
    )
}

fn target_row(rate: u32, run: &OpenLoop) -> (String, &'static str) {
    let p99 = run.latency_ms.map(|s| s.p99);
    let measured = format!(
        "p99 {}, {:.0}/s achieved, {} failed",
        p99.map_or("no data".into(), ms),
        run.achieved(),
        run.failures()
    );
    let verdict = if rate != TARGET_RATE {
        "n/a"
    } else {
        met(p99.is_some_and(|p| p < TARGET_P99_MS) && run.failures() == 0)
    };
    (measured, verdict)
}

pub fn json(
    args: &Args,
    rate: u32,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    machine: &Value,
    runs: &[OpenLoop],
) -> Value {
    let summary = |s: Option<Summary>| s.map(Summary::to_json);
    json!({
        "benchmark": "transition-open-loop",
        "started_at": started_at.to_rfc3339(),
        "finished_at": finished_at.to_rfc3339(),
        "machine": machine,
        "parameters": {
            "rate": rate,
            "seconds": args.seconds,
            "in_flight_cap": IN_FLIGHT,
            "late_after_ms": LATE_MS,
            "sqlite_synchronous": format!("{:?}", args.sqlite_synchronous).to_lowercase(),
        },
        "backends": runs.iter().map(|run| {
            let (measured, verdict) = target_row(rate, run);
            json!({
                "backend": run.name,
                "pool_size": run.pool_size,
                "cases_opened": run.cases_opened,
                "open_cases_s": round3(run.open_s),
                "offered": run.offered,
                "accepted": run.accepted,
                "achieved_per_s": round3(run.achieved()),
                "elapsed_s": round3(run.elapsed_s),
                "statuses": run.statuses,
                "errors": run.errors,
                "late_sends": run.late,
                "send_delay_ms": summary(run.send_delay_ms),
                "latency_from_schedule_ms": summary(run.latency_ms),
                "latency_from_send_ms": summary(run.service_ms),
                "latency_from_schedule_ms_by_second":
                    run.by_second.iter().map(|s| summary(*s)).collect::<Vec<_>>(),
                "cpu_busy": run.cpu_busy.map(round3),
                "cpu_process": run.cpu_process.map(round3),
                "target": {
                    "target": format!("p99 < {TARGET_P99_MS} ms at {TARGET_RATE} transitions/s"),
                    "measured": measured,
                    "verdict": verdict,
                },
            })
        }).collect::<Vec<_>>(),
    })
}

pub fn markdown(
    args: &Args,
    rate: u32,
    started_at: DateTime<Utc>,
    machine: &Value,
    runs: &[OpenLoop],
) -> String {
    let text = |value: &Value| value.as_str().map_or(value.to_string(), str::to_string);
    let share = |value: Option<f64>| value.map_or("?".into(), |v| format!("{:.0}%", v * 100.0));
    let mut out = format!(
        "# transition-bench open loop {}\n\nMachine: {} cores ({}), {} GiB; PostgreSQL {} \
         (fsync {}, synchronous_commit {}); commit {}. Offered {rate} transitions/s for {} s \
         (slot k due at k / rate s; first half start_analysis, second half cancel of the same \
         cases), at most {IN_FLIGHT} in flight; latency from each slot's scheduled time; late = \
         sent > {LATE_MS} ms after it; SQLite synchronous = {}.\n\n",
        started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        machine["nproc"],
        text(&machine["cpu_model"]),
        machine["mem_total_gib"],
        text(&machine["postgres"]["server_version"]),
        text(&machine["postgres"]["fsync"]),
        text(&machine["postgres"]["synchronous_commit"]),
        text(&machine["git_commit"]),
        args.seconds,
        format!("{:?}", args.sqlite_synchronous).to_lowercase(),
    );
    out.push_str(
        "| Backend | Offered | Accepted | Achieved | From schedule p50 / p99 / p99.9 / max | \
         From send p50 / p99 / p99.9 / max | Send delay p50 / p99 / max | Late sends | \
         Errors | CPU busy / bench process |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n",
    );
    for run in runs {
        let statuses: Vec<String> = run
            .statuses
            .iter()
            .filter(|(status, _)| !(200..300).contains(*status))
            .map(|(status, count)| format!("{status}: {count}"))
            .chain(
                run.errors
                    .iter()
                    .map(|(kind, count)| format!("{kind}: {count}")),
            )
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {:.0}/s over {:.2} s | {} | {} | {} | {} | {} | {} / {} |\n",
            run.name,
            thousands(run.offered),
            thousands(run.accepted),
            run.achieved(),
            run.elapsed_s,
            percentiles(run.latency_ms),
            percentiles(run.service_ms),
            run.send_delay_ms.map_or("no data".into(), |s| format!(
                "{} / {} / {}",
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            )),
            thousands(run.late),
            if statuses.is_empty() {
                "0".into()
            } else {
                statuses.join(", ")
            },
            share(run.cpu_busy),
            share(run.cpu_process),
        ));
    }
    out.push_str(
        "\n## Target\n\n| Target | Backend | Measured | Verdict |\n| --- | --- | --- | --- |\n",
    );
    for run in runs {
        let (measured, verdict) = target_row(rate, run);
        out.push_str(&format!(
            "| p99 < {TARGET_P99_MS} ms at {} transitions/s, zero errors | {} | {measured} | {verdict} |\n",
            thousands(u64::from(TARGET_RATE)),
            run.name
        ));
    }
    out.push_str("\n## p99 from schedule by second\n\n");
    for run in runs {
        let seconds: Vec<String> = run
            .by_second
            .iter()
            .map(|s| s.map_or("-".into(), |s| ms(s.p99)))
            .collect();
        out.push_str(&format!("- {}: {}\n", run.name, seconds.join(", ")));
    }
    out
}
