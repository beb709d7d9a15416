//! Percentiles over a whole sample: every value is kept, so there is no histogram bucketing.

use serde_json::{json, Value};

/// Nearest-rank percentiles of one sample, in the sample's unit.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty sample.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(Self {
            count: values.len(),
            p50: nearest_rank(&values, 0.50),
            p99: nearest_rank(&values, 0.99),
            p999: nearest_rank(&values, 0.999),
            max: values[values.len() - 1],
        })
    }

    pub fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "p50": round3(self.p50),
            "p99": round3(self.p99),
            "p99_9": round3(self.p999),
            "max": round3(self.max),
        })
    }
}

/// The smallest value with at least `quantile` of the sample at or below it.
fn nearest_rank(sorted: &[f64], quantile: f64) -> f64 {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median; the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[middle],
        _ => (sorted[middle - 1] + sorted[middle]) / 2.0,
    }
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
