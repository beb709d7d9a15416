//! Thresholds: `name op number`, e.g. `p95_ms < 300` or `err_rate <= 0.01`.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The comparison of a threshold: the measured value must be `op` the bound to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    /// Whether `value op bound` holds (false for NaN, as every comparison with NaN is).
    pub fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Op::Lt => value < bound,
            Op::Le => value <= bound,
            Op::Gt => value > bound,
            Op::Ge => value >= bound,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed threshold: `metric op bound`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The left-hand name: the metric looked up in `metric_1m`, a label for Prometheus.
    pub metric: String,
    pub op: Op,
    pub bound: f64,
}

/// Why a threshold does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    #[error("the threshold is empty")]
    Empty,
    #[error("no comparison operator in {0:?}: expected one of <, <=, >, >=")]
    NoOperator(String),
    #[error("invalid metric name {0:?}: expected a letter or _ then letters, digits or _")]
    BadName(String),
    #[error("invalid bound {0:?}: expected a number such as 300, 0.01 or 1e-3")]
    BadBound(String),
}

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("name pattern"));
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$").expect("number pattern")
});

impl Threshold {
    /// Parse `name op number` (the plan schema's pattern); whitespace around the parts is
    /// allowed.
    pub fn parse(text: &str) -> Result<Self, ThresholdError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ThresholdError::Empty);
        }
        let at = text
            .find(['<', '>'])
            .ok_or_else(|| ThresholdError::NoOperator(text.to_string()))?;
        let (name, rest) = text.split_at(at);
        let (op, bound) = if let Some(bound) = rest.strip_prefix("<=") {
            (Op::Le, bound)
        } else if let Some(bound) = rest.strip_prefix(">=") {
            (Op::Ge, bound)
        } else if let Some(bound) = rest.strip_prefix('<') {
            (Op::Lt, bound)
        } else {
            (Op::Gt, &rest[1..])
        };
        let name = name.trim();
        if !NAME.is_match(name) {
            return Err(ThresholdError::BadName(name.to_string()));
        }
        let bound_text = bound.trim();
        if !NUMBER.is_match(bound_text) {
            return Err(ThresholdError::BadBound(bound_text.to_string()));
        }
        let bound: f64 = bound_text
            .parse()
            .map_err(|_| ThresholdError::BadBound(bound_text.to_string()))?;
        if !bound.is_finite() {
            return Err(ThresholdError::BadBound(bound_text.to_string()));
        }
        Ok(Self {
            metric: name.to_string(),
            op,
            bound,
        })
    }

    /// Whether a measured value passes; never for NaN.
    pub fn holds(&self, value: f64) -> bool {
        self.op.holds(value, self.bound)
    }
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op, self.bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_operators() {
        let t = Threshold::parse("p95_ms < 300").unwrap();
        assert_eq!(
            (t.metric.as_str(), t.op, t.bound),
            ("p95_ms", Op::Lt, 300.0)
        );
        let t = Threshold::parse("err_rate<=0.01").unwrap();
        assert_eq!(
            (t.metric.as_str(), t.op, t.bound),
            ("err_rate", Op::Le, 0.01)
        );
        let t = Threshold::parse("  rps >  -5 ").unwrap();
        assert_eq!((t.metric.as_str(), t.op, t.bound), ("rps", Op::Gt, -5.0));
        let t = Threshold::parse("_x9 >= 1.5e3").unwrap();
        assert_eq!((t.metric.as_str(), t.op, t.bound), ("_x9", Op::Ge, 1500.0));
        assert_eq!(t.to_string(), "_x9 >= 1500");
    }

    #[test]
    fn holds_compares_and_nan_never_holds() {
        let lt = Threshold::parse("a < 1").unwrap();
        assert!(lt.holds(0.5));
        assert!(!lt.holds(1.0));
        assert!(!lt.holds(f64::NAN));
        let le = Threshold::parse("a <= 1").unwrap();
        assert!(le.holds(1.0));
        assert!(!le.holds(1.01));
        let gt = Threshold::parse("a > 1").unwrap();
        assert!(gt.holds(2.0));
        assert!(!gt.holds(1.0));
        let ge = Threshold::parse("a >= 1").unwrap();
        assert!(ge.holds(1.0));
        assert!(!ge.holds(f64::NAN));
    }

    #[test]
    fn parse_errors_are_explicit() {
        assert_eq!(Threshold::parse("  "), Err(ThresholdError::Empty));
        assert_eq!(
            Threshold::parse("p95 is fine"),
            Err(ThresholdError::NoOperator("p95 is fine".into()))
        );
        assert_eq!(
            Threshold::parse("p95 == 3"),
            Err(ThresholdError::NoOperator("p95 == 3".into()))
        );
        assert_eq!(
            Threshold::parse("9lives < 3"),
            Err(ThresholdError::BadName("9lives".into()))
        );
        assert_eq!(
            Threshold::parse("< 3"),
            Err(ThresholdError::BadName(String::new()))
        );
        assert_eq!(
            Threshold::parse("p95.ms < 3"),
            Err(ThresholdError::BadName("p95.ms".into()))
        );
        assert_eq!(
            Threshold::parse("p95 < abc"),
            Err(ThresholdError::BadBound("abc".into()))
        );
        assert_eq!(
            Threshold::parse("p95 <"),
            Err(ThresholdError::BadBound(String::new()))
        );
        assert_eq!(
            Threshold::parse("p95 < NaN"),
            Err(ThresholdError::BadBound("NaN".into()))
        );
        assert_eq!(
            Threshold::parse("p95 < inf"),
            Err(ThresholdError::BadBound("inf".into()))
        );
        assert_eq!(
            Threshold::parse("p95 =< 3"),
            Err(ThresholdError::BadName("p95 =".into()))
        );
        assert!(Threshold::parse("p95 <> 3").is_err());
        assert!(Threshold::parse("p95 < 3 < 4").is_err());
        assert!(Threshold::parse("p95 < 1e999").is_err());
        let message = Threshold::parse("p95 < x").unwrap_err().to_string();
        assert!(message.contains("invalid bound"), "{message}");
    }
}
