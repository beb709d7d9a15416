//! Streaming statistics the detectors share: a rolling window with order statistics, a
//! tracker of the series' sampling interval, and a decayed histogram of surprises.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The last `capacity` values of a series, kept both in arrival order (to evict the oldest)
/// and sorted (for the median, quantiles and the MAD). Serialised as the values in arrival
/// order only; the sorted copy is rebuilt on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "WindowData", into = "WindowData")]
pub struct RollingWindow {
    capacity: usize,
    ring: VecDeque<f64>,
    sorted: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
struct WindowData {
    capacity: usize,
    values: Vec<f64>,
}

impl From<WindowData> for RollingWindow {
    fn from(data: WindowData) -> Self {
        let mut window = RollingWindow::new(data.capacity);
        for value in data.values {
            window.push(value);
        }
        window
    }
}

impl From<RollingWindow> for WindowData {
    fn from(window: RollingWindow) -> Self {
        WindowData {
            capacity: window.capacity,
            values: window.ring.into_iter().collect(),
        }
    }
}

impl RollingWindow {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            ring: VecDeque::with_capacity(capacity.min(4096)),
            sorted: Vec::with_capacity(capacity.min(4096)),
        }
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the capacity, dropping the oldest values when it shrinks.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.ring.len() > self.capacity {
            self.evict();
        }
    }

    /// Adds a finite value, evicting the oldest when full.
    pub fn push(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        if self.ring.len() == self.capacity {
            self.evict();
        }
        self.ring.push_back(value);
        let at = self.sorted.partition_point(|v| *v < value);
        self.sorted.insert(at, value);
    }

    fn evict(&mut self) {
        if let Some(old) = self.ring.pop_front() {
            let at = self.sorted.partition_point(|v| *v < old);
            self.sorted.remove(at);
        }
    }

    /// The value at quantile `q` (0..=1), interpolated; NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        quantile_sorted(&self.sorted, q)
    }

    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    pub fn min(&self) -> f64 {
        self.sorted.first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted.last().copied().unwrap_or(f64::NAN)
    }

    /// The median absolute deviation from `center`, exact: a merge outward from `center`
    /// over the sorted values, O(n).
    pub fn mad_around(&self, center: f64) -> f64 {
        let s = &self.sorted;
        let n = s.len();
        if n == 0 {
            return f64::NAN;
        }
        // Walk the two sides outward from center, taking the nearer value each time; the
        // deviations come out in increasing order.
        let mut right = s.partition_point(|v| *v < center);
        let mut left = right; // s[left - 1] is the next one on the left
        let (lo, hi) = ((n - 1) / 2, n / 2);
        let mut taken = 0;
        let mut at_lo = 0.0;
        loop {
            let dl = if left > 0 {
                center - s[left - 1]
            } else {
                f64::INFINITY
            };
            let dr = if right < n {
                s[right] - center
            } else {
                f64::INFINITY
            };
            let d = if dl <= dr {
                left -= 1;
                dl
            } else {
                right += 1;
                dr
            };
            if taken == lo {
                at_lo = d;
            }
            if taken == hi {
                return (at_lo + d) / 2.0;
            }
            taken += 1;
        }
    }

    /// Values in arrival order, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = f64> + '_ {
        self.ring.iter().copied()
    }

    /// The number of values strictly above `value` and strictly below it.
    pub fn rank(&self, value: f64) -> (usize, usize) {
        let below = self.sorted.partition_point(|v| *v < value);
        let not_above = self.sorted.partition_point(|v| *v <= value);
        (self.sorted.len() - not_above, below)
    }
}

/// Interpolated quantile of sorted values; NaN when empty.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let i = pos.floor() as usize;
            let frac = pos - i as f64;
            if i + 1 < n {
                sorted[i] + (sorted[i + 1] - sorted[i]) * frac
            } else {
                sorted[n - 1]
            }
        }
    }
}

/// Median of a small slice (sorts a copy).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    quantile_sorted(values, 0.5)
}

/// The series' typical sampling interval: the median of the last few positive gaps between
/// timestamps, so that spans given as durations turn into bucket counts, whatever the
/// interval (one minute live, five minutes or an hour in a NAB file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntervalTracker {
    gaps: VecDeque<i64>,
}

const INTERVAL_GAPS: usize = 15;

impl IntervalTracker {
    pub fn record(&mut self, gap_seconds: i64) {
        if gap_seconds <= 0 {
            return;
        }
        if self.gaps.len() == INTERVAL_GAPS {
            self.gaps.pop_front();
        }
        self.gaps.push_back(gap_seconds);
    }

    /// The median gap in seconds, or `None` before the second timestamp.
    pub fn seconds(&self) -> Option<i64> {
        if self.gaps.is_empty() {
            return None;
        }
        let mut gaps: Vec<i64> = self.gaps.iter().copied().collect();
        gaps.sort_unstable();
        Some(gaps[gaps.len() / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_mad(values: &[f64]) -> f64 {
        let mut v = values.to_vec();
        let m = median(&mut v);
        let mut d: Vec<f64> = values.iter().map(|x| (x - m).abs()).collect();
        median(&mut d)
    }

    #[test]
    fn rolling_window_matches_naive_statistics() {
        let mut window = RollingWindow::new(7);
        let mut all = Vec::new();
        let mut x = 1.0_f64;
        for i in 0..100 {
            x = (x * 7.3 + i as f64).sin() * 10.0 + (i % 3) as f64;
            window.push(x);
            all.push(x);
            let tail = &all[all.len().saturating_sub(7)..];
            let mut sorted = tail.to_vec();
            assert_eq!(window.median(), median(&mut sorted));
            let mad = window.mad_around(window.median());
            assert!(
                (mad - naive_mad(tail)).abs() < 1e-12,
                "{mad} vs {}",
                naive_mad(tail)
            );
        }
    }

    #[test]
    fn rolling_window_round_trips_through_serde() {
        let mut window = RollingWindow::new(4);
        for v in [3.0, 1.0, 2.0, 5.0, 4.0] {
            window.push(v);
        }
        let json = serde_json::to_string(&window).unwrap();
        let back: RollingWindow = serde_json::from_str(&json).unwrap();
        assert_eq!(back, window);
        assert_eq!(back.median(), 3.0);
    }

    #[test]
    fn interval_is_the_median_gap() {
        let mut t = IntervalTracker::default();
        assert_eq!(t.seconds(), None);
        for g in [60, 60, 0, 120, 60, 86_400] {
            t.record(g);
        }
        assert_eq!(t.seconds(), Some(60));
    }
}
