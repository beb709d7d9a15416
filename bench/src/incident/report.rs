//! The report: one JSON document and a markdown summary of both backends, with the target
//! (p50 < 50 ms, p99 < 200 ms create→CLOSED at 50 cases/s on PostgreSQL + JetStream).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use opscase_bench::format::{met, ms, thousands};
use opscase_bench::stats::{round3, Summary};
use serde_json::{json, Value};

use crate::load::{End, Run, EVENTS, SERVICE, TENANT};
use crate::{Args, Backend};

const TARGET_RATE: u32 = 50;
const TARGET_P50_MS: f64 = 50.0;
const TARGET_P99_MS: f64 = 200.0;
/// The stages of the loop: between consecutive applied timeline rows, and who acts in each.
const STAGES: [(&str, &str, &str); 6] = [
    ("open", "start_analysis", "client: open → start_analysis"),
    (
        "start_analysis",
        "analysis_done",
        "analyst: start_analysis → analysis_done",
    ),
    (
        "analysis_done",
        "plan_ready",
        "planner: analysis_done → plan_ready",
    ),
    (
        "plan_ready",
        "gate_approved",
        "gatekeeper: plan_ready → gate_approved",
    ),
    (
        "gate_approved",
        "exec_done",
        "executor: gate_approved → exec_done",
    ),
    (
        "exec_done",
        "verify_pass",
        "verifier: exec_done → verify_pass",
    ),
];

pub struct Report {
    args: Args,
    binary: PathBuf,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    machine: Value,
    runs: Vec<Run>,
}

impl Report {
    pub fn new(
        args: &Args,
        binary: &Path,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        machine: Value,
        runs: Vec<Run>,
    ) -> Self {
        Self {
            args: args.clone(),
            binary: binary.to_path_buf(),
            started_at,
            finished_at,
            machine,
            runs,
        }
    }

