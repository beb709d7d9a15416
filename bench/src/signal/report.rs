//! The results: one JSON document and the same numbers as markdown, compared with the targets.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use opscase_bench::format::{met, ms, percentiles, thousands, write_results};
use opscase_bench::stats::{round3, Summary};
use serde_json::{json, Value};

use crate::detect::{DetectRun, ANOMALY_FACTOR, RULE_NAME};
use crate::ingest::IngestRun;
use crate::{Args, Measured, Phase};

/// The targets: sensor ingest p99 under 50 ms at 1,000 alerts/s (the source design
/// asks for under 2 s), detection-to-case p99 under 1 s.
const INGEST_TARGET_RATE: u32 = 1_000;
const INGEST_TARGET_P99_MS: f64 = 50.0;
const DESIGN_INGEST_P99_MS: f64 = 2_000.0;
const DETECT_TARGET_P99_MS: f64 = 1_000.0;

pub struct Report {
    pub args: Args,
    pub binary: PathBuf,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub machine: Value,
    pub phases: Vec<Phase>,
}

fn summary(values: &[f64]) -> Option<Summary> {
    Summary::of(values.to_vec())
}

fn mib(value: Option<f64>) -> String {
    value.map_or("unknown".into(), |v| format!("{v:.1} MiB"))
}

fn share(value: Option<f64>) -> String {
    value.map_or("unknown".into(), |v| format!("{:.0}%", v * 100.0))
}

fn verdict(p99: Option<f64>, target: f64) -> &'static str {
    p99.map_or("not met (no data)", |p99| met(p99 < target))
}

pub fn summary_line(phase: &Phase) -> String {
    let rss = mib(phase.stopped.peak_rss_mib);
    match &phase.measured {
        Measured::Ingest(run) => format!(
            "{} ingest {} alerts/s: achieved {:.0}/s, latency {}, cases {} of {} groups, \
             duplicates {}, late {}, peak RSS {rss}",
            phase.backend.label(),
            run.rate,
            run.achieved_per_s(),
            percentiles(summary(&run.latency_ms)),
            run.check.cases_opened,
            run.check.groups_expected,
            run.check.duplicate_cases,
            run.late_deliveries,
        ),
        Measured::Detect(run) => format!(
            "{} detection: stamped {}, observed {}, cases {} (missing {}, extra {}), back-fill \
             cases {}, peak RSS {rss}",
            phase.backend.label(),
            percentiles(summary(&run.stamped_ms)),
            percentiles(summary(&run.observed_ms)),
            run.cases_opened,
            run.missing,
            run.extra_cases,
            run.backfill_cases,
        ),
    }
}

impl Report {
    /// No group with two cases and the cases opened as expected, in every measurement.
    pub fn integrity_ok(&self) -> bool {
        self.phases.iter().all(|phase| match &phase.measured {
            Measured::Ingest(run) => run.check.no_duplicates() && run.check.cases_match(),
            Measured::Detect(run) => run.ok(),
        })
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        write_results(
            dir,
            "signal",
            self.started_at,
            &self.json(),
            &self.markdown(),
        )
    }

    fn ingests(&self) -> impl Iterator<Item = (&Phase, &IngestRun)> {
        self.phases
            .iter()
            .filter_map(|phase| match &phase.measured {
                Measured::Ingest(run) => Some((phase, run)),
                Measured::Detect(_) => None,
            })
    }

    fn detects(&self) -> impl Iterator<Item = (&Phase, &DetectRun)> {
        self.phases
            .iter()
            .filter_map(|phase| match &phase.measured {
                Measured::Detect(run) => Some((phase, run)),
                Measured::Ingest(_) => None,
            })
    }

    pub fn json(&self) -> Value {
        let args = &self.args;
        json!({
            "benchmark": "signal",
            "started_at": self.started_at.to_rfc3339(),
            "finished_at": self.finished_at.to_rfc3339(),
            "machine": self.machine,
            "opscase_binary": self.binary.display().to_string(),
            "service": "opscase serve as a child process, its defaults, rate limit off, fresh store per measurement",
            "parameters": {
                "backends": args.backends.iter().map(|b| b.label()).collect::<Vec<_>>(),
                "rates_alerts_per_s": args.rates,
                "seconds": args.seconds,
                "max_alerts_per_delivery": args.max_alerts_per_delivery,
                "new_group_share": args.new_group_share,
                "in_flight": args.in_flight,
                "series": args.series,
                "backfill_minutes": args.backfill_minutes,
                "anomaly_rate_per_s": args.anomaly_rate,
                "poll_ms": args.poll_ms,
                "service_env": args.service_env,
                "analyst_rule": RULE_NAME,
            },
            "ingest": self.ingests().map(|(phase, run)| ingest_json(phase, run)).collect::<Vec<_>>(),
            "detect": self.detects().map(|(phase, run)| detect_json(phase, run)).collect::<Vec<_>>(),
            "targets": self.targets().iter().map(|(target, backend, measured, verdict)| json!({
                "target": target, "backend": backend, "measured": measured, "verdict": verdict,
            })).collect::<Vec<_>>(),
            "integrity_ok": self.integrity_ok(),
        })
    }

