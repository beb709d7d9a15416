//! The predictors the detectors are built from. Each one reads an [`Estimate`] (the value it
//! expects and the scale of its usual error) from the buckets before the current one, then
//! learns the current bucket.

use serde::{Deserialize, Serialize};

use crate::stats::RollingWindow;

/// Which side of the baseline is anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Above,
    Below,
    #[default]
    Both,
}

impl Direction {
    /// The part of a signed deviation that counts in this direction (never negative).
    pub fn of(self, signed: f64) -> f64 {
        match self {
            Direction::Above => signed.max(0.0),
            Direction::Below => (-signed).max(0.0),
            Direction::Both => signed.abs(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Above => "above",
            Direction::Below => "below",
            Direction::Both => "both",
        }
    }
}

/// What a predictor expects, before it sees the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub baseline: f64,
    /// The scale of the usual error (a standard deviation, robustly estimated).
    pub scale: f64,
}

impl Estimate {
    /// The signed deviation of `value` in scales.
    pub fn z(&self, value: f64) -> f64 {
        (value - self.baseline) / self.scale
    }
}

/// Every scale is at least 0.1% of the baseline (and 1e-9): on a constant series (MAD = 0)
/// any change, however small, would otherwise be infinitely far out.
pub const RELATIVE_FLOOR: f64 = 1e-3;

pub fn scale_floor(baseline: f64) -> f64 {
    (baseline.abs() * RELATIVE_FLOOR).max(1e-9)
}

// ---------------------------------------------------------------------------------------

/// Rolling median and MAD over the last `window` buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustState {
    window: RollingWindow,
}

impl RobustState {
    pub fn new(capacity: usize) -> Self {
        Self {
            window: RollingWindow::new(capacity),
        }
    }

    /// Median and 1.4826 MAD; when the MAD is 0 (more than half the values equal), 1.2533
    /// times the mean absolute deviation from the median; then the floor.
    pub fn estimate(&self) -> Option<Estimate> {
        if self.window.len() < 2 {
            return None;
        }
        let median = self.window.median();
        let mut scale = 1.4826 * self.window.mad_around(median);
        if scale <= 0.0 {
            let n = self.window.len() as f64;
            scale = 1.2533 * self.window.iter().map(|v| (v - median).abs()).sum::<f64>() / n;
        }
        Some(Estimate {
            baseline: median,
            scale: scale.max(scale_floor(median)),
        })
    }

    pub fn learn(&mut self, value: f64, capacity: usize) {
        if self.window.capacity() != capacity {
            self.window.set_capacity(capacity);
        }
        self.window.push(value);
    }
}

// ---------------------------------------------------------------------------------------

/// Exponentially weighted mean and variance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EwmaState {
    n: u64,
    mean: f64,
    var: f64,
}

/// Values further out than this many standard deviations are clipped before the EWMA learns
/// them, so that one spike does not blow the band up.
const EWMA_CLIP: f64 = 4.0;

impl EwmaState {
    pub fn estimate(&self) -> Option<Estimate> {
        if self.n < 2 {
            return None;
        }
        Some(Estimate {
            baseline: self.mean,
            scale: self.var.sqrt().max(scale_floor(self.mean)),
        })
    }

    pub fn learn(&mut self, value: f64, alpha: f64) {
        self.n += 1;
        if self.n == 1 {
            self.mean = value;
            self.var = 0.0;
            return;
        }
        // A plain running mean at first, so the first values do not weigh for ever.
        let a = alpha.max(1.0 / self.n as f64);
        let sd = self.var.sqrt();
        let x = if self.n > 10 && sd > 0.0 {
            value.clamp(self.mean - EWMA_CLIP * sd, self.mean + EWMA_CLIP * sd)
        } else {
            value
        };
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }
}

// ---------------------------------------------------------------------------------------

/// At most this many slots per period: a day in five-minute slots, a week in 35-minute ones.
pub const MAX_SLOTS: i64 = 288;

