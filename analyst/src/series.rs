//! One series under one detector: the state that survives a restart and the evaluation of
//! each new bucket.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::alarm::{AlarmParams, AlarmState, Transition};
use crate::components::Direction;
use crate::method::{Method, MethodState, Reading};
use crate::span::Span;
use crate::stats::IntervalTracker;

/// A detector with every parameter resolved: what a rule runs on each of its series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    pub method: Method,
    pub direction: Direction,
    pub alarm: AlarmParams,
    /// Buckets a series must have before any of them is judged.
    pub min_history: u32,
    /// A gap longer than this (since the series' previous bucket) makes the series stale:
    /// the evidence gathered before the gap is dropped.
    pub stale_after: Span,
}

/// The memory of one series under one detector. Serialise it to survive a restart: the
/// restored state continues exactly as if never interrupted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    seen: u64,
    last_at: Option<i64>,
    interval: IntervalTracker,
    method: MethodState,
    alarm: AlarmState,
}

/// What one bucket gave.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub at: DateTime<Utc>,
    pub value: f64,
    pub reading: Reading,
    /// The verdict on this bucket (false during warm-up and for a bucket out of order).
    pub anomalous: bool,
    /// What the alarm did, if anything.
    pub transition: Option<Transition>,
    /// The series came back after a gap longer than `stale_after`.
    pub after_gap: bool,
    /// An alarm was already firing or cooling down before this bucket: a new anomaly here
    /// would not raise a finding.
    pub quiet: bool,
    /// The first anomalous bucket of the evidence that fired (with `transition = Fired`).
    pub evidence_from: Option<DateTime<Utc>>,
    /// The series' sampling interval as estimated so far, in seconds.
    pub interval_s: Option<i64>,
}

impl Evaluation {
    pub fn fired(&self) -> bool {
        self.transition == Some(Transition::Fired)
    }
}

pub(crate) fn to_datetime(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0).single().unwrap_or_default()
}

impl SeriesState {
    pub fn new(detector: &Detector) -> Self {
        Self {
            seen: 0,
            last_at: None,
            interval: IntervalTracker::default(),
            method: MethodState::new(&detector.method),
            alarm: AlarmState::default(),
        }
    }

    /// Buckets seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The last bucket's time.
    pub fn last_at(&self) -> Option<DateTime<Utc>> {
        self.last_at.map(to_datetime)
    }

    /// The series' sampling interval as estimated so far, in seconds.
    pub fn interval_s(&self) -> Option<i64> {
        self.interval.seconds()
    }

    /// Whether an alarm is firing.
    pub fn firing(&self) -> bool {
        self.alarm.firing_since().is_some()
    }

    /// Whether the series has sent nothing for longer than `stale_after` at `now`.
    pub fn is_stale(&self, detector: &Detector, now: DateTime<Utc>) -> bool {
        !detector.stale_after.is_zero()
            && self.last_at.is_some_and(|last| {
                now.timestamp() - last
                    > detector.stale_after.seconds(self.interval.seconds()) as i64
            })
    }

    /// Scores the bucket at `at` with `value` against the buckets before it, learns it, and
    /// runs the alarm. Buckets must come in time order; one at or before the last is scored
    /// but neither judged anomalous nor learnt twice (a repeated timestamp in a NAB file is
    /// learnt, as another reading of that time).
    pub fn observe(&mut self, detector: &Detector, at: DateTime<Utc>, value: f64) -> Evaluation {
        let t = at.timestamp();
        if !self.method.fits(&detector.method) {
            self.method = MethodState::new(&detector.method);
        }
        let mut after_gap = false;
        if let Some(last) = self.last_at {
            let gap = t - last;
            self.interval.record(gap);
            let stale = detector.stale_after.seconds(self.interval.seconds()) as i64;
            if gap > stale && !detector.stale_after.is_zero() {
                after_gap = true;
                self.alarm.forget_pending();
            }
        }
        let interval = self.interval.seconds();
        let ordered = self.last_at.is_none_or(|last| t >= last);
        if !value.is_finite() || !ordered {
            return self.unjudged(at, value, interval, after_gap);
        }
        let warm = self.seen >= u64::from(detector.min_history);
        let reading = self.method.step(
            &detector.method,
            detector.direction,
            interval,
            warm,
            t,
            value,
        );
        self.seen += 1;
        self.last_at = Some(t);
        let anomalous = reading.ready && reading.anomalous;
        let quiet = self.alarm.quiet(&detector.alarm, interval, t);
        let transition = self.alarm.step(&detector.alarm, interval, t, anomalous);
        let evidence_from = (transition == Some(Transition::Fired))
            .then(|| self.alarm.evidence_start())
            .flatten()
            .map(to_datetime);
        Evaluation {
            at,
            value,
            reading,
            anomalous,
            transition,
            after_gap,
            quiet,
            evidence_from,
            interval_s: interval,
        }
    }

    fn unjudged(
        &self,
        at: DateTime<Utc>,
        value: f64,
        interval: Option<i64>,
        after_gap: bool,
    ) -> Evaluation {
        Evaluation {
            at,
            value,
            reading: Reading {
                ready: false,
                baseline: f64::NAN,
                lower: f64::NAN,
                upper: f64::NAN,
                deviation: 0.0,
                score: 0.0,
                anomalous: false,
                component: "",
            },
            anomalous: false,
            transition: None,
            after_gap,
            quiet: self.alarm.firing_since().is_some(),
            evidence_from: None,
            interval_s: interval,
        }
    }
}