    /// (target, backend, measured, verdict) rows.
    fn targets(&self) -> Vec<(String, String, String, String)> {
        let mut rows = Vec::new();
        for (phase, run) in self.ingests() {
            let p99 = summary(&run.latency_ms).map(|s| s.p99);
            // A latency at a rate the service did not keep up with is a latency at a lower
            // rate: the target is not met, whatever the number.
            let measured = if run.sustained() {
                p99.map_or("no data".into(), ms)
            } else {
                format!(
                    "{} at {:.0} alerts/s achieved ({} deliveries late)",
                    p99.map_or("no data".into(), ms),
                    run.achieved_per_s(),
                    thousands(run.late_deliveries)
                )
            };
            let ingest_verdict = |target: f64| -> String {
                if run.sustained() {
                    verdict(p99, target).into()
                } else {
                    "not met (rate not sustained)".into()
                }
            };
            if run.rate == INGEST_TARGET_RATE {
                rows.push((
                    "Sensor ingest p99 < 50 ms at 1,000 alerts/s".into(),
                    phase.backend.label().into(),
                    measured.clone(),
                    ingest_verdict(INGEST_TARGET_P99_MS),
                ));
            }
            rows.push((
                format!(
                    "Sensor writes p99 < 2 s (source design), {} alerts/s",
                    thousands(u64::from(run.rate))
                ),
                phase.backend.label().into(),
                measured,
                ingest_verdict(DESIGN_INGEST_P99_MS),
            ));
            rows.push((
                format!(
                    "One case per group, no duplicate, {} alerts/s",
                    thousands(u64::from(run.rate))
                ),
                phase.backend.label().into(),
                format!(
                    "{} cases / {} groups, {} duplicates",
                    thousands(run.check.cases_opened),
                    thousands(run.check.groups_expected),
                    run.check.duplicate_cases
                ),
                met(run.check.no_duplicates() && run.check.cases_match()).into(),
            ));
        }
        for (phase, run) in self.detects() {
            let observed = summary(&run.observed_ms).map(|s| s.p99);
            let stamped = summary(&run.stamped_ms).map(|s| s.p99);
            rows.push((
                "Detection-to-case p99 < 1 s".into(),
                phase.backend.label().into(),
                format!(
                    "{} observed ({} stamped)",
                    observed.map_or("no data".into(), ms),
                    stamped.map_or("no data".into(), ms)
                ),
                // The upper bound decides.
                verdict(observed, DETECT_TARGET_P99_MS).into(),
            ));
            rows.push((
                "Back-fill opens no case; one case per anomaly".into(),
                phase.backend.label().into(),
                format!(
                    "{} back-fill cases; {} cases for {} anomalies",
                    run.backfill_cases, run.cases_opened, run.anomalies_sent
                ),
                met(run.ok()).into(),
            ));
        }
        rows
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        let machine = &self.machine;
        let postgres = &machine["postgres"];
        let args = &self.args;
        line(format!(
            "# signal-bench, {}\n",
            self.started_at.format("%Y-%m-%d %H:%M UTC")
        ));
        line(format!(
            "- Machine: {} cores ({}), {} GiB, kernel {}; PostgreSQL {} (fsync={}, \
             synchronous_commit={}); {}, commit {}.",
            machine["nproc"],
            text(&machine["cpu_model"]),
            machine["mem_total_gib"],
            text(&machine["kernel"]),
            text(&postgres["server_version"]),
            text(&postgres["fsync"]),
            text(&postgres["synchronous_commit"]),
            text(&machine["opscase_version"]),
            text(&machine["git_commit"]),
        ));
        line(
            "- Service: the release `opscase serve` as a child process with its defaults (rate \
             limit off), a fresh store per measurement (a temp data dir for SQLite, a new \
             database for PostgreSQL; the embedded bus on both); the load and the checks come \
             from the bench's process on the same 2 cores, over HTTP on a loopback port, with \
             a key of the `sensor` role."
                .into(),
        );
        line(format!(
            "- Ingest: {} s per rate; deliveries of 1 to {} alerts of one group (Alertmanager \
             v4 webhook bodies), {:.0}% of alerts opening a new group, the rest new alerts of \
             an existing group (join) and resends of alerts already taken (repeat) about \
             equally; at most {} deliveries in flight. Latency is per delivery, from its due \
             time on the open-loop timetable to the end of the answer.",
            args.seconds,
            args.max_alerts_per_delivery,
            args.new_group_share * 100.0,
            args.in_flight
        ));
        line(format!(
            "- Detection: rule `{RULE_NAME}` (`metric = \"p95_ms\"`, default detector, default \
             `max_age_s` 600 and sweep every 60 s) over {} series; {} healthy buckets back-filled \
             per series, then one bucket at {}× the baseline per series, {} per second, one \
             POST each. Stamped: case `created_at` − POST start (lower bound, leaves out the \
             commit); observed: first seen by a {} ms database poll − POST start (upper bound).\n",
            args.series,
            thousands(u64::from(args.backfill_minutes)),
            ANOMALY_FACTOR,
            args.anomaly_rate,
            args.poll_ms
        ));

        line("| Target | Backend | Measured | Verdict |".into());
        line("| --- | --- | --- | --- |".into());
        for (target, backend, measured, verdict) in self.targets() {
            line(format!("| {target} | {backend} | {measured} | {verdict} |"));
        }
        line(String::new());

        if self.ingests().next().is_some() {
            line("## Sensor ingest\n".into());
            line(
                "| Backend | Offered alerts/s | Achieved alerts/s | Deliveries sent / late | \
                 Latency p50 / p99 / p99.9 / max | Most sent behind due | Statuses, errors | \
                 Peak RSS | Service CPU / machine busy | Others' CPU |"
                    .into(),
            );
            line("| --- | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | --- |".into());
            for (phase, run) in self.ingests() {
                let statuses: Vec<String> = run
                    .statuses
                    .iter()
                    .map(|(status, count)| format!("{status}: {}", thousands(*count)))
                    .chain(
                        run.errors
                            .iter()
                            .map(|(kind, count)| format!("{kind}: {}", thousands(*count))),
                    )
                    .collect();
                line(format!(
                    "| {} | {} | {:.1} | {} / {} | {} | {} | {} | {} | {} / {} | {} |",
                    phase.backend.label(),
                    thousands(u64::from(run.rate)),
                    run.achieved_per_s(),
                    thousands(run.sent_deliveries),
                    thousands(run.late_deliveries),
                    percentiles(summary(&run.latency_ms)),
                    ms(run.max_dispatch_delay_ms),
                    statuses.join(", "),
                    mib(phase.stopped.peak_rss_mib),
                    share(run.service_cpu),
                    share(run.machine_busy),
                    others(&run.cpu_by_command),
                ));
            }
            line(String::new());
            line(
                "| Backend | Offered alerts/s | Alerts sent open / join / repeat | Cases opened / \
                 groups answered | Duplicate cases | Envelopes (opened + joined) / expected | \
                 Outcomes not as expected | Duplicates answered |"
                    .into(),
            );
            line("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".into());
            for (phase, run) in self.ingests() {
                let check = &run.check;
                let outcome =
                    |name: &str| check.envelopes_by_outcome.get(name).copied().unwrap_or(0);
                let mismatches: u64 = run.outcome_mismatches.values().sum();
                line(format!(
                    "| {} | {} | {} / {} / {} | {} / {}: {} | {} | {} ({} + {}) / {}: {} | {} | {} |",
                    phase.backend.label(),
                    thousands(u64::from(run.rate)),
                    thousands(run.sent_by_kind[0]),
                    thousands(run.sent_by_kind[1]),
                    thousands(run.sent_by_kind[2]),
                    thousands(check.cases_opened),
                    thousands(check.groups_expected),
                    ok(check.cases_match()),
                    check.duplicate_cases,
                    thousands(check.envelopes()),
                    thousands(outcome("opened")),
                    thousands(outcome("joined")),
                    thousands(check.envelopes_expected),
                    ok(check.envelopes_accounted()),
                    thousands(mismatches),
                    thousands(run.answered_duplicates),
                ));
            }
            line(String::new());
            line(
                "Latency by alerts in the delivery (p50 / p99, all rates and backends apart):\n"
                    .into(),
            );
            line("| Backend | Offered alerts/s | 1 | 2 | 3 | 4 | 5 |".into());
            line("| --- | ---: | ---: | ---: | ---: | ---: | ---: |".into());
            for (phase, run) in self.ingests() {
                let cells: Vec<String> = (1..=5)
                    .map(|size| {
                        run.latency_by_size
                            .get(&size)
                            .and_then(|values| summary(values))
                            .map_or("–".into(), |s| format!("{} / {}", ms(s.p50), ms(s.p99)))
                    })
                    .collect();
                line(format!(
                    "| {} | {} | {} |",
                    phase.backend.label(),
                    thousands(u64::from(run.rate)),
                    cells.join(" | ")
                ));
            }
            line(String::new());
        }

        if self.detects().next().is_some() {
            line("## Analyst detection-to-case\n".into());
            line(
                "| Backend | Back-fill: points, posted in, judged after | Back-fill cases | \
                 Anomaly POST p50 / p99 | Stamped p50 / p99 / max | Observed p50 / p99 / max | \
                 Cases / missing / extra | Peak RSS | Service CPU / machine busy | Others' CPU |"
                    .into(),
            );
            line("| --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | --- |".into());
            for (phase, run) in self.detects() {
                let short = |values: &[f64]| {
                    summary(values).map_or("no data".into(), |s| {
                        format!("{} / {} / {}", ms(s.p50), ms(s.p99), ms(s.max))
                    })
                };
                line(format!(
                    "| {} | {} in {:.1} s, {:.1} s | {} | {} | {} | {} | {} / {} / {} | {} | {} / {} | {} |",
                    phase.backend.label(),
                    thousands(run.backfill_points),
                    run.backfill_post_s,
                    run.backfill_judged_s,
                    run.backfill_cases,
                    summary(&run.anomaly_http_ms)
                        .map_or("no data".into(), |s| format!("{} / {}", ms(s.p50), ms(s.p99))),
                    short(&run.stamped_ms),
                    short(&run.observed_ms),
                    run.cases_opened,
                    run.missing,
                    run.extra_cases,
                    mib(phase.stopped.peak_rss_mib),
                    share(run.service_cpu),
                    share(run.machine_busy),
                    others(&run.cpu_by_command),
                ));
            }
            line(String::new());
        }

        let problems: Vec<String> = self
            .phases
            .iter()
            .filter(|phase| phase.stopped.warnings + phase.stopped.errors > 0)
            .map(|phase| {
                format!(
                    "{} ({}): {} warnings, {} errors; first: {}",
                    phase.backend.label(),
                    phase_name(phase),
                    phase.stopped.warnings,
                    phase.stopped.errors,
                    phase
                        .stopped
                        .problem_samples
                        .first()
                        .cloned()
                        .unwrap_or_default()
                )
            })
            .collect();
        line(format!(
            "Service logs: {}.",
            if problems.is_empty() {
                "no warning or error".to_string()
            } else {
                problems.join("; ")
            }
        ));
        out
    }
}

