//! `memory-bench`: the resident memory of `opscase serve`, alone in its process, idle, under
//! the transition load, after it, and after a storm of bad input. On demand only (never part
//! of `cargo test`); see bench/README.md.
//!
//! For each variant (an `opscase` binary, with settings) and each backend (embedded SQLite,
//! PostgreSQL on a fresh database), one service is started and goes through:
//! 1. **idle**: `--idle-s` after ready;
//! 2. **open**: `--cases` cases opened (32 at a time);
//! 3. **load**: `--clients` workers send transitions for `--seconds` (closed loop, as
//!    transition-bench); its peak is VmHWM, reset just before;
//! 4. **after load**: `--after-s` of nothing, RSS read every 5 s;
//! 5. **bad input** (unless `--no-bad-input`): `--bad-clients` workers send bodies near and over
//!    the body limit, invalid JSON, unknown events, no key, for `--bad-seconds`;
//! 6. **after bad input**: `--after-s` of nothing again.
//!
//! The numbers are reported, never asserted: `memory-<UTC timestamp>.json|.md` in `--out`.

mod load;
mod service;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use clap::Parser;
use opscase_bench::setup::{self, BenchDatabase};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;

use service::{Memory, Sampler, Service};

/// Where results go unless `--out` says otherwise: `bench/results`, wherever cargo runs from.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");
/// How often the background sampler reads /proc/<pid>/status.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often the RSS is recorded while the service sits idle after a load.
const AFTER_STEP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "memory-bench",
    about = "Resident memory of opscase serve (its own process): idle, under the transition load, \
             after it, and after bad input, on SQLite and PostgreSQL"
)]
pub struct Args {
    /// A variant to measure, `LABEL=PATH` of an `opscase` binary; repeatable (all variants run
    /// on each backend in turn). Default: build the release binary (`cargo build --release
    /// --bin opscase`) and call it `current`.
    #[arg(long = "opscase-bin", value_name = "LABEL=PATH")]
    pub opscase_bin: Vec<String>,
    /// A setting for one variant, `LABEL:OPSCASE_NAME=VALUE` (or an allocator's variable such as
    /// `LABEL:MALLOC_ARENA_MAX=2`); repeatable. A label may name a variant of its own made
    /// from another's binary with `--opscase-bin LABEL=PATH` again.
    #[arg(long = "variant-env", value_name = "LABEL:NAME=VALUE")]
    pub variant_env: Vec<String>,
    /// A setting for every variant, `OPSCASE_NAME=VALUE`; repeatable.
    #[arg(long = "service-env", value_name = "NAME=VALUE")]
    pub service_env: Vec<String>,
    /// Backends, comma-separated: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub backends: Vec<String>,
    /// Workers of the transition load.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long the transition load runs.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Cases opened before the load (workers open more, untimed, if they run out).
    #[arg(long, default_value_t = 30_000)]
    pub cases: usize,
    /// Seconds after ready before the idle reading.
    #[arg(long, default_value_t = 5)]
    pub idle_s: u64,
    /// Seconds of quiet after each load before the "after" reading.
    #[arg(long, default_value_t = 60)]
    pub after_s: u64,
    /// Skip the bad-input phase.
    #[arg(long)]
    pub no_bad_input: bool,
    /// Workers sending bad input.
    #[arg(long, default_value_t = 64)]
    pub bad_clients: usize,
    /// How long the bad input is sent.
    #[arg(long, default_value_t = 20)]
    pub bad_seconds: u64,
    /// The service's `server.body_limit_bytes` (the bad bodies are sized from it).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// A PostgreSQL database to connect to for CREATE / DROP DATABASE (loopback only).
    #[arg(
        long,
        env = "OPSCASE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres_url: String,
    /// Directory for memory-<UTC timestamp>.json and .md.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Instead of starting services: drive the phases against this running service (e.g. one
    /// under heaptrack) and read the memory of `--attach-pid`. Nothing is written.
    #[arg(long, value_name = "URL")]
    pub attach: Option<String>,
    #[arg(long)]
    pub attach_pid: Option<u32>,
    /// The admin key of the `--attach`ed service.
    #[arg(long, default_value = service::ADMIN_KEY)]
    pub admin_key: String,
}