    /// `incident-loop.json` and `incident-loop.md` in `dir` (a run replaces the previous one).
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json_path = dir.join("incident-loop.json");
        let markdown_path = dir.join("incident-loop.md");
        std::fs::write(
            &json_path,
            serde_json::to_string_pretty(&self.json())? + "\n",
        )
        .with_context(|| format!("cannot write {}", json_path.display()))?;
        std::fs::write(&markdown_path, self.markdown())
            .with_context(|| format!("cannot write {}", markdown_path.display()))?;
        Ok(vec![json_path, markdown_path])
    }

    fn postgres(&self) -> Option<&Run> {
        self.runs
            .iter()
            .find(|run| run.backend == Backend::Postgres)
    }

    /// met / not met / n/a: server-side p50 and p99 under the bounds, every offered case
    /// CLOSED, at the target rate on PostgreSQL + JetStream.
    fn verdict(&self, pick: fn(&Run) -> Vec<f64>) -> &'static str {
        let Some(run) = self.postgres() else {
            return "n/a (no PostgreSQL run)";
        };
        if self.args.rate != TARGET_RATE {
            return "n/a (not at 50 cases/s)";
        }
        let Some(summary) = Summary::of(pick(run)) else {
            return "not met";
        };
        met(summary.p50 < TARGET_P50_MS
            && summary.p99 < TARGET_P99_MS
            && run.closed() as u64 == run.offered)
    }

    pub fn json(&self) -> Value {
        json!({
            "bench": "incident-loop",
            "started_at": self.started_at.to_rfc3339(),
            "finished_at": self.finished_at.to_rfc3339(),
            "machine": self.machine,
            "parameters": {
                "rate_per_s": self.args.rate,
                "seconds": self.args.seconds,
                "case_timeout_s": self.args.case_timeout,
                "poll_min_ms": self.args.poll_ms,
                "max_poll_rate_per_s": self.args.max_poll_rate,
                "warm_up_s": self.args.warm_up,
                "in_flight": self.args.in_flight,
                "service_binary": self.binary.display().to_string(),
                "service_settings": "opscase serve defaults, except OPSCASE_RATE_LIMIT_PER_SECOND=0",
                "service_env": self.args.service_env,
                "case": {
                    "automation": "auto",
                    "tenant": TENANT,
                    "labels": {"template": "noop.check", "service": SERVICE},
                    "client_calls": ["POST /v1/cases", "PATCH start_analysis"],
                },
            },
            "target": {
                "description": "create→CLOSED p50 < 50 ms and p99 < 200 ms at 50 cases/s on \
                                PostgreSQL + JetStream, every case closed",
                "server_side_verdict": self.verdict(Run::server_ms),
                "client_side_verdict": self.verdict(Run::client_ms),
            },
            "backends": self.runs.iter().map(|run| run_json(run, self.args.warm_up)).collect::<Vec<_>>(),
        })
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        let machine = &self.machine;
        let postgres = &machine["postgres"];
        line(format!(
            "# Incident loop benchmark (automation: auto, noop.check), {}\n",
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        line(format!(
            "- Machine: {} CPUs ({}), {} GiB RAM, Linux {}; the bench client, `opscase serve`, \
             PostgreSQL and NATS all share it.",
            machine["nproc"],
            text(&machine["cpu_model"]),
            machine["mem_total_gib"],
            text(&machine["kernel"])
        ));
        line(format!(
            "- PostgreSQL {} (fsync={}, synchronous_commit={}); nats-server {} (private, \
             JetStream file store in a temp dir); commit {}.",
            text(&postgres["server_version"]),
            text(&postgres["fsync"]),
            text(&postgres["synchronous_commit"]),
            text(&machine["nats_server"]),
            text(&machine["git_commit"])
        ));
        line(format!(
            "- Load: open loop, {} new cases/s for {} s; each case `automation: auto`, labels \
             `template: noop.check`, `service: {SERVICE}` (healthy `err_rate` in `metric_1m`); \
             client calls POST /v1/cases, PATCH `start_analysis` (the analyst applies \
             `analysis_done`), then \
             GET /v1/cases/{{id}} polls (every {} ms, growing to a fifth of the case's age, at \
             most {} polls/s in all) until CLOSED or PARKED; stuck = neither within {} s of its \
             due time. Server-side latency: `created_at` of the case's `open` and `verify_pass` \
             timeline rows; client-side: from the case's due time to the poll that saw CLOSED.",
            self.args.rate,
            self.args.seconds,
            self.args.poll_ms,
            self.args.max_poll_rate,
            self.args.case_timeout
        ));
        line(format!(
            "- Service: the release `opscase serve` binary as a child process with its defaults \
             (pool 16, relay poll fallback 1 s, four in-process workers), rate limit off{}; a \
             fresh store per backend.\n",
            if self.args.service_env.is_empty() {
                String::new()
            } else {
                format!(", and `{}`", self.args.service_env.join("`, `"))
            }
        ));

        let target_row = |name: &str, pick: fn(&Run) -> Vec<f64>| {
            let measured = self
                .postgres()
                .and_then(|run| Summary::of(pick(run)))
                .map_or("no data".into(), |s| {
                    format!("p50 {} / p99 {}", ms(s.p50), ms(s.p99))
                });
            format!(
                "| create→CLOSED p50 < 50 ms, p99 < 200 ms at 50 cases/s on PostgreSQL + \
                 JetStream, all closed ({name}) | {measured} | {} |",
                self.verdict(pick)
            )
        };
        line("| Target | Measured | Verdict |".into());
        line("| --- | --- | --- |".into());
        line(target_row("server-side", Run::server_ms));
        line(target_row("client-side", Run::client_ms));
        let warm_up = f64::from(self.args.warm_up);
        let steady = self
            .postgres()
            .and_then(|run| Summary::of(run.server_ms_from(warm_up)));
        line(format!(
            "| the same, server-side, without the cases due in the first {} s (warm-up; \
             for information) | {} | {} |\n",
            self.args.warm_up,
            steady.map_or("no data".into(), |s| format!(
                "p50 {} / p99 {}",
                ms(s.p50),
                ms(s.p99)
            )),
            steady.map_or("–", |s| {
                if s.p50 < TARGET_P50_MS && s.p99 < TARGET_P99_MS {
                    "would be met"
                } else {
                    "would not be met"
                }
            })
        ));

        line(
            "| Backend | Offered | Closed cases/s | create→CLOSED server-side p50 / p99 / max | \
             client-side p50 / p99 / max | Closed | Parked | Stuck | Errors | Peak RSS |"
                .into(),
        );
        line("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".into());
        for run in &self.runs {
            line(format!(
                "| {} | {}/s ({} cases) | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.backend.label(),
                self.args.rate,
                thousands(run.offered),
                run.achieved_per_s()
                    .map_or("–".into(), |r| format!("{r:.1}")),
                triple(Summary::of(run.server_ms())),
                triple(Summary::of(run.client_ms())),
                thousands(run.closed() as u64),
                thousands(run.count(|end| matches!(end, End::Parked)) as u64),
                thousands(run.count(|end| matches!(end, End::Stuck(_))) as u64),
                thousands(errors(run)),
                run.server
                    .peak_rss_mib
                    .map_or("–".into(), |mib| format!("{mib:.1} MiB")),
            ));
        }
        line(String::new());

        // Where the time goes: the stages between applied timeline rows.
        let mut header = "| Stage (server-side, timeline rows) |".to_string();
        let mut rule = "| --- |".to_string();
        for run in &self.runs {
            header.push_str(&format!(" {} p50 / p99 / max |", run.backend.label()));
            rule.push_str(" ---: |");
        }
        line(header);
        line(rule);
        let mut stage_rows: Vec<(String, String, String)> = STAGES
            .iter()
            .map(|(a, b, name)| (a.to_string(), b.to_string(), name.to_string()))
            .collect();
        stage_rows.push((
            "analysis_done".into(),
            "verify_pass".into(),
            "**automatic part: analysis_done → verify_pass**".into(),
        ));
        stage_rows.push((
            "open".into(),
            "verify_pass".into(),
            "**total: open → verify_pass**".into(),
        ));
        for (from, to, name) in &stage_rows {
            let mut row = format!("| {name} |");
            for run in &self.runs {
                row.push_str(&format!(
                    " {} |",
                    triple(Summary::of(run.stage_ms(from, to)))
                ));
            }
            line(row);
        }
        line(String::new());

        let mut topics: Vec<&String> = self
            .runs
            .iter()
            .flat_map(|run| run.outbox_lag_ms.keys())
            .collect();
        topics.sort();
        topics.dedup();
        let mut header = "| Outbox commit → published, by topic |".to_string();
        for run in &self.runs {
            header.push_str(&format!(
                " {} p50 / p99 / max (rows) |",
                run.backend.label()
            ));
        }
        line(header);
        line("| --- |".to_string() + &" ---: |".repeat(self.runs.len()));
        for topic in topics {
            let mut row = format!("| `{topic}` |");
            for run in &self.runs {
                let values = run.outbox_lag_ms.get(topic).cloned().unwrap_or_default();
                let count = values.len();
                row.push_str(&format!(
                    " {} |",
                    Summary::of(values).map_or("–".into(), |s| format!(
                        "{} ({})",
                        triple(Some(s)),
                        thousands(count as u64)
                    ))
                ));
            }
            line(row);
        }
        line(String::new());

        line(
            "| Detail |".to_string()
                + &self
                    .runs
                    .iter()
                    .map(|r| format!(" {} |", r.backend.label()))
                    .collect::<String>(),
        );
        line("| --- |".to_string() + &" --- |".repeat(self.runs.len()));
        let detail = |name: &str, cell: &dyn Fn(&Run) -> String| {
            let mut row = format!("| {name} |");
            for run in &self.runs {
                row.push_str(&format!(" {} |", cell(run)));
            }
            row
        };
        line(detail(
            &format!(
                "create→CLOSED server-side after the first {} s p50 / p99 / max",
                self.args.warm_up
            ),
            &|run| {
                triple(Summary::of(
                    run.server_ms_from(f64::from(self.args.warm_up)),
                ))
            },
        ));
        line(detail("Sent / late (not sent)", &|run| {
            format!("{} / {}", thousands(run.sent), thousands(run.late))
        }));
        line(detail("Closed cases/s by the server's clock", &|run| {
            run.server_closed_per_s()
                .map_or("–".into(), |r| format!("{r:.1}"))
        }));
        line(detail("Load: first slot to last case done", &|run| {
            format!("{:.2} s", run.elapsed_s)
        }));
        for kind in ["open", "start_analysis", "poll"] {
            line(detail(&format!("HTTP {kind} p50 / p99 / max"), &|run| {
                triple(
                    run.request_ms
                        .get(kind)
                        .and_then(|v| Summary::of(v.clone())),
                )
            }));
        }
        line(detail("Polls per case (mean) / polls per second", &|run| {
            let polls: u64 = run.cases.iter().map(|case| case.polls).sum();
            format!(
                "{:.1} / {:.0}",
                polls as f64 / run.cases.len().max(1) as f64,
                polls as f64 / run.elapsed_s.max(1e-9)
            )
        }));
        line(detail("Client errors by kind", &|run| {
            list(&error_kinds(run))
        }));
        line(detail("Failed cases by first failed call", &|run| {
            list(&failures(run))
        }));
        line(detail("Stuck by last status", &|run| {
            let mut stuck: BTreeMap<String, u64> = BTreeMap::new();
            for case in &run.cases {
                if let End::Stuck(status) = &case.end {
                    *stuck.entry(status.clone()).or_default() += 1;
                }
            }
            list(&stuck)
        }));
        line(detail("Timeline rows by outcome (all cases)", &|run| {
            list(&outcomes(run))
        }));
        line(detail(
            "Duplicate applied events / unreadable timelines / unpublished outbox rows",
            &|run| {
                format!(
                    "{} / {} / {}",
                    duplicates(run),
                    run.timeline_errors,
                    run.outbox_unpublished
                )
            },
        ));
        line(detail(
            "Service CPU (share of all cores) / machine busy",
            &|run| {
                format!(
                    "{} / {}",
                    percent(run.service_cpu),
                    percent(run.machine_busy)
                )
            },
        ));
        line(detail(
            "PostgreSQL checkpoints / autovacuum, autoanalyze during the load",
            &|run| match run.pg_checkpoints {
                None => "–".into(),
                Some(checkpoints) => format!(
                    "{checkpoints} / {}",
                    if run.pg_maintenance.is_empty() {
                        "none".into()
                    } else {
                        run.pg_maintenance
                            .iter()
                            .map(|(what, at)| format!("{what} at {at:.1} s"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            },
        ));
        line(detail(
            "CPU during the load by command (share of all cores; top 6)",
            &|run| {
                run.cpu_by_command
                    .iter()
                    .take(6)
                    .map(|(command, share)| format!("{command} {:.0}%", share * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ));
        line(detail(
            "Start-up to ready / shutdown after SIGTERM",
            &|run| {
                format!(
                    "{:.2} s / {} ({})",
                    run.startup_s,
                    run.server
                        .shutdown_s
                        .map_or("–".into(), |s| format!("{s:.2} s")),
                    run.server.exit
                )
            },
        ));
        line(detail("Service log lines by level", &|run| {
            list(&run.server.log_levels)
        }));
        line(detail("Service /metrics after the load", &|run| {
            run.metrics
                .iter()
                .map(|(name, value)| format!("{name} {value}"))
                .collect::<Vec<_>>()
                .join(", ")
        }));
        let samples: Vec<String> = self
            .runs
            .iter()
            .flat_map(|run| {
                run.server
                    .log_samples
                    .iter()
                    .map(move |sample| format!("- {}: `{sample}`", run.backend.label()))
            })
            .collect();
        if !samples.is_empty() {
            line("\nWarnings and errors in the service logs (first distinct ones):\n".into());
            for sample in samples {
                line(sample);
            }
        }
        out
    }
}

fn run_json(run: &Run, warm_up: u32) -> Value {
    let summary = |values: Vec<f64>| Summary::of(values).map(Summary::to_json);
    let stages: serde_json::Map<String, Value> = STAGES
        .iter()
        .map(|(from, to, _)| {
            (
                format!("{from}->{to}"),
                json!(summary(run.stage_ms(from, to))),
            )
        })
        .collect();
    // Per second of due time: how the latency and its stages developed over the load.
    let mut by_second: BTreeMap<u64, Vec<&crate::load::Timeline>> = BTreeMap::new();
    for case in &run.cases {
        if let Some(timeline) = &case.timeline {
            by_second
                .entry(case.due_s as u64)
                .or_default()
                .push(timeline);
        }
    }
    let by_second: Vec<Value> = by_second
        .into_iter()
        .map(|(second, timelines)| {
            let of = |from: &str, to: &str| {
                summary(
                    timelines
                        .iter()
                        .filter_map(|t| t.between_ms(from, to))
                        .collect(),
                )
            };
            let stages: serde_json::Map<String, Value> = STAGES
                .iter()
                .map(|(from, to, _)| (format!("{from}->{to}"), json!(of(from, to))))
                .collect();
            json!({
                "second": second,
                "latency_ms": of("open", "verify_pass"),
                "stages_ms": stages,
            })
        })
        .collect();
    let cpu_by_command: Vec<Value> = run
        .cpu_by_command
        .iter()
        .take(12)
        .map(|(command, share)| json!({"command": command, "share": round3(*share)}))
        .collect();
    let outbox: serde_json::Map<String, Value> = run
        .outbox_lag_ms
        .iter()
        .map(|(topic, values)| (topic.clone(), json!(summary(values.clone()))))
        .collect();
    let not_closed: Vec<Value> = run
        .cases
        .iter()
        .filter(|case| !matches!(case.end, End::Closed))
        .take(20)
        .map(|case| {
            let applied = case.timeline.as_ref().map(|t| {
                EVENTS
                    .iter()
                    .filter(|e| t.applied.contains_key(**e))
                    .copied()
                    .collect::<Vec<_>>()
            });
            json!({
                "id": case.id,
                "due_s": round3(case.due_s),
                "end": format!("{:?}", case.end),
                "applied": applied,
                "final_status": case.timeline.as_ref().and_then(|t| t.final_status.clone()),
            })
        })
        .collect();
    let request_ms: serde_json::Map<String, Value> = run
        .request_ms
        .iter()
        .map(|(kind, values)| (kind.to_string(), json!(summary(values.clone()))))
        .collect();
    let mut value = json!({
        "backend": run.backend.key(),
        "label": run.backend.label(),
        "startup_to_ready_s": round3(run.startup_s),
        "offered": run.offered,
        "sent": run.sent,
        "late": run.late,
        "closed": run.closed(),
        "parked": run.count(|end| matches!(end, End::Parked)),
        "stuck": run.count(|end| matches!(end, End::Stuck(_))),
        "failed": run.count(|end| matches!(end, End::Failed(_))),
        "errors": errors(run),
        "error_kinds": error_kinds(run),
        "failures": failures(run),
        "elapsed_s": round3(run.elapsed_s),
        "last_closed_s": run.last_closed_s.map(round3),
        "achieved_closed_per_s": run.achieved_per_s().map(round3),
        "server_closed_per_s": run.server_closed_per_s().map(round3),
        "max_dispatch_delay_ms": round3(run.max_dispatch_delay_ms),
    });
    let details = json!({
        "create_to_closed_server_ms": summary(run.server_ms()),
        "create_to_closed_client_ms": summary(run.client_ms()),
        "create_to_closed_server_after_warm_up_ms": summary(run.server_ms_from(f64::from(warm_up))),
        "outbox_commit_to_published_ms": outbox,
        "outbox_unpublished": run.outbox_unpublished,
        "automatic_part_ms": summary(run.stage_ms("analysis_done", "verify_pass")),
        "stages_ms": stages,
        "request_ms": request_ms,
        "statuses": run.statuses,
        "polls": run.cases.iter().map(|case| case.polls).sum::<u64>(),
        "timeline_outcomes": outcomes(run),
        "duplicate_applied_events": duplicates(run),
        "timeline_errors": run.timeline_errors,
        "service_cpu_share": run.service_cpu.map(round3),
        "machine_busy": run.machine_busy.map(round3),
        "cpu_by_command": cpu_by_command,
        "postgres_checkpoints": run.pg_checkpoints,
        "postgres_maintenance": run.pg_maintenance.iter().map(|(what, at)| json!({"run": what, "at_s": round3(*at)})).collect::<Vec<_>>(),
        "peak_rss_mib": run.server.peak_rss_mib.map(round3),
        "rss_at_end_mib": run.server.rss_at_end_mib.map(round3),
        "shutdown_s": run.server.shutdown_s.map(round3),
        "exit": run.server.exit,
        "log_levels": run.server.log_levels,
        "log_samples": run.server.log_samples,
        "metrics": run.metrics,
        "server_ms_by_second": by_second,
        "not_closed": not_closed,
    });
    if let (Some(all), Value::Object(more)) = (value.as_object_mut(), details) {
        all.extend(more);
    }
    value
}

/// Client calls that failed (non-2xx answer or no answer), whatever the case.
fn errors(run: &Run) -> u64 {
    error_kinds(run).values().sum()
}

fn error_kinds(run: &Run) -> BTreeMap<String, u64> {
    run.statuses
        .iter()
        .filter(|(key, _)| {
            let status = key.rsplit(' ').next().unwrap_or("");
            !status.starts_with('2')
        })
        .map(|(key, count)| (key.clone(), *count))
        .collect()
}

/// Failed cases by the call that failed and its answer (the problem's detail, shortened).
fn failures(run: &Run) -> BTreeMap<String, u64> {
    let mut reasons = BTreeMap::new();
    for case in &run.cases {
        if let End::Failed(reason) = &case.end {
            let reason: String = reason.chars().take(160).collect();
            *reasons.entry(reason).or_default() += 1;
        }
    }
    reasons
}

fn outcomes(run: &Run) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for timeline in run.cases.iter().filter_map(|case| case.timeline.as_ref()) {
        for (outcome, count) in &timeline.outcomes {
            *total.entry(outcome.clone()).or_default() += count;
        }
    }
    total
}

fn duplicates(run: &Run) -> u64 {
    run.cases
        .iter()
        .filter_map(|case| case.timeline.as_ref())
        .map(|t| t.duplicate_applied)
        .sum()
}

fn triple(summary: Option<Summary>) -> String {
    summary.map_or("–".into(), |s| {
        format!("{} / {} / {}", ms(s.p50), ms(s.p99), ms(s.max))
    })
}

fn list(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(key, count)| format!("{key}: {}", thousands(*count)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percent(share: Option<f64>) -> String {
    share.map_or("–".into(), |s| format!("{:.0}%", s * 100.0))
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| "unknown".to_string(), str::to_string)
}