fn phase_name(phase: &Phase) -> String {
    match &phase.measured {
        Measured::Ingest(run) => format!("ingest {}/s", run.rate),
        Measured::Detect(_) => "detection".into(),
    }
}

fn ingest_json(phase: &Phase, run: &IngestRun) -> Value {
    let check = &run.check;
    json!({
        "backend": phase.backend.label(),
        "rate_alerts_per_s": run.rate,
        "offered_alerts": run.offered_alerts,
        "sent_deliveries": run.sent_deliveries,
        "late_deliveries": run.late_deliveries,
        "late_alerts": run.late_alerts,
        "alerts_sent": kinds(run.sent_by_kind),
        "alerts_answered": kinds(run.answered_by_kind),
        "alerts_failed": kinds(run.failed_by_kind),
        "achieved_alerts_per_s": round3(run.achieved_per_s()),
        "elapsed_s": round3(run.elapsed_s),
        "latency_ms": summary(&run.latency_ms).map(Summary::to_json),
        "latency_ms_by_alerts_in_delivery": run.latency_by_size.iter()
            .map(|(size, values)| (size.to_string(), summary(values).map(Summary::to_json).unwrap_or(Value::Null)))
            .collect::<serde_json::Map<_, _>>(),
        "latency_ms_by_second": run.latency_by_second.iter()
            .map(|(second, values)| json!({"second": second, "latency_ms": summary(values).map(Summary::to_json)}))
            .collect::<Vec<_>>(),
        "max_dispatch_delay_ms": round3(run.max_dispatch_delay_ms),
        "statuses": run.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "errors": run.errors,
        "outcome_mismatches": run.outcome_mismatches,
        "answered_duplicates": run.answered_duplicates,
        "check": {
            "groups_expected": check.groups_expected,
            "groups_unanswered": check.groups_unanswered,
            "cases_opened": check.cases_opened,
            "duplicate_cases": check.duplicate_cases,
            "groups_with_duplicates": check.groups_with_duplicates,
            "missing_groups": check.missing_groups,
            "unexpected_cases": check.unexpected_cases,
            "envelopes_by_outcome": check.envelopes_by_outcome,
            "envelopes_expected": check.envelopes_expected,
            "envelopes_maybe": check.envelopes_maybe,
            "envelopes_without_case": check.envelopes_without_case,
            "split_groups": check.split_groups,
            "no_duplicates": check.no_duplicates(),
            "cases_match": check.cases_match(),
            "envelopes_accounted": check.envelopes_accounted(),
        },
        "service": service_json(phase),
        "service_cpu_share": run.service_cpu.map(round3),
        "machine_busy": run.machine_busy.map(round3),
        "cpu_by_command": cpu_json(&run.cpu_by_command),
    })
}

