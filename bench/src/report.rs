//! The results: one JSON document and the same numbers as a markdown table, compared with the
//! issue's targets.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::drain::{Drain, BATCH_SIZE};
use crate::format::{met, ms, percentiles, thousands};
use crate::lag::Lag;
use crate::stats::{round3, Summary};
use crate::Args;

/// The targets.
const DRAIN_TARGET_ROWS_PER_S: f64 = 20_000.0;
const LAG_TARGET_P99_MS: f64 = 50.0;
const LAG_TARGET_RATE: u32 = 1_000;

pub struct Report {
    args: Args,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    machine: Value,
    drain: Drain,
    lag: Lag,
}

impl Report {
    pub fn new(
        args: &Args,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        machine: Value,
        drain: Drain,
        lag: Lag,
    ) -> Self {
        Self {
            args: args.clone(),
            started_at,
            finished_at,
            machine,
            drain,
            lag,
        }
    }

    pub fn integrity_ok(&self) -> bool {
        self.drain.integrity_ok() && self.lag.integrity_ok()
    }

    /// Write `relay-<timestamp>.json` and `.md` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        crate::format::write_results(
            dir,
            "relay",
            self.started_at,
            &self.json(),
            &self.markdown(),
        )
    }

    fn drain_verdict(&self) -> &'static str {
        met(self.drain.median_rows_per_s() >= DRAIN_TARGET_ROWS_PER_S)
    }

    /// The lag target is stated at 1,000 transitions/s; at another rate it does not apply.
    fn lag_verdict(&self) -> String {
        if self.args.rate != LAG_TARGET_RATE {
            return format!("n/a (run at {}/s)", self.args.rate);
        }
        match self.lag.lag_ms {
            Some(lag) => met(lag.p99 < LAG_TARGET_P99_MS).to_string(),
            None => "not met (no rows)".to_string(),
        }
    }

    pub fn json(&self) -> Value {
        let drain = &self.drain;
        let lag = &self.lag;
        let load = &lag.load;
        let breakdown = &drain.breakdown;
        json!({
            "benchmark": "outbox-relay",
            "started_at": self.started_at.to_rfc3339(),
            "finished_at": self.finished_at.to_rfc3339(),
            "machine": self.machine,
            "parameters": {
                "rows": self.args.rows,
                "repetitions": self.args.repetitions,
                "batch_size": BATCH_SIZE,
                "rate_per_s": self.args.rate,
                "seconds": self.args.seconds,
                "in_flight": self.args.in_flight,
            },
            "drain": {
                "median_rows_per_s": drain.median_rows_per_s().round(),
                "repetitions": drain.repetitions.iter().map(|r| json!({
                    "rows": r.rows,
                    "published": r.published,
                    "batches": r.batches,
                    "insert_s": round3(r.insert_s),
                    "drain_s": round3(r.drain_s),
                    "rows_per_s": r.rows_per_s().round(),
                })).collect::<Vec<_>>(),
                "timed_pass": {
                    "rows": breakdown.rows,
                    "batches": breakdown.batches,
                    "claim_s": round3(breakdown.claim_s),
                    "envelopes_s": round3(breakdown.envelopes_s),
                    "publish_s": round3(breakdown.publish_s),
                    "mark_s": round3(breakdown.mark_s),
                    "rows_per_s": (breakdown.rows as f64 / breakdown.total_s()).round(),
                },
                "events_expected": drain.events_expected,
                "events_stored": drain.events_stored,
                "left_pending": drain.left_pending,
                "integrity_ok": drain.integrity_ok(),
            },
            "lag": {
                "cases_opened": lag.cases_opened,
                "open_cases_s": round3(lag.open_cases_s),
                "offered": load.offered,
                "sent": load.sent,
                "late": load.late,
                "statuses": load.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "errors": load.errors,
                "accepted": load.accepted(),
                "elapsed_s": round3(load.elapsed_s),
                "achieved_per_s": round3(load.achieved_per_s()),
                "max_dispatch_delay_ms": round3(load.max_dispatch_delay_ms),
                "http_latency_ms": load.http_ms.map(Summary::to_json),
                "commit_to_ack_lag_ms": lag.lag_ms.map(Summary::to_json),
                "rows_in_window": lag.rows_in_window,
                "unpublished_in_window": lag.unpublished_in_window,
                "events_stored": lag.events_stored,
                "emptied_after_load_s": round3(lag.emptied_after_load_s),
                "integrity_ok": lag.integrity_ok(),
                "cpu_busy": lag.cpu_busy.map(round3),
                "postgres_checkpoints": lag.checkpoints,
                "postgres_maintenance": lag.maintenance.iter().map(|(run, at)| json!({
                    "run": run,
                    "at_s": round3(*at),
                })).collect::<Vec<_>>(),
                "by_second": lag.seconds.iter().map(|second| json!({
                    "second": second.second,
                    "rows": second.rows,
                    "commit_to_ack_lag_ms": second.lag_ms.map(Summary::to_json),
                    "http_latency_ms": second.http_ms.map(Summary::to_json),
                })).collect::<Vec<_>>(),
            },
            "targets": [
                {
                    "target": "backlog drain >= 20,000 rows/s",
                    "measured_rows_per_s": drain.median_rows_per_s().round(),
                    "verdict": self.drain_verdict(),
                },
                {
                    "target": "commit-to-ack lag p99 < 50 ms at 1,000 transitions/s",
                    "measured_p99_ms": lag.lag_ms.map(|l| round3(l.p99)),
                    "verdict": self.lag_verdict(),
                },
            ],
        })
    }

    pub fn markdown(&self) -> String {
        let drain = &self.drain;
        let lag = &self.lag;
        let load = &lag.load;
        let machine = &self.machine;
        let postgres = &machine["postgres"];
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };

        line(format!(
            "# Outbox relay benchmark, {}\n",
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        line(format!(
            "- Machine: {} CPUs ({}), {} GiB RAM, Linux {}; the bench client, the service, \
             PostgreSQL and NATS all share it.",
            machine["nproc"],
            text(&machine["cpu_model"]),
            machine["mem_total_gib"],
            text(&machine["kernel"])
        ));
        line(format!(
            "- PostgreSQL {} (fsync={}, synchronous_commit={}, shared_buffers={}); nats-server {} \
             (JetStream file store in a temp dir); commit {}.",
            text(&postgres["server_version"]),
            text(&postgres["fsync"]),
            text(&postgres["synchronous_commit"]),
            text(&postgres["shared_buffers"]),
            text(&machine["nats_server"]),
            text(&machine["git_commit"])
        ));
        line(format!(
            "- Parameters: backlog of {} rows × {} repetitions, relay batch {}; open-loop load of \
             {} transitions/s for {} s, at most {} requests in flight.\n",
            thousands(u64::from(self.args.rows)),
            self.args.repetitions,
            BATCH_SIZE,
            thousands(u64::from(self.args.rate)),
            self.args.seconds,
            self.args.in_flight
        ));

        line("| Target | Measured | Verdict |".into());
        line("| --- | --- | --- |".into());
        line(format!(
            "| Backlog drain ≥ 20,000 rows/s | {} rows/s (median of {}) | {} |",
            thousands(drain.median_rows_per_s().round() as u64),
            drain.repetitions.len(),
            self.drain_verdict()
        ));
        line(format!(
            "| Commit-to-ack lag p99 < 50 ms at 1,000 transitions/s | {} at {} transitions/s | {} |\n",
            lag.lag_ms.map_or("no rows".into(), |l| ms(l.p99)),
            thousands(u64::from(self.args.rate)),
            self.lag_verdict()
        ));

        line("## Drain from a backlog\n".into());
        line("| Run | Rows published | Batches | Insert | Drain | Rows/s |".into());
        line("| --- | ---: | ---: | ---: | ---: | ---: |".into());
        for (number, r) in drain.repetitions.iter().enumerate() {
            line(format!(
                "| {} | {} | {} | {:.2} s | {:.2} s | {} |",
                number + 1,
                thousands(r.published),
                r.batches,
                r.insert_s,
                r.drain_s,
                thousands(r.rows_per_s().round() as u64)
            ));
        }
        let b = &drain.breakdown;
        let total = b.total_s();
        let share = |part: f64| format!("{part:.2} s ({:.0}%)", part / total * 100.0);
        line(format!(
            "| timed pass | {} | {} | | {:.2} s | {} |\n",
            thousands(b.rows),
            b.batches,
            total,
            thousands((b.rows as f64 / total).round() as u64)
        ));
        line(format!(
            "Where the time goes (timed pass, the steps of `relay_batch` one by one): claim \
             (`SELECT … FOR UPDATE SKIP LOCKED`) {}, envelopes {}, publish + acks {}, \
             mark published + commit {}.\n",
            share(b.claim_s),
            share(b.envelopes_s),
            share(b.publish_s),
            share(b.mark_s)
        ));
        line(format!(
            "OPS_EVT: {} new messages expected, {} stored; {} rows left unpublished: {}.\n",
            thousands(drain.events_expected),
            thousands(drain.events_stored),
            drain.left_pending,
            integrity(drain.integrity_ok())
        ));

        line("## Lag at a steady rate\n".into());
        line("| Measure | Value |".into());
        line("| --- | --- |".into());
        line(format!(
            "| Cases opened beforehand | {} in {:.1} s |",
            thousands(lag.cases_opened as u64),
            lag.open_cases_s
        ));
        line(format!(
            "| Offered | {} transitions ({}/s × {} s) |",
            thousands(load.offered),
            thousands(u64::from(self.args.rate)),
            self.args.seconds
        ));
        line(format!(
            "| Sent / late (not sent: {} in flight) | {} / {} |",
            self.args.in_flight,
            thousands(load.sent),
            thousands(load.late)
        ));
        line(format!(
            "| Achieved | {:.1} accepted transitions/s ({} in {:.2} s) |",
            load.achieved_per_s(),
            thousands(load.accepted()),
            load.elapsed_s
        ));
        let statuses: Vec<String> = load
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {}", thousands(*count)))
            .collect();
        line(format!("| HTTP statuses | {} |", statuses.join(", ")));
        let errors: Vec<String> = load
            .errors
            .iter()
            .map(|(kind, count)| format!("{kind}: {}", thousands(*count)))
            .collect();
        line(format!(
            "| Errors (no HTTP answer) | {} |",
            if errors.is_empty() {
                "none".into()
            } else {
                errors.join(", ")
            }
        ));
        line(format!(
            "| HTTP latency from due time p50 / p99 / p99.9 / max | {} |",
            percentiles(load.http_ms)
        ));
        line(format!(
            "| Most a request was sent behind its due time | {} |",
            ms(load.max_dispatch_delay_ms)
        ));
        line(format!(
            "| **Commit-to-ack lag p50 / p99 / p99.9 / max** | **{}** |",
            percentiles(lag.lag_ms)
        ));
        line(format!(
            "| Outbox rows in the window / new OPS_EVT messages / unpublished | {} / {} / {}: {} |",
            thousands(lag.rows_in_window),
            thousands(lag.events_stored),
            lag.unpublished_in_window,
            integrity(lag.integrity_ok())
        ));
        line(format!(
            "| Outbox empty after the last response | {:.3} s |",
            lag.emptied_after_load_s
        ));
        line(format!(
            "| CPU busy during the load (all cores) / PostgreSQL checkpoints | {} / {} |",
            lag.cpu_busy
                .map_or("unknown".into(), |busy| format!("{:.0}%", busy * 100.0)),
            lag.checkpoints
        ));
        let maintenance: Vec<String> = lag
            .maintenance
            .iter()
            .map(|(run, at)| format!("{run} at {at:.1} s"))
            .collect();
        line(format!(
            "| Autovacuum / autoanalyze during the load | {} |\n",
            if maintenance.is_empty() {
                "none".into()
            } else {
                maintenance.join(", ")
            }
        ));

        // A tail made by one stall reads differently from a steady one: show the worst seconds.
        let over = lag
            .seconds
            .iter()
            .filter(|second| second.lag_ms.is_some_and(|l| l.p99 >= LAG_TARGET_P99_MS))
            .count();
        line(format!(
            "Seconds of the load whose lag p99 ≥ 50 ms: {over} of {}. The worst, by lag max:\n",
            lag.seconds.len()
        ));
        line("| Second | Rows | Lag p50 | Lag p99 | Lag max | HTTP p99 | HTTP max |".into());
        line("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |".into());
        let mut worst: Vec<_> = lag.seconds.iter().collect();
        worst.sort_by(|a, b| {
            let max = |s: &crate::lag::Second| s.lag_ms.map_or(0.0, |l| l.max);
            max(b).total_cmp(&max(a))
        });
        let cell = |summary: Option<Summary>, pick: fn(Summary) -> f64| {
            summary.map_or("–".into(), |s| ms(pick(s)))
        };
        for second in worst.into_iter().take(5) {
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                second.second,
                thousands(second.rows as u64),
                cell(second.lag_ms, |s| s.p50),
                cell(second.lag_ms, |s| s.p99),
                cell(second.lag_ms, |s| s.max),
                cell(second.http_ms, |s| s.p99),
                cell(second.http_ms, |s| s.max),
            ));
        }
        out
    }
}

fn integrity(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISMATCH"
    }
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| "unknown".to_string(), str::to_string)
}
