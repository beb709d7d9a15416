//! analyst-bench: the Analyst's detectors on the shared part of the NAB corpus, and their cost
//! when 10,000 series are evaluated every minute. Run on demand (never by `cargo test`):
//!
//! ```sh
//! cargo build --release --bin opscase
//! cargo run --release -p opscase-bench --bin analyst-bench -- nab --official
//! cargo run --release -p opscase-bench --bin analyst-bench -- throughput
//! ```
//!
//! `nab` scores every named detector in-process with the same code as `opscase analyst
//! score` and a re-implementation of NAB's scorer (per profile, per category, and
//! leave-one-category-out: each category scored at the threshold NAB's optimiser picks on the
//! other categories); `--official` also runs NAB's own harness (`nab_score.py`) on the real
//! binary for each detector, and those are the figures to quote. `throughput` measures
//! evaluations per second over 10,000 warmed series, the CPU share that 10,000 series per
//! minute take, and the heap each series' state holds.

mod nab;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use analyst::{Detector, SeriesState};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

/// Counts the heap in use, to measure what a series' state holds.
struct Counting;

static HEAP: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Parser)]
#[command(
    name = "analyst-bench",
    about = "NAB scores and evaluation cost of the Analyst's detectors"
)]
struct Cli {
    /// Where the results go.
    #[arg(long, default_value = "bench/results", global = true)]
    out: PathBuf,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// NAB scores of each detector on the shared part of the corpus.
    Nab {
        /// An extracted NAB with data/, labels/ and the harness (nab_score.py).
        #[arg(long, env = "NAB_ROOT", default_value = "../shared/nab")]
        nab_root: PathBuf,
        /// Also run NAB's own harness on the real binary (needs NAB_PYTHON, see its README).
        #[arg(long)]
        official: bool,
        #[arg(long, default_value = "target/release/opscase")]
        opscase_bin: PathBuf,
        /// Where the official harness keeps its runs.
        #[arg(long, env = "NAB_WORKDIR", default_value = "target/nab-runs")]
        workdir: PathBuf,
    },
    /// Evaluations per second over many warmed series, CPU per minute, heap per series.
    Throughput {
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// Minutes evaluated over all series (after the warm-up).
        #[arg(long, default_value_t = 30)]
        minutes: usize,
        /// Series warmed individually for the heap measurement.
        #[arg(long, default_value_t = 50)]
        sampled: usize,
    },
}

const DETECTORS: [&str; 4] = ["default", "robust_z", "ewma", "seasonal"];
const CATEGORIES: [&str; 4] = [
    "artificialNoAnomaly",
    "artificialWithAnomaly",
    "realAWSCloudwatch",
    "realKnownCause",
];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started = Utc::now();
    let (name, json, markdown) = match cli.command {
        Bench::Nab {
            nab_root,
            official,
            opscase_bin,
            workdir,
        } => {
            let (json, md) = nab_bench(
                &nab_root,
                official.then_some((opscase_bin.as_path(), workdir.as_path())),
            )?;
            ("analyst-nab", json, md)
        }
        Bench::Throughput {
            series,
            minutes,
            sampled,
        } => {
            let (json, md) = throughput(series, minutes, sampled);
            ("analyst-throughput", json, md)
        }
    };
    let mut json = json;
    json["machine"] = machine();
    json["started_at"] = json!(started);
    for path in write(&cli.out, name, started, &json, &markdown)? {
        println!("wrote {}", path.display());
    }
    print!("{markdown}");
    Ok(())
}

fn write(
    dir: &Path,
    name: &str,
    at: DateTime<Utc>,
    json: &Value,
    md: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stem = format!("{name}-{}", at.format("%Y%m%dT%H%M%SZ"));
    let paths = vec![
        dir.join(format!("{stem}.json")),
        dir.join(format!("{stem}.md")),
    ];
    std::fs::write(&paths[0], serde_json::to_string_pretty(json)? + "\n")?;
    std::fs::write(&paths[1], md)?;
    Ok(paths)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_string())
    });
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": cpu,
        "git_commit": commit,
    })
}

// ---------------------------------------------------------------------------------------
// NAB

fn detector(name: &str) -> Detector {
    analyst::detector_from_args(Some(name), &[]).expect("a named detector with its defaults")
}