struct Variant {
    label: String,
    binary: PathBuf,
    env: Vec<String>,
}

impl Args {
    /// Keep every loop and the whole run bounded, and every target on this machine.
    fn validate(&mut self) -> anyhow::Result<()> {
        if !(1..=256).contains(&self.clients) || !(1..=512).contains(&self.bad_clients) {
            bail!("--clients must be 1 to 256 and --bad-clients 1 to 512");
        }
        if !(1..=600).contains(&self.seconds)
            || !(1..=600).contains(&self.bad_seconds)
            || self.after_s > 600
            || self.idle_s > 600
        {
            bail!(
                "--seconds and --bad-seconds must be 1 to 600, --after-s and --idle-s at most 600"
            );
        }
        if !(1..=200_000).contains(&self.cases) {
            bail!("--cases must be 1 to 200,000");
        }
        if self.body_limit < 4096 {
            bail!("--body-limit must be at least 4096");
        }
        for backend in &self.backends {
            if !matches!(backend.as_str(), "sqlite" | "postgres") {
                bail!("--backends takes sqlite and postgres, not {backend:?}");
            }
        }
        let options = PgConnectOptions::from_str(&self.postgres_url)
            .context("--postgres-url is not a PostgreSQL URL")?;
        let host = options.get_host();
        if !(matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]") || host.starts_with('/')) {
            bail!("--postgres-url must point at this machine (loopback), not {host}");
        }
        if self.attach.is_some() != self.attach_pid.is_some() {
            bail!("--attach and --attach-pid go together");
        }
        Ok(())
    }

    fn variants(&self) -> anyhow::Result<Vec<Variant>> {
        let mut variants = Vec::new();
        let specs = if self.opscase_bin.is_empty() {
            vec![format!("current={}", build_release_binary()?.display())]
        } else {
            self.opscase_bin.clone()
        };
        for spec in specs {
            let Some((label, path)) = spec.split_once('=') else {
                bail!("--opscase-bin takes LABEL=PATH, not {spec:?}");
            };
            let binary = std::fs::canonicalize(path)
                .with_context(|| format!("--opscase-bin {label}: {path} not found"))?;
            let mut env = self.service_env.clone();
            for setting in &self.variant_env {
                match setting.split_once(':') {
                    Some((of, pair)) if pair.contains('=') => {
                        if of == label {
                            env.push(pair.to_string());
                        }
                    }
                    _ => bail!("--variant-env takes LABEL:NAME=VALUE, not {setting:?}"),
                }
            }
            variants.push(Variant {
                label: label.to_string(),
                binary,
                env,
            });
        }
        Ok(variants)
    }
}

/// `cargo build --release --bin opscase` into the target directory this bench binary was built
/// in, and the path of the result.
fn build_release_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot tell where the bench binary is")?;
    let release_dir = exe.parent().context("no directory")?.to_path_buf();
    let target_dir = release_dir
        .parent()
        .context("the bench binary is not in <target>/release")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("memory-bench: cargo build --release --bin opscase");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--bin", "opscase", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .context("cannot run cargo (or pass --opscase-bin)")?;
    if !status.success() {
        bail!("cargo build --release --bin opscase failed ({status})");
    }
    Ok(release_dir.join("opscase"))
}

/// What one service went through.
#[derive(Debug, Default)]
struct Run {
    variant: String,
    backend: String,
    env: Vec<String>,
    idle: Memory,
    /// After opening the cases, and the largest RSS sampled while opening them.
    opened: Memory,
    open_max: Memory,
    open_s: f64,
    /// The transition load: the largest RSS sampled, VmHWM (reset just before), the RSS when
    /// it ended, and what the load did.
    load_max: Memory,
    load_hwm: f64,
    load_end: Memory,
    tally: load::Tally,
    /// RSS every 5 s after the load, the last one `--after-s` after it.
    after_load: Vec<(u64, f64)>,
    bad_max: Memory,
    bad_hwm: f64,
    bad_outcomes: BTreeMap<String, BTreeMap<String, u64>>,
    after_bad: Vec<(u64, f64)>,
    log_problems: u64,
    exit: String,
}

