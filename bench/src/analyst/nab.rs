//! The NAB corpus part and a re-implementation of NAB's scorer (`nab/sweeper.py`,
//! `optimizer.py`, `runner.normalize`), fast enough to score every detector and every
//! leave-one-category-out split in-process. It reproduces NAB's own numbers (the official
//! harness, `bench/analyst-nab.sh`, remains the reference for published figures).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// A cost profile of NAB (`config/profiles.json`).
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub short: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        short: "standard",
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        short: "low_fp",
        tp: 1.0,
        fp: 0.22,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        short: "low_fn",
        tp: 1.0,
        fp: 0.11,
        fn_: 2.0,
    },
];

/// One data file of the corpus with its label windows (as row indices, inclusive).
#[derive(Debug, Clone)]
pub struct DataFile {
    /// `category/name.csv`.
    pub name: String,
    pub category: String,
    /// The CSV text as read (`timestamp,value`).
    pub text: String,
    pub timestamps: Vec<i64>,
    pub windows: Vec<(usize, usize)>,
}

/// Seconds since the epoch of `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC, no zone).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next().unwrap_or(Some(0))?);
    Some(days_from_civil(y, m, day) * 86_400 + hh * 3_600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The labelled files of `categories` under an extracted NAB (`data/`, `labels/`).
pub fn load_corpus(nab_root: &Path, categories: &[&str]) -> anyhow::Result<Vec<DataFile>> {
    let labels: BTreeMap<String, Vec<Vec<String>>> = serde_json::from_str(&fs::read_to_string(
        nab_root.join("labels/combined_windows.json"),
    )?)?;
    let mut files = Vec::new();
    for (name, windows) in labels {
        let category = name.split('/').next().unwrap_or_default().to_string();
        if !categories.contains(&category.as_str()) {
            continue;
        }
        let text = fs::read_to_string(nab_root.join("data").join(&name))?;
        let timestamps = text
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                parse_timestamp(l.split(',').next().unwrap_or_default())
                    .ok_or_else(|| anyhow::anyhow!("{name}: bad timestamp in {l:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let index = |s: &str| -> anyhow::Result<usize> {
            let t = parse_timestamp(s).ok_or_else(|| anyhow::anyhow!("bad window {s:?}"))?;
            timestamps
                .iter()
                .position(|&x| x == t)
                .ok_or_else(|| anyhow::anyhow!("{name}: window edge {s} is not a row"))
        };
        let windows = windows
            .iter()
            .map(|w| Ok((index(&w[0])?, index(&w[1])?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        files.push(DataFile {
            name,
            category,
            text,
            timestamps,
            windows,
        });
    }
    Ok(files)
}

fn scaled_sigmoid(position: f64) -> f64 {
    if position > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * position).exp()) - 1.0
    }
}

/// NAB's probation: `min(floor(0.15 n), 750)` rows not scored.
pub fn probation(rows: usize) -> usize {
    ((0.15 * rows as f64).floor()).min(750.0) as usize
}

/// One scorable row: its anomaly score, its weighted sweep score and its window (global id).
#[derive(Debug, Clone, Copy)]
struct Point {
    score: f64,
    sweep: f64,
    window: Option<usize>,
}

/// The rows of one file as NAB's `calcSweepScore` sees them (probation left out).
fn sweep_points(
    file: &DataFile,
    scores: &[f64],
    profile: &Profile,
    window_base: usize,
) -> Vec<Point> {
    let n = scores.len();
    let max_tp = scaled_sigmoid(-1.0);
    let probation = probation(n);
    let mut out = Vec::with_capacity(n);
    let mut prev: Option<(usize, f64)> = None; // (right index, width) of the last window left
    let mut windows = file.windows.iter().enumerate().peekable();
    let mut current: Option<(usize, usize, usize)> = None; // (id, left, right)
    for (i, &score) in scores.iter().enumerate() {
        if current.is_none() {
            if let Some(&(id, &(left, right))) = windows.peek() {
                if file.timestamps[i] == file.timestamps[left] {
                    current = Some((id, left, right));
                    windows.next();
                }
            }
        }
        let (sweep, window) = match current {
            Some((id, left, right)) => {
                let width = (right - left + 1) as f64;
                let position = -((right as f64) - (i as f64) + 1.0) / width;
                (
                    scaled_sigmoid(position) * profile.tp / max_tp,
                    Some(window_base + id),
                )
            }
            None => {
                let unweighted = match prev {
                    None => -1.0,
                    Some((right, width)) => {
                        scaled_sigmoid((i as f64 - right as f64).abs() / (width - 1.0))
                    }
                };
                (unweighted * profile.fp, None)
            }
        };
        if i >= probation {
            out.push(Point {
                score,
                sweep,
                window,
            });
        }
        if let Some((_, left, right)) = current {
            if file.timestamps[i] == file.timestamps[right] {
                prev = Some((i, (right - left + 1) as f64));
                current = None;
            }
        }
    }
    out
}

/// What a threshold gives on a set of files.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub threshold: f64,
    pub raw: f64,
    pub tp: usize,
    pub fp: usize,
    pub windows: usize,
    pub detected: usize,
}

/// NAB's `calcScoreByThreshold` over the union of the points; returns every threshold row.
fn sweep(points: &mut [Point], n_windows: usize, profile: &Profile) -> Vec<Outcome> {
    points.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut parts = vec![None::<f64>; n_windows];
    let mut scorable = vec![false; n_windows];
    for p in points.iter() {
        if let Some(w) = p.window {
            scorable[w] = true;
        }
    }
    let n_scorable = scorable.iter().filter(|s| **s).count();
    let base = -profile.fn_ * n_scorable as f64;
    let mut fp_sum = 0.0;
    let mut window_gain = 0.0; // sum over detected windows of (best sweep + fn)
    let (mut tp, mut fp, mut detected) = (0, 0, 0);
    let mut rows = Vec::new();
    let mut threshold = 1.1;
    for p in points.iter() {
        if p.score != threshold {
            rows.push(Outcome {
                threshold,
                raw: base + fp_sum + window_gain,
                tp,
                fp,
                windows: n_scorable,
                detected,
            });
            threshold = p.score;
        }
        match p.window {
            None => {
                fp += 1;
                fp_sum += p.sweep;
            }
            Some(w) => {
                tp += 1;
                let old = parts[w].map_or(-profile.fn_, |v: f64| v.max(-profile.fn_));
                let new = old.max(p.sweep);
                if parts[w].is_none() {
                    detected += 1;
                }
                window_gain += new - old;
                parts[w] = Some(new);
            }
        }
    }
    rows.push(Outcome {
        threshold,
        raw: base + fp_sum + window_gain,
        tp,
        fp,
        windows: n_scorable,
        detected,
    });
    rows
}

/// Scores of a detector on a set of files: `scores[i]` belongs to `files[i]`.
pub struct Scored<'a> {
    pub files: Vec<&'a DataFile>,
    pub scores: Vec<&'a [f64]>,
}