/// Scores of every file (in `files` order) by one detector, in-process.
fn score_files(name: &str, files: &[nab::DataFile]) -> anyhow::Result<Vec<Vec<f64>>> {
    let d = detector(name);
    let mut all = Vec::with_capacity(files.len());
    for f in files {
        let out = analyst::score_csv(&f.text, &d).with_context(|| f.name.clone())?;
        let scores = out
            .lines()
            .skip(1)
            .map(|l| l.rsplit(',').next().unwrap_or_default().parse::<f64>())
            .collect::<Result<Vec<_>, _>>()?;
        all.push(scores);
    }
    Ok(all)
}

fn scored<'a>(
    files: &'a [nab::DataFile],
    scores: &'a [Vec<f64>],
    keep: impl Fn(&nab::DataFile) -> bool,
) -> nab::Scored<'a> {
    let idx: Vec<usize> = (0..files.len()).filter(|&i| keep(&files[i])).collect();
    nab::Scored {
        files: idx.iter().map(|&i| &files[i]).collect(),
        scores: idx.iter().map(|&i| scores[i].as_slice()).collect(),
    }
}

fn round1(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 10.0).round() / 10.0)
    } else {
        Value::Null
    }
}

/// The re-implemented scorer's view of one detector's scores.
fn fast_scores(files: &[nab::DataFile], scores: &[Vec<f64>]) -> Value {
    let all = scored(files, scores, |_| true);
    let mut profiles = serde_json::Map::new();
    for p in &nab::PROFILES {
        let best = all.optimise(p);
        let mut categories = serde_json::Map::new();
        for c in CATEGORIES {
            let cat = scored(files, scores, |f| f.category == c);
            let at = cat.at(p, best.threshold);
            // Leave one category out: the threshold NAB would pick on the other categories.
            let others = scored(files, scores, |f| f.category != c).optimise(p);
            let loco = cat.at(p, others.threshold);
            categories.insert(
                c.into(),
                json!({
                    "windows": at.windows, "detected": at.detected, "fp_rows": at.fp,
                    "normalized": round1(nab::normalise(&at, p)),
                    "loco_threshold": others.threshold,
                    "loco_detected": loco.detected,
                    "loco_normalized": round1(nab::normalise(&loco, p)),
                    "loco_raw": loco.raw,
                }),
            );
        }
        let loco_raw: f64 = categories
            .values()
            .map(|c| c["loco_raw"].as_f64().unwrap_or(0.0))
            .sum();
        let loco_total = nab::Outcome {
            raw: loco_raw,
            windows: best.windows,
            ..best
        };
        profiles.insert(
            p.short.into(),
            json!({
                "nab_profile": p.name, "threshold": best.threshold, "raw": best.raw, "detected": best.detected,
                "windows": best.windows, "tp_rows": best.tp, "fp_rows": best.fp,
                "normalized": round1(nab::normalise(&best, p)),
                "loco_normalized": round1(nab::normalise(&loco_total, p)),
                "per_category": categories,
            }),
        );
    }
    Value::Object(profiles)
}

/// NAB's own harness on the real binary.
fn official_scores(
    nab_root: &Path,
    bin: &Path,
    workdir: &Path,
    name: &str,
) -> anyhow::Result<Value> {
    let bin = bin.canonicalize().with_context(|| {
        format!(
            "{} (build it: cargo build --release --bin opscase)",
            bin.display()
        )
    })?;
    let summary = workdir.join(format!("analyst-{name}-summary.json"));
    let cmd = format!(
        "{} analyst score --detector {name} --input {{in}} --output {{out}}",
        bin.display()
    );
    let status = Command::new("python3")
        .arg(nab_root.join("nab_score.py"))
        .args([
            "--name",
            &format!("analyst-{}", name.replace('_', "-")),
            "--subset",
            "dev",
            "--cmd",
            &cmd,
        ])
        .arg("--workdir")
        .arg(workdir)
        .arg("--json")
        .arg(&summary)
        .env("NAB_ROOT", nab_root)
        .status()
        .context("python3 runs nab_score.py")?;
    if !status.success() {
        bail!("nab_score.py failed for {name} ({status})");
    }
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
    let mut profiles = serde_json::Map::new();
    for (long, short) in [
        ("standard", "standard"),
        ("reward_low_FP_rate", "low_fp"),
        ("reward_low_FN_rate", "low_fn"),
    ] {
        let p = &s["profiles"][long];
        let cats: serde_json::Map<String, Value> = p["per_category"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), json!({"normalized": v["normalized"].as_f64().map(round1), "windows": v["windows"]}))).collect())
            .unwrap_or_default();
        profiles.insert(
            short.into(),
            json!({
                "normalized": round1(p["normalized"].as_f64().unwrap_or(f64::NAN)),
                "threshold": p["threshold"], "tp_rows": p["tp"], "fp_rows": p["fp"],
                "per_category": cats,
            }),
        );
    }
    Ok(
        json!({"profiles": profiles, "detect_seconds": s["detect_seconds"], "nab_seconds": s["nab_seconds"], "cmd": cmd}),
    )
}