fn last(series: &[(u64, f64)]) -> Option<f64> {
    series.last().map(|(_, rss)| *rss)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.validate()?;
    if let (Some(url), Some(pid)) = (args.attach.clone(), args.attach_pid) {
        let mut run = Run {
            variant: "attached".into(),
            backend: url.clone(),
            ..Run::default()
        };
        phases(&args, &url, pid, &mut run).await?;
        println!("{}", serde_json::to_string_pretty(&run_json(&run))?);
        return Ok(());
    }
    let variants = args.variants()?;
    let started_at = Utc::now();
    let machine = setup::machine_facts(&args.postgres_url, None)
        .await
        .unwrap_or_else(|error| json!({ "postgres_unreachable": format!("{error:#}") }));
    let mut runs = Vec::new();
    for backend in &args.backends {
        for variant in &variants {
            let outcome = tokio::select! {
                run = measure(&args, variant, backend) => run,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            };
            let run = outcome?;
            eprintln!("memory-bench: {}", summary_line(&run));
            runs.push(run);
        }
    }
    let finished_at = Utc::now();
    let stamp = started_at.format("%Y%m%dT%H%M%SZ");
    std::fs::create_dir_all(&args.out)?;
    let report = json!({
        "bench": "memory-bench",
        "started_at": started_at.to_rfc3339(),
        "finished_at": finished_at.to_rfc3339(),
        "machine": machine,
        "args": {
            "clients": args.clients, "seconds": args.seconds, "cases": args.cases,
            "idle_s": args.idle_s, "after_s": args.after_s,
            "bad_input": !args.no_bad_input, "bad_clients": args.bad_clients,
            "bad_seconds": args.bad_seconds, "body_limit": args.body_limit,
        },
        "variants": variants.iter().map(|v| json!({
            "label": v.label, "binary": v.binary.display().to_string(), "env": v.env,
        })).collect::<Vec<_>>(),
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
    });
    let json_path = args.out.join(format!("memory-{stamp}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let markdown = markdown(&args, &variants, &runs, &report);
    let md_path = args.out.join(format!("memory-{stamp}.md"));
    std::fs::write(&md_path, &markdown)?;
    println!("{markdown}");
    eprintln!(
        "memory-bench: wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    Ok(())
}

async fn measure(args: &Args, variant: &Variant, backend: &str) -> anyhow::Result<Run> {
    let database = match backend {
        "postgres" => Some(BenchDatabase::create(&args.postgres_url).await?),
        _ => None,
    };
    let mut run = Run {
        variant: variant.label.clone(),
        backend: backend.to_string(),
        env: variant.env.clone(),
        ..Run::default()
    };
    let outcome = async {
        let service = Service::start(
            &variant.binary,
            database.as_ref().map(|d| d.url.as_str()),
            &variant.env,
        )
        .await?;
        eprintln!(
            "memory-bench: {} on {backend}: pid {} at {}",
            variant.label, service.pid, service.base
        );
        let measured = phases(args, &service.base, service.pid, &mut run).await;
        run.log_problems = service.log_problems();
        run.exit = service.stop().await;
        measured
    }
    .await;
    if let Some(database) = database {
        database.drop_database().await;
    }
    outcome.map(|()| run)
}

async fn phases(args: &Args, base: &str, pid: u32, run: &mut Run) -> anyhow::Result<()> {
    let read = || Memory::read(pid).context("the service's /proc/<pid>/status is gone");
    let sampler = Sampler::start(pid, SAMPLE_EVERY);
    let client = load::client(&args.admin_key, args.clients.max(args.bad_clients).max(32))?;

    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    run.idle = read()?;
    sampler.take_max();
    eprintln!(
        "memory-bench: idle {:.1} MiB; opening {} cases",
        run.idle.rss, args.cases
    );

    let started = std::time::Instant::now();
    let cases = load::open_cases(&client, base, args.cases).await?;
    run.open_s = started.elapsed().as_secs_f64();
    run.opened = read()?;
    run.open_max = sampler.take_max();
    let pool = Arc::new(Mutex::new(VecDeque::from(cases)));

    service::reset_peak(pid);
    eprintln!(
        "memory-bench: {} workers, {} s of transitions",
        args.clients, args.seconds
    );
    run.tally = load::transitions(&client, base, &pool, args.clients, args.seconds).await;
    run.load_end = read()?;
    run.load_max = sampler.take_max();
    run.load_hwm = run.load_end.hwm;
    eprintln!(
        "memory-bench: {:.0} transitions/s, {} failed; peak {:.1} MiB; waiting {} s",
        run.tally.tps(),
        run.tally.failures(),
        run.load_hwm,
        args.after_s
    );
    run.after_load = quiet(args.after_s, read).await?;

    if !args.no_bad_input {
        let case = pool
            .lock()
            .expect("case pool")
            .front()
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::nil().to_string());
        let kinds = Arc::new(load::bad_kinds(args.body_limit));
        let anonymous = reqwest::Client::builder()
            .pool_max_idle_per_host(args.bad_clients)
            .timeout(Duration::from_secs(30))
            .build()?;
        service::reset_peak(pid);
        sampler.take_max();
        eprintln!(
            "memory-bench: bad input, {} workers, {} s",
            args.bad_clients, args.bad_seconds
        );
        run.bad_outcomes = load::bad_input(
            &client,
            &anonymous,
            base,
            &case,
            kinds,
            args.bad_clients,
            args.bad_seconds,
        )
        .await;
        let end = read()?;
        run.bad_max = sampler.take_max();
        run.bad_hwm = end.hwm;
        eprintln!(
            "memory-bench: bad input peak {:.1} MiB; waiting {} s",
            run.bad_hwm, args.after_s
        );
        run.after_bad = quiet(args.after_s, read).await?;
    }
    Ok(())
}

/// RSS every [`AFTER_STEP`] for `seconds` (and at the end), with nothing sent.
async fn quiet(
    seconds: u64,
    read: impl Fn() -> anyhow::Result<Memory>,
) -> anyhow::Result<Vec<(u64, f64)>> {
    let mut series = Vec::new();
    let mut waited = 0;
    while waited < seconds {
        let step = AFTER_STEP.as_secs().min(seconds - waited);
        tokio::time::sleep(Duration::from_secs(step)).await;
        waited += step;
        series.push((waited, read()?.rss));
    }
    if series.is_empty() {
        series.push((0, read()?.rss));
    }
    Ok(series)
}

fn memory_json(memory: &Memory) -> Value {
    json!({
        "rss_mib": round1(memory.rss), "rss_anon_mib": round1(memory.anon),
        "hwm_mib": round1(memory.hwm), "threads": memory.threads,
    })
}

fn run_json(run: &Run) -> Value {
    json!({
        "variant": run.variant,
        "backend": run.backend,
        "env": run.env,
        "idle": memory_json(&run.idle),
        "after_open": memory_json(&run.opened),
        "open_max": memory_json(&run.open_max),
        "open_s": round1(run.open_s),
        "load": {
            "transitions_per_s": round1(run.tally.tps()),
            "accepted": run.tally.accepted,
            "elapsed_s": round1(run.tally.elapsed_s),
            "statuses": run.tally.statuses,
            "errors": run.tally.errors,
            "opened_inline": run.tally.opened_inline,
            "max_sampled": memory_json(&run.load_max),
            "peak_hwm_mib": round1(run.load_hwm),
            "end": memory_json(&run.load_end),
        },
        "after_load_rss_mib": run.after_load.iter().map(|(s, rss)| json!([s, round1(*rss)])).collect::<Vec<_>>(),
        "bad_input": {
            "outcomes": run.bad_outcomes,
            "max_sampled": memory_json(&run.bad_max),
            "peak_hwm_mib": round1(run.bad_hwm),
        },
        "after_bad_input_rss_mib": run.after_bad.iter().map(|(s, rss)| json!([s, round1(*rss)])).collect::<Vec<_>>(),
        "log_warnings_and_errors": run.log_problems,
        "exit": run.exit,
    })
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn mib(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.1}"))
}

fn summary_line(run: &Run) -> String {
    format!(
        "{} {}: idle {:.1}, load peak {:.1}, after load {}, bad-input peak {:.1}, after bad input {} MiB; {:.0} transitions/s",
        run.variant,
        run.backend,
        run.idle.rss,
        run.load_hwm,
        mib(last(&run.after_load)),
        run.bad_hwm,
        mib(last(&run.after_bad)),
        run.tally.tps()
    )
}

fn markdown(args: &Args, variants: &[Variant], runs: &[Run], report: &Value) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "# memory-bench {}\n\n`opscase serve` in its own process, load from the bench's process; \
         RSS is VmRSS of the service, peak is VmHWM reset at the start of the phase (MiB).\n\n",
        report["started_at"].as_str().unwrap_or("")
    ));
    md.push_str(&format!(
        "Machine: {}. Load: {} cases opened, then {} clients × {} s of transitions \
         (start_analysis, cancel); then {} s quiet; bad input: {} clients × {} s (bodies near and \
         over the {} B limit, invalid JSON, unknown events, no key); then {} s quiet.\n\n",
        report["machine"],
        args.cases,
        args.clients,
        args.seconds,
        args.after_s,
        args.bad_clients,
        args.bad_seconds,
        args.body_limit,
        args.after_s
    ));
    md.push_str("Variants:\n\n");
    for variant in variants {
        md.push_str(&format!(
            "- `{}`: `{}`{}\n",
            variant.label,
            variant.binary.display(),
            if variant.env.is_empty() {
                String::new()
            } else {
                format!(" with `{}`", variant.env.join(" "))
            }
        ));
    }
    md.push_str(&format!(
        "\n| Variant | Backend | Idle | Peak at {} clients | End of load | {} s after load | Transitions/s | Failed | Peak, bad input | {} s after bad input | Threads idle / load |\n",
        args.clients, args.after_s, args.after_s
    ));
    md.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for run in runs {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {} | {} | {} | {} / {} |\n",
            run.variant,
            run.backend,
            run.idle.rss,
            run.load_hwm,
            run.load_end.rss,
            mib(last(&run.after_load)),
            run.tally.tps(),
            run.tally.failures(),
            if args.no_bad_input {
                "–".into()
            } else {
                format!("{:.1}", run.bad_hwm)
            },
            mib(last(&run.after_bad)),
            run.idle.threads,
            run.load_max.threads,
        ));
    }
    md.push_str("\nRSS after each load, every 5 s (MiB):\n\n");
    for run in runs {
        let series = |s: &[(u64, f64)]| {
            s.iter()
                .map(|(_, rss)| format!("{rss:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        md.push_str(&format!(
            "- {} {}: after load {}; after bad input {}\n",
            run.variant,
            run.backend,
            series(&run.after_load),
            series(&run.after_bad)
        ));
    }
    if !args.no_bad_input {
        md.push_str("\nBad-input answers (first run): ");
        if let Some(run) = runs.first() {
            let parts: Vec<String> = run
                .bad_outcomes
                .iter()
                .map(|(kind, outcomes)| {
                    let outcomes: Vec<String> =
                        outcomes.iter().map(|(o, n)| format!("{o}×{n}")).collect();
                    format!("{kind} {}", outcomes.join(", "))
                })
                .collect();
            md.push_str(&parts.join("; "));
        }
        md.push('\n');
    }
    md
}
