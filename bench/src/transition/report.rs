//! The results: one JSON document and the same numbers as markdown, compared with the issue's
//! targets.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use opscase_bench::format::{met, ms, percentiles, thousands};
use opscase_bench::stats::{round3, Summary};
use serde_json::{json, Value};

use crate::http::{Backend, Level};
use crate::pgbench::PgbenchRun;
use crate::{Args, Measured};

/// The targets.
const RATIO_TARGET: f64 = 0.8;
const RATIO_TARGET_CLIENTS: [usize; 2] = [8, 32];
const SQLITE_TARGET_TPS: f64 = 3_000.0;
const RSS_TARGET_MIB: f64 = 60.0;
const STARTUP_TARGET_S: f64 = 1.0;

pub struct Report {
    args: Args,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    machine: Value,
    measured: Measured,
}

impl Report {
    pub fn new(
        args: &Args,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        machine: Value,
        measured: Measured,
    ) -> Self {
        Self {
            args: args.clone(),
            started_at,
            finished_at,
            machine,
            measured,
        }
    }

    /// Write `transition-<timestamp>.json` and `.md` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        opscase_bench::format::write_results(
            dir,
            "transition",
            self.started_at,
            &self.json(),
            &self.markdown(),
        )
    }

    fn pgbench_at(&self, clients: usize) -> Option<&PgbenchRun> {
        self.measured
            .pgbench
            .iter()
            .find(|run| run.clients == clients)
    }

    fn ratio_at(&self, clients: usize) -> Option<f64> {
        let pgbench = self.pgbench_at(clients)?;
        let http = level_at(&self.measured.http_postgres, clients)?;
        Some(http.tps() / pgbench.tps)
    }

    /// (target, measured, verdict) rows.
    fn targets(&self) -> Vec<(String, String, String)> {
        let mut rows = Vec::new();
        for clients in RATIO_TARGET_CLIENTS {
            let target = format!(
                "PostgreSQL HTTP ≥ {RATIO_TARGET} × pgbench tps at {clients} clients, zero errors"
            );
            let row = match (
                self.ratio_at(clients),
                level_at(&self.measured.http_postgres, clients),
            ) {
                (Some(ratio), Some(level)) => (
                    format!("{ratio:.2} ×, {} errors", level.failures()),
                    met(ratio >= RATIO_TARGET && level.failures() == 0).to_string(),
                ),
                _ => ("not run".into(), format!("n/a (no {clients}-client run)")),
            };
            rows.push((target, row.0, row.1));
        }
        let best = self
            .measured
            .http_sqlite
            .levels
            .iter()
            .max_by(|a, b| a.tps().total_cmp(&b.tps()));
        rows.push((
            format!(
                "Embedded SQLite ≥ {} transitions/s",
                thousands(SQLITE_TARGET_TPS as u64)
            ),
            best.map_or("no data".into(), |level| {
                format!("{:.0}/s (best, at {} clients)", level.tps(), level.clients)
            }),
            met(best.is_some_and(|level| level.tps() >= SQLITE_TARGET_TPS)).into(),
        ));
        for backend in [&self.measured.http_postgres, &self.measured.http_sqlite] {
            rows.push((
                format!("Peak RSS < {RSS_TARGET_MIB} MB ({})", backend.name),
                backend
                    .peak_rss_mib
                    .map_or("unknown".into(), |mib| format!("{mib:.1} MiB")),
                met(backend.peak_rss_mib.is_some_and(|mib| mib < RSS_TARGET_MIB)).into(),
            ));
        }
        let worst = self
            .measured
            .startup
            .iter()
            .map(|s| s.ready_s)
            .fold(None, |worst: Option<f64>, s| {
                Some(worst.map_or(s, |w| w.max(s)))
            });
        rows.push((
            format!("Embedded start-up to first ready /readyz < {STARTUP_TARGET_S} s"),
            worst.map_or("no data".into(), |s| {
                format!("{:.0} ms (worst)", s * 1000.0)
            }),
            met(worst.is_some_and(|s| s < STARTUP_TARGET_S)).into(),
        ));
        rows
    }

    pub fn json(&self) -> Value {
        let measured = &self.measured;
        json!({
            "benchmark": "transition",
            "started_at": self.started_at.to_rfc3339(),
            "finished_at": self.finished_at.to_rfc3339(),
            "machine": self.machine,
            "parameters": {
                "seconds": self.args.seconds,
                "clients": self.args.clients,
                "cases": self.args.cases,
                "script": self.args.script.display().to_string(),
                "sqlite_synchronous": format!("{:?}", self.args.sqlite_synchronous).to_lowercase(),
                "pgbench_protocol": self.args.pgbench_protocol,
                "pg_pool_size": self.args.pg_pool_size,
            },
            "pgbench": measured.pgbench.iter().map(|run| json!({
                "clients": run.clients,
                "threads": run.threads,
                "tps": round3(run.tps),
                "latency_avg_ms": round3(run.latency_avg_ms),
                "latency_ms": run.latency_ms.map(Summary::to_json),
                "processed": run.processed,
                "failed": run.failed,
                "per_command_avg_ms": run.per_command.iter()
                    .map(|(ms, statement)| json!({"ms": ms, "statement": statement}))
                    .collect::<Vec<_>>(),
                "migrate_and_seed_s": round3(run.seed_s),
            })).collect::<Vec<_>>(),
            "http_postgres": backend_json(&measured.http_postgres),
            "http_sqlite": backend_json(&measured.http_sqlite),
            "startup": measured.startup.iter().map(|s| json!({
                "build_s": round3(s.build_s),
                "ready_s": round3(s.ready_s),
            })).collect::<Vec<_>>(),
            "ratio_http_over_pgbench": self.args.clients.iter().map(|&c| json!({
                "clients": c,
                "ratio": self.ratio_at(c).map(round3),
            })).collect::<Vec<_>>(),
            "targets": self.targets().into_iter().map(|(target, value, verdict)| json!({
                "target": target, "measured": value, "verdict": verdict,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn markdown(&self) -> String {
        let measured = &self.measured;
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "# transition-bench {}\n",
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        let m = &self.machine;
        line(format!(
            "Machine: {} cores ({}), {} GiB; PostgreSQL {} (fsync {}, synchronous_commit {}, \
             shared_buffers {}); {} (protocol {}); commit {}. {} s per measurement, {} cases \
             seeded / opened first; SQLite synchronous = {}.\n",
            m["nproc"],
            text(&m["cpu_model"]),
            m["mem_total_gib"],
            text(&m["postgres"]["server_version"]),
            text(&m["postgres"]["fsync"]),
            text(&m["postgres"]["synchronous_commit"]),
            text(&m["postgres"]["shared_buffers"]),
            text(&m["pgbench"]),
            self.args.pgbench_protocol,
            text(&m["git_commit"]),
            self.args.seconds,
            thousands(u64::from(self.args.cases)),
            format!("{:?}", self.args.sqlite_synchronous).to_lowercase(),
        ));
        line("| Clients | pgbench tps | pgbench latency avg / p99 | HTTP-PG tps | HTTP / pgbench | HTTP-PG p50 / p99 / p99.9 | HTTP-PG errors | HTTP-SQLite tps | HTTP-SQLite p50 / p99 / p99.9 | HTTP-SQLite errors |".into());
        line("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".into());
        for &clients in &self.args.clients {
            let pgbench = self.pgbench_at(clients);
            let pg = level_at(&measured.http_postgres, clients);
            let sqlite = level_at(&measured.http_sqlite, clients);
            line(format!(
                "| {clients} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                pgbench.map_or("–".into(), |run| format!("{:.0}", run.tps)),
                pgbench.map_or("–".into(), |run| format!(
                    "{} / {}",
                    ms(run.latency_avg_ms),
                    run.latency_ms.map_or("–".into(), |s| ms(s.p99))
                )),
                tps(pg),
                self.ratio_at(clients)
                    .map_or("–".into(), |ratio| format!("{ratio:.2}")),
                three(pg),
                errors(pg),
                tps(sqlite),
                three(sqlite),
                errors(sqlite),
            ));
        }
        line(String::new());

        line("| Backend | Peak RSS (VmHWM) | Cases opened first (rate) | Pool | Per load: CPU busy (machine) / bench process, opened in-loop[, transactions per SQLite COMMIT] |".into());
        line("| --- | ---: | ---: | ---: | --- |".into());
        for backend in [&measured.http_postgres, &measured.http_sqlite] {
            let loads: Vec<String> = backend
                .levels
                .iter()
                .map(|level| {
                    let grouped = level
                        .group_commits
                        .filter(|(_, commits)| *commits > 0)
                        .map_or(String::new(), |(transactions, commits)| {
                            format!(", {:.1}", transactions as f64 / commits as f64)
                        });
                    format!(
                        "{}c: {} / {}, {}{grouped}",
                        level.clients,
                        share(level.cpu_busy),
                        share(level.cpu_process),
                        level.opened_inline
                    )
                })
                .collect();
            line(format!(
                "| {} | {}{} | {} ({:.0}/s) | {} | {} |",
                backend.name,
                backend
                    .peak_rss_mib
                    .map_or("unknown".into(), |mib| format!("{mib:.1} MiB")),
                if backend.rss_reset {
                    ""
                } else {
                    " (not reset: whole process)"
                },
                thousands(backend.cases_opened as u64),
                backend.cases_opened as f64 / backend.open_s.max(1e-9),
                backend.pool_size,
                loads.join("; ")
            ));
        }
        line(String::new());
        line(
            "Peak RSS is the bench process's VmHWM (/proc/self/status), reset just before the \
             service was built: the service runs in-process, so it includes the load generator \
             (reqwest client, latency samples) and the pool of open case ids."
                .into(),
        );
        let startup: Vec<String> = measured
            .startup
            .iter()
            .map(|s| {
                format!(
                    "build {:.0} ms, ready {:.0} ms",
                    s.build_s * 1000.0,
                    s.ready_s * 1000.0
                )
            })
            .collect();
        line(format!(
            "Embedded start-up on a fresh data dir (in-process `Application::build` + first 200 \
             from /readyz): {}.\n",
            startup.join("; ")
        ));

        line("## Targets\n".into());
        line("| Target | Measured | Verdict |".into());
        line("| --- | --- | --- |".into());
        for (target, value, verdict) in self.targets() {
            line(format!("| {target} | {value} | {verdict} |"));
        }
        line(String::new());

        line("## pgbench per statement (average ms)\n".into());
        for run in &measured.pgbench {
            let commands: Vec<String> = run
                .per_command
                .iter()
                .filter(|(_, statement)| !statement.starts_with('\\'))
                .map(|(ms, statement)| {
                    let verb: String = statement
                        .split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ");
                    format!("{verb} {ms:.3}")
                })
                .collect();
            line(format!(
                "- {} clients: {}",
                run.clients,
                commands.join("; ")
            ));
        }
        line(String::new());
        line("## HTTP statuses\n".into());
        for backend in [&measured.http_postgres, &measured.http_sqlite] {
            for level in &backend.levels {
                let statuses: Vec<String> = level
                    .statuses
                    .iter()
                    .map(|(status, count)| format!("{status}: {}", thousands(*count)))
                    .chain(
                        level
                            .errors
                            .iter()
                            .map(|(kind, count)| format!("{kind}: {}", thousands(*count))),
                    )
                    .collect();
                line(format!(
                    "- {} {} clients: {} in {:.2} s; latency p50 / p99 / p99.9 / max {}",
                    backend.name,
                    level.clients,
                    statuses.join(", "),
                    level.elapsed_s,
                    percentiles(level.latency_ms)
                ));
            }
        }
        out
    }
}

fn level_at(backend: &Backend, clients: usize) -> Option<&Level> {
    backend.levels.iter().find(|level| level.clients == clients)
}

fn backend_json(backend: &Backend) -> Value {
    json!({
        "backend": backend.name,
        "pool_size": backend.pool_size,
        "peak_rss_mib": backend.peak_rss_mib.map(round3),
        "peak_rss_reset_before_start": backend.rss_reset,
        "cases_opened_first": backend.cases_opened,
        "open_s": round3(backend.open_s),
        "levels": backend.levels.iter().map(|level| json!({
            "clients": level.clients,
            "accepted": level.accepted,
            "elapsed_s": round3(level.elapsed_s),
            "tps": round3(level.tps()),
            "statuses": level.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "errors": level.errors,
            "failures": level.failures(),
            "latency_ms": level.latency_ms.map(Summary::to_json),
            "opened_inline": level.opened_inline,
            "peak_rss_mib_so_far": level.peak_rss_mib.map(round3),
            "cpu_busy_machine": level.cpu_busy.map(round3),
            "cpu_bench_process": level.cpu_process.map(round3),
            "group_commits": level.group_commits.map(|(transactions, commits)| json!({
                "transactions": transactions,
                "commits": commits,
            })),
        })).collect::<Vec<_>>(),
    })
}

fn tps(level: Option<&Level>) -> String {
    level.map_or("–".into(), |level| format!("{:.0}", level.tps()))
}

fn three(level: Option<&Level>) -> String {
    match level.and_then(|level| level.latency_ms) {
        Some(s) => format!("{} / {} / {}", ms(s.p50), ms(s.p99), ms(s.p999)),
        None => "–".into(),
    }
}

fn errors(level: Option<&Level>) -> String {
    level.map_or("–".into(), |level| thousands(level.failures()))
}

fn share(value: Option<f64>) -> String {
    value.map_or("?".into(), |v| format!("{:.0}%", v * 100.0))
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| "unknown".to_string(), str::to_string)
}
