//! What the Analyst reports when an alarm fires: the content of an `event_envelope` row of
//! kind `anomaly`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::rule::{DetectorTable, Stat};
use crate::series::{Detector, Evaluation};

/// The `event_envelope` kind of a finding.
pub const FINDING_KIND: &str = "anomaly";

/// One series of `metric_1m`: a tenant's resource's metric, one of its statistics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    pub tenant: String,
    pub resource: String,
    pub metric: String,
    pub stat: Stat,
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}:{}",
            self.tenant, self.resource, self.metric, self.stat
        )
    }
}

/// The buckets the evidence spans: from the first anomalous bucket that counted towards the
/// alarm to the bucket that fired it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The values the detector would have accepted (`None`: unbounded on that side).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

/// An anomaly finding: what was seen when an alarm fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule that watched the series.
    pub rule: String,
    pub series: SeriesKey,
    pub window: Window,
    /// The value of the bucket that fired.
    pub observed: f64,
    /// What the detector expected there.
    pub baseline: f64,
    pub band: Band,
    /// The bucket's score in [0, 1] (0.5 and more is anomalous).
    pub score: f64,
    /// How far out, in the detector's unit (see [`crate::Reading::deviation`]).
    pub deviation: f64,
    /// The detector (`default`, `threshold`, `robust_z`, `ewma`, `seasonal`) and, for the
    /// default detector, the component or channel that gave the evidence.
    pub detector: String,
    pub component: String,
    /// Every parameter the detector ran with, defaults filled in.
    pub parameters: DetectorTable,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl Evaluation {
    /// The finding of this bucket when its alarm fired (else `None`).
    pub fn finding(&self, rule: &str, detector: &Detector, series: &SeriesKey) -> Option<Finding> {
        if !self.fired() {
            return None;
        }
        Some(Finding {
            rule: rule.to_string(),
            series: series.clone(),
            window: Window {
                start: self.evidence_from.unwrap_or(self.at),
                end: self.at,
            },
            observed: self.value,
            baseline: self.reading.baseline,
            band: Band {
                lower: finite(self.reading.lower),
                upper: finite(self.reading.upper),
            },
            score: self.reading.score,
            deviation: self.reading.deviation,
            detector: detector.method.kind().to_string(),
            component: self.reading.component.to_string(),
            parameters: detector.table(),
        })
    }
}
