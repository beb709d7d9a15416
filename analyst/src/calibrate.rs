//! Calibration of a detector's deviations against the series' own history of deviations.
//!
//! A deviation of six standard deviations is rare on a smooth series and happens every hour
//! on a spiky one. A [`Calibrator`] keeps a decayed, log-binned histogram of the deviations
//! one evidence channel produced on one series, and answers, for a new deviation, the share
//! of past deviations at least as large: a p-value. Beyond the largest deviation it
//! remembers, the tail is extrapolated as a power law (`largest / deviation`), down to at
//! most a hundredth, so that a new extreme twice the old one counts as rarer than one just
//! past it. The result is comparable across series of any scale and shape, which is what
//! lets one threshold serve them all (and NAB's single threshold over all its files).

use serde::{Deserialize, Serialize};

/// Bins per doubling of the deviation.
const PER_OCTAVE: f64 = 4.0;
/// Deviations are capped here: past a million (a scale at its floor), sizes mean nothing
/// more, and a recurring event must land in the same bin.
pub const CAP: f64 = 1_048_576.0;
/// Deviations up to 1 share bin 0; the top bin holds the cap.
const BINS: usize = 82;
/// Beyond the largest deviation seen, extrapolation divides the p-value by at most this.
const EXTRAPOLATION_FLOOR: f64 = 0.01;

fn position(deviation: f64) -> f64 {
    if deviation <= 1.0 {
        0.0
    } else {
        (1.0 + PER_OCTAVE * deviation.min(CAP).log2()).min(BINS as f64 - 1e-9)
    }
}

fn lower_edge(bin: usize) -> f64 {
    if bin == 0 {
        0.0
    } else {
        ((bin as f64 - 1.0) / PER_OCTAVE).exp2()
    }
}

/// A decayed histogram of one channel's deviations on one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibrator {
    weights: Vec<f32>,
    total: f64,
}

impl Default for Calibrator {
    fn default() -> Self {
        Self {
            weights: vec![0.0; BINS],
            total: 0.0,
        }
    }
}

impl Calibrator {
    /// A calibrator that starts with a prior: one pseudo-deviation at the cap, fading like
    /// any other record. A new series has not shown its tails yet; while the prior weighs
    /// half a deviation or more (`memory` × ln 2 records), nothing is extrapolated past it, and
    /// it keeps adding one to every count above a deviation until it fades. Without it, the
    /// first deviations that happen to exceed a short history would be called the rarest
    /// (a cold start's burst of alarms).
    pub fn with_prior() -> Self {
        let mut c = Self::default();
        c.record(CAP, 1.0);
        c
    }

    /// The effective number of deviations remembered.
    pub fn total(&self) -> f64 {
        self.total
    }

    /// The upper edge of the highest bin still holding half a deviation's weight.
    fn largest(&self) -> Option<f64> {
        let top = self.weights.iter().rposition(|w| *w >= 0.5)?;
        Some(if top == 0 { 1.0 } else { lower_edge(top + 1) })
    }

    /// The share of remembered deviations at least `deviation` (with one pseudo-count, so
    /// never 0); past the largest, `(largest / deviation)` of the smallest share, down to a
    /// hundredth of it.
    pub fn p_value(&self, deviation: f64) -> f64 {
        if deviation.is_nan() {
            return 1.0;
        }
        let deviation = deviation.min(CAP);
        let n = self.total + 1.0;
        let largest = self.largest().unwrap_or(1.0);
        if deviation > largest {
            return (largest / deviation).max(EXTRAPOLATION_FLOOR) / n;
        }
        let pos = position(deviation);
        let bin = pos.floor() as usize;
        let above: f64 = self.weights[bin + 1..].iter().map(|w| f64::from(*w)).sum();
        let inside = f64::from(self.weights[bin]) * (1.0 - (pos - bin as f64));
        ((above + inside + 1.0) / n).min(1.0)
    }

    /// The deviation whose p-value is `p` (the inverse of [`Calibrator::p_value`]).
    pub fn deviation_at(&self, p: f64) -> f64 {
        let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
        while self.p_value(hi) > p {
            lo = hi;
            hi *= 2.0;
            if hi > CAP {
                return f64::INFINITY;
            }
        }
        for _ in 0..50 {
            let mid = 0.5 * (lo + hi);
            if self.p_value(mid) > p {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    /// Remembers a deviation; each one fades by `decay` per later record (1 - 1/memory).
    pub fn record(&mut self, deviation: f64, decay: f64) {
        if deviation.is_nan() {
            return;
        }
        if decay < 1.0 {
            for w in &mut self.weights {
                *w *= decay as f32;
            }
            self.total *= decay;
        }
        let bin = position(deviation.max(0.0)).floor() as usize;
        self.weights[bin] += 1.0;
        self.total += 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_values_fall_with_the_deviation_and_past_the_largest() {
        let mut c = Calibrator::default();
        for i in 0..1000 {
            c.record((i % 10) as f64 * 0.5, 1.0);
        }
        let ps: Vec<f64> = [1.0, 3.0, 5.0, 10.0, 1e9]
            .iter()
            .map(|d| c.p_value(*d))
            .collect();
        assert!(ps.windows(2).all(|w| w[0] > w[1]), "{ps:?}");
        assert!(ps[3] < 1.0 / 1000.0);
        assert!(
            ps[4] >= 1e-2 / 1001.0,
            "extrapolation is bounded: {}",
            ps[4]
        );
        assert!((c.p_value(0.0) - 1.0).abs() < 1e-9);
        let d = c.deviation_at(1e-4);
        assert!((c.p_value(d) - 1e-4).abs() < 1e-6, "{d}");
    }

    #[test]
    fn the_prior_keeps_a_young_series_from_calling_its_first_extremes_the_rarest() {
        let (mut young, mut bare) = (Calibrator::with_prior(), Calibrator::default());
        for i in 0..200 {
            young.record((i % 4) as f64, 0.999);
            bare.record((i % 4) as f64, 0.999);
        }
        // Past everything seen: extrapolated without the prior, 2 in n with it.
        assert!(bare.p_value(40.0) < 0.1 / bare.total());
        assert!(young.p_value(40.0) > 1.5 / (young.total() + 1.0));
        // The prior fades with the memory.
        for _ in 0..5_000 {
            young.record(1.0, 0.999);
        }
        assert!(young.p_value(40.0) < 0.1 / young.total());
    }

    #[test]
    fn old_deviations_fade() {
        let mut c = Calibrator::default();
        c.record(100.0, 0.99);
        let fresh = c.p_value(50.0);
        for _ in 0..1000 {
            c.record(0.5, 0.99);
        }
        assert!(c.p_value(50.0) < fresh / 10.0);
    }
}