fn detect_json(phase: &Phase, run: &DetectRun) -> Value {
    json!({
        "backend": phase.backend.label(),
        "series": run.series,
        "backfill": {
            "points": run.backfill_points,
            "requests": run.backfill_requests,
            "posted_s": round3(run.backfill_post_s),
            "judged_s": round3(run.backfill_judged_s),
            "http_ms": summary(&run.backfill_http_ms).map(Summary::to_json),
            "cases_opened": run.backfill_cases,
        },
        "anomalies": {
            "sent": run.anomalies_sent,
            "errors": run.anomaly_errors,
            "bucket_age_at_first_send_s": round3(run.anomaly_bucket_age_s),
            "http_ms": summary(&run.anomaly_http_ms).map(Summary::to_json),
            "max_dispatch_delay_ms": round3(run.max_dispatch_delay_ms),
        },
        "detection_to_case_ms": {
            "stamped": summary(&run.stamped_ms).map(Summary::to_json),
            "observed": summary(&run.observed_ms).map(Summary::to_json),
        },
        "cases_opened": run.cases_opened,
        "missing": run.missing,
        "extra_cases": run.extra_cases,
        "ok": run.ok(),
        "service": service_json(phase),
        "service_cpu_share": run.service_cpu.map(round3),
        "machine_busy": run.machine_busy.map(round3),
        "cpu_by_command": cpu_json(&run.cpu_by_command),
    })
}