impl Scored<'_> {
    fn points(&self, profile: &Profile) -> (Vec<Point>, usize) {
        let mut points = Vec::new();
        let mut base = 0;
        for (file, scores) in self.files.iter().zip(&self.scores) {
            points.extend(sweep_points(file, scores, profile, base));
            base += file.windows.len();
        }
        (points, base)
    }

    /// The threshold NAB's optimiser picks on these files and what it gives.
    pub fn optimise(&self, profile: &Profile) -> Outcome {
        let (mut points, n) = self.points(profile);
        let rows = sweep(&mut points, n, profile);
        // NAB sorts by score, stable, descending: the first (highest threshold) of equal bests.
        let mut best = rows[0];
        for r in &rows {
            if r.raw > best.raw {
                best = *r;
            }
        }
        best
    }

    /// What a fixed threshold (detections: score >= threshold) gives on these files.
    pub fn at(&self, profile: &Profile, threshold: f64) -> Outcome {
        let (mut points, n) = self.points(profile);
        let rows = sweep(&mut points, n, profile);
        let mut found = rows[0];
        for r in &rows {
            if r.threshold >= threshold {
                found = *r;
            } else {
                break;
            }
        }
        found
    }
}

/// NAB's normalised score: 100 (raw - null) / (perfect - null), the null detector missing
/// every window.
pub fn normalise(outcome: &Outcome, profile: &Profile) -> f64 {
    let null = -profile.fn_ * outcome.windows as f64;
    let perfect = profile.tp * outcome.windows as f64;
    if perfect == null {
        return f64::NAN;
    }
    100.0 * (outcome.raw - null) / (perfect - null)
}