/// The same slot of the day (or week) in earlier seasons. Each slot keeps the mean of its
/// values in each of the last `seasons` seasons it saw, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeasonalState {
    period_s: i64,
    slot_s: i64,
    seasons: usize,
    first_at: Option<i64>,
    /// `slots × seasons` means, newest first within a slot.
    means: Vec<f32>,
    /// Season number + 1 of each slot's newest mean (0: empty).
    newest: Vec<u32>,
    /// Values averaged into each slot's newest mean.
    counts: Vec<u16>,
    /// Means stored per slot.
    filled: Vec<u8>,
    /// EWMA of the absolute residual against the seasonal baseline.
    residual: f64,
    residuals: u64,
}

/// A seasonal predictor answers only after this many seasons of history.
pub const MIN_SEASONS: f64 = 2.0;

/// The most seasons a slot remembers.
pub const MAX_SEASONS: usize = 16;

impl SeasonalState {
    fn layout(&mut self, period_s: i64, interval_s: i64, seasons: usize) {
        let slot_s = interval_s
            .max((period_s + MAX_SLOTS - 1) / MAX_SLOTS)
            .max(1);
        let seasons = seasons.clamp(1, MAX_SEASONS);
        if self.period_s != period_s || self.slot_s != slot_s || self.seasons != seasons {
            let slots = (period_s / slot_s).max(1) as usize;
            *self = SeasonalState {
                period_s,
                slot_s,
                seasons,
                means: vec![0.0; slots * seasons],
                newest: vec![0; slots],
                counts: vec![0; slots],
                filled: vec![0; slots],
                ..SeasonalState::default()
            };
        }
    }

    fn locate(&self, at: i64) -> (u32, usize) {
        let season = at.div_euclid(self.period_s) as u32;
        let slot = (at.rem_euclid(self.period_s) / self.slot_s) as usize;
        (season, slot.min(self.newest.len() - 1))
    }

    /// The median of this slot and its two neighbours over earlier seasons, with a scale:
    /// the larger of their spread and the usual residual. `None` before `MIN_SEASONS` of
    /// history.
    pub fn estimate(
        &mut self,
        at: i64,
        period_s: i64,
        interval_s: i64,
        seasons: usize,
    ) -> Option<Estimate> {
        self.layout(period_s, interval_s, seasons);
        let first = self.first_at?;
        if ((at - first) as f64) < MIN_SEASONS * period_s as f64 {
            return None;
        }
        let (season, slot) = self.locate(at);
        let n = self.newest.len();
        let mut values = [0.0_f64; 3 * MAX_SEASONS];
        let mut len = 0;
        for s in [slot, (slot + n - 1) % n, (slot + 1) % n] {
            // The newest mean may be this season's own (already learnt neighbours): skip it.
            let skip = usize::from(self.newest[s] == season + 1);
            for k in skip..usize::from(self.filled[s]) {
                values[len] = f64::from(self.means[s * self.seasons + k]);
                len += 1;
            }
        }
        if len < 2 {
            return None;
        }
        let values = &mut values[..len];
        let baseline = crate::stats::median(values);
        for v in values.iter_mut() {
            *v = (*v - baseline).abs();
        }
        let spread = 1.4826 * crate::stats::median(values);
        let residual = 1.2533 * self.residual;
        Some(Estimate {
            baseline,
            scale: spread.max(residual).max(scale_floor(baseline)),
        })
    }

    /// Learns the value (and its residual, when there was an estimate).
    pub fn learn(&mut self, at: i64, value: f64, estimate: Option<Estimate>) {
        if self.newest.is_empty() {
            return;
        }
        self.first_at.get_or_insert(at);
        if let Some(e) = estimate {
            let r = (value - e.baseline).abs();
            // Winsorised, so that an anomaly does not widen the band for days.
            let r = if self.residuals > 10 {
                r.min(4.0 * e.scale)
            } else {
                r
            };
            self.residuals += 1;
            let a = (1.0 / self.residuals as f64).max(0.01);
            self.residual += a * (r - self.residual);
        }
        let (season, slot) = self.locate(at);
        let base = slot * self.seasons;
        if self.newest[slot] == season + 1 {
            self.counts[slot] = self.counts[slot].saturating_add(1);
            let mean = &mut self.means[base];
            *mean += (value as f32 - *mean) / f32::from(self.counts[slot]);
        } else {
            self.means[base..base + self.seasons].rotate_right(1);
            self.means[base] = value as f32;
            self.newest[slot] = season + 1;
            self.counts[slot] = 1;
            self.filled[slot] = (self.filled[slot] + 1).min(self.seasons as u8);
        }
    }
}