fn nab_bench(nab_root: &Path, official: Option<(&Path, &Path)>) -> anyhow::Result<(Value, String)> {
    let files = nab::load_corpus(nab_root, &CATEGORIES)?;
    let rows: usize = files.iter().map(|f| f.timestamps.len()).sum();
    let windows: usize = files.iter().map(|f| f.windows.len()).sum();
    let mut results = serde_json::Map::new();
    let mut md = format!(
        "# Analyst detectors on NAB (shared part: {} files, {windows} windows, {rows} rows)\n\n",
        files.len()
    );
    md += "Each detector with its default parameters, one run per file, scores from `opscase analyst score`'s code.\n\n";
    let mut official_rows = String::new();
    let mut fast_rows = String::new();
    let mut category_rows = String::new();
    for name in DETECTORS {
        let t = Instant::now();
        let scores = score_files(name, &files)?;
        let seconds = t.elapsed().as_secs_f64();
        let fast = fast_scores(&files, &scores);
        let f = |p: &str, k: &str| fast[p][k].to_string();
        fast_rows += &format!(
            "| {name} | {} / {} / {} | {} / {} / {} | {}/{} | {} | {:.2} |\n",
            f("standard", "normalized"),
            f("low_fp", "normalized"),
            f("low_fn", "normalized"),
            f("standard", "loco_normalized"),
            f("low_fp", "loco_normalized"),
            f("low_fn", "loco_normalized"),
            f("standard", "detected"),
            f("standard", "windows"),
            f("standard", "fp_rows"),
            seconds,
        );
        for c in &CATEGORIES[1..] {
            let cat = &fast["standard"]["per_category"][c];
            category_rows += &format!(
                "| {name} | {c} | {}/{} | {} | {} | {} |\n",
                cat["detected"],
                cat["windows"],
                cat["fp_rows"],
                cat["normalized"],
                cat["loco_normalized"]
            );
        }
        let mut entry = json!({"in_process": fast, "in_process_seconds": seconds});
        if let Some((bin, workdir)) = official {
            let o = official_scores(nab_root, bin, workdir, name)?;
            let g = |p: &str| o["profiles"][p]["normalized"].to_string();
            let c = |cat: &str| {
                o["profiles"]["standard"]["per_category"][cat]["normalized"].to_string()
            };
            official_rows += &format!(
                "| {name} | {} | {} | {} | {} | {} | {} |\n",
                g("standard"),
                g("low_fp"),
                g("low_fn"),
                c("artificialWithAnomaly"),
                c("realAWSCloudwatch"),
                c("realKnownCause"),
            );
            entry["official"] = o;
        }
        results.insert(name.into(), entry);
    }
    if official.is_some() {
        md += "## NAB's own harness (`nab_score.py --subset dev`) on the release binary\n\n";
        md += "| detector | standard | low FP | low FN | artificialWithAnomaly | realAWSCloudwatch | realKnownCause |\n";
        md += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        md += &official_rows;
        md += "\nPer category: the standard profile at the threshold chosen over all files (informational, as the harness prints it).\n\n";
    }
    md += "## In-process scorer (a re-implementation of NAB's sweeper and optimiser)\n\n";
    md += "Leave one category out: each category is scored at the threshold NAB's optimiser picks on the other three, and the four are added up — how the score holds when the threshold is not fitted on the files it scores.\n\n";
    md += "| detector | standard / low FP / low FN | leave-one-category-out | windows detected (standard) | FP rows | seconds |\n";
    md += "| --- | ---: | ---: | ---: | ---: | ---: |\n";
    md += &fast_rows;
    md += "\n| detector | category (standard) | windows detected | FP rows | normalized | leave-one-category-out |\n| --- | --- | ---: | ---: | ---: | ---: |\n";
    md += &category_rows;
    md += "\nThe `threshold` detector is left out: it needs a bound for each series (`above`/`below`), which NAB does not give.\n";
    Ok((
        json!({"files": files.len(), "windows": windows, "rows": rows, "detectors": results}),
        md,
    ))
}

// ---------------------------------------------------------------------------------------
// Throughput and memory

/// A minute series with a daily shape, noise and occasional spikes (deterministic).
struct Synthetic {
    seed: u64,
    level: f64,
}