fn service_json(phase: &Phase) -> Value {
    let stopped = &phase.stopped;
    json!({
        "startup_s": round3(phase.startup_s),
        "peak_rss_mib": stopped.peak_rss_mib.map(round3),
        "rss_at_end_mib": stopped.rss_at_end_mib.map(round3),
        "exit": stopped.exit,
        "log_warnings": stopped.warnings,
        "log_errors": stopped.errors,
        "log_samples": stopped.problem_samples,
    })
}

fn cpu_json(shares: &[(String, f64)]) -> Value {
    shares
        .iter()
        .take(8)
        .map(|(command, share)| json!({"command": command, "share_of_all_cores": round3(*share)}))
        .collect()
}

/// The largest CPU users but the service: "rustc 45%, postgres 20%".
fn others(shares: &[(String, f64)]) -> String {
    let others: Vec<String> = shares
        .iter()
        // The service is `opscase` (or a copy named `opscase-<commit>`, --opscase-bin).
        .filter(|(command, share)| !command.starts_with("opscase") && *share >= 0.02)
        .take(3)
        .map(|(command, share)| format!("{command} {:.0}%", share * 100.0))
        .collect();
    if others.is_empty() {
        "–".into()
    } else {
        others.join(", ")
    }
}

fn kinds(counts: [u64; 3]) -> Value {
    json!({"open": counts[0], "join": counts[1], "repeat": counts[2]})
}

fn ok(value: bool) -> &'static str {
    if value {
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