impl Synthetic {
    /// Series `shape` (its level) with its own noise `stream`.
    fn new(shape: usize, stream: usize) -> Self {
        Self {
            seed: 0x9E37_79B9_7F4A_7C15 ^ ((stream as u64 + 1) << 20 | shape as u64),
            level: 50.0 + (shape % 97) as f64,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 11) as f64 / (1u64 << 53) as f64
    }

    fn value(&mut self, minute: i64) -> f64 {
        let day = (minute % 1_440) as f64 / 1_440.0;
        let shape = 1.0 + 0.4 * (2.0 * std::f64::consts::PI * day).sin();
        let noise = (self.uniform() - 0.5) * 0.2 * self.level;
        let spike = if self.uniform() < 0.001 {
            3.0 * self.level
        } else {
            0.0
        };
        self.level * shape + noise + spike
    }
}

const T0: i64 = 1_700_006_400; // a midnight

fn minute(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(T0 + 60 * m, 0).expect("in range")
}

fn throughput(series: usize, minutes: usize, sampled: usize) -> (Value, String) {
    let d = Detector::default_detector();
    // Two weeks and a day of minutes: every component (the weekly one too) is running.
    let warm = 15 * 1_440;
    // The heap a warmed series holds, measured over `sampled` series warmed one by one.
    let before = HEAP.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut states: Vec<SeriesState> = Vec::with_capacity(sampled);
    for s in 0..sampled {
        let mut g = Synthetic::new(s, 0);
        let mut state = SeriesState::new(&d);
        for m in 0..warm {
            state.observe(&d, minute(m), g.value(m));
        }
        states.push(state);
    }
    let warm_seconds = t.elapsed().as_secs_f64();
    let heap_per_series = (HEAP.load(Ordering::Relaxed) - before) as f64 / sampled as f64;
    let json_per_series = states
        .iter()
        .map(|s| serde_json::to_string(s).map_or(0, |j| j.len()))
        .sum::<usize>() as f64
        / sampled as f64;
    // 10,000 series: copies of the warmed ones (the same amount of state and work each),
    // fed their own values.
    let mut all: Vec<SeriesState> = (0..series).map(|s| states[s % sampled].clone()).collect();
    let mut gens: Vec<Synthetic> = (0..series)
        .map(|s| Synthetic::new(s % sampled, s))
        .collect();
    let values: Vec<Vec<f64>> = (0..minutes)
        .map(|m| gens.iter_mut().map(|g| g.value(warm + m as i64)).collect())
        .collect();
    let cpu_before = process_cpu_seconds();
    let t = Instant::now();
    let mut fired = 0usize;
    for (m, row) in values.iter().enumerate() {
        let at = minute(warm + m as i64);
        for (state, value) in all.iter_mut().zip(row) {
            fired += usize::from(state.observe(&d, at, *value).fired());
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
    let evaluations = (series * minutes) as f64;
    let per_second = evaluations / seconds;
    let per_eval_us = seconds / evaluations * 1e6;
    // 10,000 series each minute: CPU seconds per minute over 60 s of one core.
    let share_10k = 10_000.0 * seconds / evaluations / 60.0;
    let json = json!({
        "detector": "default", "series": series, "minutes": minutes,
        "evaluations": evaluations, "seconds": seconds, "cpu_seconds": cpu,
        "evaluations_per_second": per_second, "microseconds_per_evaluation": per_eval_us,
        "one_core_share_for_10000_series_per_minute": share_10k,
        "warm_minutes": warm, "sampled_series": sampled, "warm_seconds": warm_seconds,
        "heap_bytes_per_series": heap_per_series, "json_bytes_per_series": json_per_series,
        "alarms_fired": fired,
    });
    let md = format!(
        "# Analyst evaluation cost (default detector)\n\n\
         {series} series, each warmed with {warm} one-minute buckets (15 days: every component running), then {minutes} minutes evaluated for all of them on one thread.\n\n\
         | measure | value |\n| --- | ---: |\n\
         | evaluations (series × buckets) per second | {per_second:.0} |\n\
         | time per evaluation | {per_eval_us:.2} µs |\n\
         | one core's share for 10,000 series each minute | {:.3}% (target < 5%) |\n\
         | heap per warmed series | {:.1} KiB |\n\
         | serialized state per series (JSON) | {:.1} KiB |\n\
         | alarms fired over the run | {fired} |\n",
        share_10k * 100.0,
        heap_per_series / 1024.0,
        json_per_series / 1024.0,
    );
    (json, md)
}

/// This process's user + system CPU seconds (Linux).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
