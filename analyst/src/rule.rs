//! Rules: which series to watch (`[[analyst.rules]]`), with which detector and parameters,
//! and what a case opened from a finding gets.
//!
//! ```toml
//! [[analyst.rules]]
//! name = "latency"
//! metric = "p95_ms"
//! ```
//!
//! is a complete rule: the p95 latency of every resource, default detector, default
//! parameters. Every key but `name` and one matcher is optional; see [`PARAMETERS`] for the
//! detector's keys and their defaults.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::alarm::AlarmParams;
use crate::components::Direction;
use crate::method::{Ensemble, Method};
use crate::series::Detector;
use crate::span::Span;

/// A configuration error, naming the key (`analyst.rules[0].detector.window`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RuleError {
    pub key: String,
    pub message: String,
}

impl RuleError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Which aggregate of a `metric_1m` row a rule reads (as the verifier's `stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    Avg,
    Max,
    P95,
}

impl Stat {
    pub fn as_str(self) -> &'static str {
        match self {
            Stat::Avg => "avg",
            Stat::Max => "max",
            Stat::P95 => "p95",
        }
    }

    /// The verifier's convention: `p95` for a metric named like `p95_ms` / `p99_latency`,
    /// else `avg`.
    pub fn default_for(metric: &str) -> Self {
        if metric.starts_with("p9") {
            Stat::P95
        } else {
            Stat::Avg
        }
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A case's severity (the orchestrator's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    #[default]
    Medium,
    Low,
    Info,
}

/// A case's automation (the orchestrator's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Automation {
    #[default]
    Manual,
    Auto,
}

/// What a case opened (or joined) by a finding of this rule gets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Route {
    pub automation: Automation,
    /// The planner template (the case's `template` label).
    pub template: Option<String>,
    /// Labels added to the case.
    pub labels: BTreeMap<String, String>,
}

/// The `[analyst]` section: the rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalystConfig {
    pub rules: Vec<Rule>,
}

impl AnalystConfig {
    /// Checks every rule (and that names are unique); `prefix` is the section's key
    /// (`analyst`), so errors read `analyst.rules[2].detector.alpha: ...`.
    pub fn validate(&self, prefix: &str) -> Result<(), RuleError> {
        let mut seen = HashMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let key = format!("{prefix}.rules[{i}]");
            rule.validate(&key)?;
            if let Some(first) = seen.insert(rule.name.as_str(), i) {
                return Err(RuleError::new(
                    format!("{key}.name"),
                    format!(
                        "{:?} is already the name of {prefix}.rules[{first}]",
                        rule.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One rule, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    /// Matchers: exact names or globs with `*`. A rule needs at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Every label here must be on the series with a matching value (globs allowed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Which aggregate to watch; default: `p95` for metrics named `p9*`, else `avg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<Stat>,
    #[serde(default)]
    pub detector: DetectorTable,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub route: Route,
}

/// Labels of a series, as a rule reads them.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for serde_json::Map<String, serde_json::Value> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(serde_json::Value::as_str)
    }
}

impl Labels for serde_json::Value {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(serde_json::Value::as_str)
    }
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

impl Rule {
    /// Whether this rule watches the series (pure: strings in, bool out).
    pub fn matches(
        &self,
        tenant: &str,
        resource: &str,
        metric: &str,
        labels: &impl Labels,
    ) -> bool {
        let field = |pattern: &Option<String>, value: &str| {
            pattern.as_deref().is_none_or(|p| glob_match(p, value))
        };
        field(&self.tenant, tenant)
            && field(&self.resource, resource)
            && field(&self.metric, metric)
            && self
                .labels
                .iter()
                .all(|(k, p)| labels.label(k).is_some_and(|v| glob_match(p, v)))
    }

    /// The aggregate this rule watches for a series of `metric`.
    pub fn stat_for(&self, metric: &str) -> Stat {
        self.stat.unwrap_or_else(|| Stat::default_for(metric))
    }

    /// The detector with every default filled in (errors name `detector.<key>`).
    pub fn detector(&self) -> Result<Detector, RuleError> {
        self.detector.resolve("detector")
    }

    /// Checks the rule; `key` is its place (`analyst.rules[0]`).
    pub fn validate(&self, key: &str) -> Result<(), RuleError> {
        if self.name.trim().is_empty() {
            return Err(RuleError::new(format!("{key}.name"), "a rule needs a name"));
        }
        let matchers = [
            ("tenant", &self.tenant),
            ("resource", &self.resource),
            ("metric", &self.metric),
        ];
        for (field, value) in matchers {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(RuleError::new(
                    format!("{key}.{field}"),
                    "must not be empty (leave it out to match any)",
                ));
            }
        }
        if matchers.iter().all(|(_, v)| v.is_none()) && self.labels.is_empty() {
            return Err(RuleError::new(
                key,
                "a rule needs at least one matcher: tenant, resource, metric or labels",
            ));
        }
        if let Some(template) = &self.route.template {
            if template.trim().is_empty() {
                return Err(RuleError::new(
                    format!("{key}.route.template"),
                    "must not be empty",
                ));
            }
        }
        self.detector
            .resolve(&format!("{key}.detector"))
            .map(|_| ())
    }
}

/// A detector's parameters as written: in a rule's `detector` table, or as `--param
/// KEY=VALUE` of `opscase analyst score`. Every key is optional ([`PARAMETERS`] lists them
/// with their defaults); a key that the chosen `kind` does not use is an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seasons: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collective: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surprise: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_after: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of: Option<u32>,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_after: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_history: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<Span>,
}

/// The detectors, by `kind`.
pub const KINDS: [&str; 5] = ["default", "threshold", "robust_z", "ewma", "seasonal"];

/// One documented parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub key: &'static str,
    /// The kinds that read it (`&[]`: every kind).
    pub kinds: &'static [&'static str],
    /// The default, as written in TOML.
    pub default: &'static str,
    /// A valid value other than the default (for the tests and the docs).
    pub example: &'static str,
    pub doc: &'static str,
}

/// Every parameter a detector table takes, with its default.
pub const PARAMETERS: &[Param] = &[
    Param { key: "kind", kinds: &[], default: "\"default\"", example: "\"robust_z\"",
        doc: "the detector: `default`, `threshold`, `robust_z`, `ewma` or `seasonal`" },
    Param { key: "direction", kinds: &["default", "robust_z", "ewma", "seasonal"], default: "\"both\"", example: "\"above\"",
        doc: "which side of the baseline is anomalous: `above`, `below` or `both`" },
    Param { key: "threshold", kinds: &["robust_z", "ewma", "seasonal"], default: "6.0", example: "4.0",
        doc: "half-width of the band, in (robust) standard deviations" },
    Param { key: "above", kinds: &["threshold"], default: "none", example: "300.0",
        doc: "a value above this is anomalous (`threshold` needs `above`, `below` or both)" },
    Param { key: "below", kinds: &["threshold"], default: "none", example: "1.0",
        doc: "a value below this is anomalous" },
    Param { key: "window", kinds: &["default", "robust_z"], default: "240", example: "\"2h\"",
        doc: "rolling window of the median / MAD, in buckets or a duration" },
    Param { key: "alpha", kinds: &["default", "ewma"], default: "0.05", example: "0.1",
        doc: "EWMA smoothing factor, in (0, 1]" },
    Param { key: "period", kinds: &["seasonal"], default: "\"1d\"", example: "\"1w\"",
        doc: "the season: the same slot one period earlier is the baseline" },
    Param { key: "seasons", kinds: &["default", "seasonal"], default: "3", example: "4",
        doc: "seasons each slot remembers (1 to 16); the baseline is their median over the slot and its neighbours" },
    Param { key: "memory", kinds: &["default"], default: "2000", example: "\"2d\"",
        doc: "how long calibration remembers the series' deviations (at least 100 buckets)" },
    Param { key: "collective", kinds: &["default"], default: "10", example: "20",
        doc: "buckets of the collective channel (median surprise of the last N buckets); 0 turns it off" },
    Param { key: "surprise", kinds: &["default"], default: "3.0", example: "4.0",
        doc: "the default detector's threshold: -log10 of the combined p-value" },
    Param { key: "fire_after", kinds: &[], default: "1", example: "3",
        doc: "N: anomalous buckets among the last `out_of` that fire an alarm" },
    Param { key: "out_of", kinds: &[], default: "fire_after", example: "5",
        doc: "M: the buckets `fire_after` counts over (at most 64)" },
    Param { key: "for", kinds: &[], default: "0", example: "\"5m\"",
        doc: "the N-of-M condition must hold this long before the alarm fires (Prometheus' `for`)" },
    Param { key: "clear_after", kinds: &[], default: "10", example: "\"30m\"",
        doc: "clean buckets in a row that end an alarm (hysteresis)" },
    Param { key: "cooldown", kinds: &[], default: "120", example: "\"6h\"",
        doc: "no new alarm within this span after one fired; also the offline score's suppression window" },
    Param { key: "min_history", kinds: &[], default: "100 (0 for `threshold`)", example: "500",
        doc: "buckets a series needs before any verdict" },
    Param { key: "stale_after", kinds: &[], default: "60", example: "\"1d\"",
        doc: "a gap longer than this drops the pending evidence (0: never)" },
];

fn applies(param: &str, kind: &str) -> bool {
    PARAMETERS
        .iter()
        .find(|p| p.key == param)
        .is_some_and(|p| p.kinds.is_empty() || p.kinds.contains(&kind))
}

/// Defaults of the z-score detectors' bands.
const DEFAULT_THRESHOLD: f64 = 6.0;

impl DetectorTable {
    /// The table's keys that are set.
    fn set_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut add = |set: bool, key: &'static str| {
            if set {
                keys.push(key);
            }
        };
        add(self.kind.is_some(), "kind");
        add(self.direction.is_some(), "direction");
        add(self.threshold.is_some(), "threshold");
        add(self.above.is_some(), "above");
        add(self.below.is_some(), "below");
        add(self.window.is_some(), "window");
        add(self.alpha.is_some(), "alpha");
        add(self.period.is_some(), "period");
        add(self.seasons.is_some(), "seasons");
        add(self.memory.is_some(), "memory");
        add(self.collective.is_some(), "collective");
        add(self.surprise.is_some(), "surprise");
        add(self.fire_after.is_some(), "fire_after");
        add(self.out_of.is_some(), "out_of");
        add(self.for_.is_some(), "for");
        add(self.clear_after.is_some(), "clear_after");
        add(self.cooldown.is_some(), "cooldown");
        add(self.min_history.is_some(), "min_history");
        add(self.stale_after.is_some(), "stale_after");
        keys
    }

    /// Resolves the table into a detector, every default filled in. `key` is the table's
    /// place, e.g. `analyst.rules[0].detector`, and prefixes every error.
    pub fn resolve(&self, key: &str) -> Result<Detector, RuleError> {
        let err = |field: &str, message: String| RuleError::new(format!("{key}.{field}"), message);
        let kind = self.kind.as_deref().unwrap_or("default");
        if !KINDS.contains(&kind) {
            return Err(err(
                "kind",
                format!("unknown detector {kind:?} (one of {})", KINDS.join(", ")),
            ));
        }
        for field in self.set_keys() {
            if !applies(field, kind) {
                let own: Vec<&str> = PARAMETERS
                    .iter()
                    .filter(|p| !p.kinds.is_empty() && p.kinds.contains(&kind))
                    .map(|p| p.key)
                    .collect();
                return Err(err(
                    field,
                    format!(
                        "not a parameter of the {kind} detector (its own: {}; and the alarm's)",
                        own.join(", ")
                    ),
                ));
            }
        }
        let positive = |field: &str, v: Option<f64>, default: f64| -> Result<f64, RuleError> {
            let v = v.unwrap_or(default);
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(err(field, format!("must be a positive number, not {v}")))
            }
        };
        let span_at_least =
            |field: &str, v: Option<Span>, default: Span, min: u32| -> Result<Span, RuleError> {
                let v = v.unwrap_or(default);
                match v {
                    Span::Buckets(n) if n < min => Err(err(
                        field,
                        format!("must be at least {min} buckets, not {n}"),
                    )),
                    Span::Seconds(0) if min > 0 => Err(err(field, "must not be zero".into())),
                    _ => Ok(v),
                }
            };
        let alpha = |v: Option<f64>| -> Result<f64, RuleError> {
            let a = v.unwrap_or(0.05);
            if a > 0.0 && a <= 1.0 {
                Ok(a)
            } else {
                Err(err("alpha", format!("must be in (0, 1], not {a}")))
            }
        };
        let seasons = |v: Option<u32>| -> Result<u32, RuleError> {
            match v.unwrap_or(3) {
                n @ 1..=16 => Ok(n),
                n => Err(err("seasons", format!("must be 1 to 16, not {n}"))),
            }
        };
        let method = match kind {
            "threshold" => {
                if self.above.is_none() && self.below.is_none() {
                    return Err(err(
                        "above",
                        "the threshold detector needs `above`, `below` or both".into(),
                    ));
                }
                for (field, v) in [("above", self.above), ("below", self.below)] {
                    if v.is_some_and(|v| !v.is_finite()) {
                        return Err(err(field, "must be a finite number".into()));
                    }
                }
                if let (Some(a), Some(b)) = (self.above, self.below) {
                    if b >= a {
                        return Err(err(
                            "below",
                            format!("must be below `above` ({a}), not {b}"),
                        ));
                    }
                }
                Method::Threshold {
                    above: self.above,
                    below: self.below,
                }
            }
            "robust_z" => Method::RobustZ {
                window: span_at_least("window", self.window, Span::Buckets(240), 3)?,
                threshold: positive("threshold", self.threshold, DEFAULT_THRESHOLD)?,
            },
            "ewma" => Method::Ewma {
                alpha: alpha(self.alpha)?,
                threshold: positive("threshold", self.threshold, DEFAULT_THRESHOLD)?,
            },
            "seasonal" => Method::Seasonal {
                period: span_at_least("period", self.period, Span::Seconds(86_400), 2)?,
                seasons: seasons(self.seasons)?,
                threshold: positive("threshold", self.threshold, DEFAULT_THRESHOLD)?,
            },
            _ => {
                let d = Ensemble::default();
                let collective = self.collective.unwrap_or(d.collective);
                if collective > 1_000 {
                    return Err(err(
                        "collective",
                        format!("must be at most 1000 buckets, not {collective}"),
                    ));
                }
                Method::Default(Ensemble {
                    window: span_at_least("window", self.window, d.window, 3)?,
                    alpha: alpha(self.alpha)?,
                    seasons: seasons(self.seasons)?,
                    memory: span_at_least("memory", self.memory, d.memory, 100)?,
                    collective,
                    surprise: positive("surprise", self.surprise, d.surprise)?,
                })
            }
        };
        let fire_after = self.fire_after.unwrap_or(1);
        if !(1..=64).contains(&fire_after) {
            return Err(err(
                "fire_after",
                format!("must be 1 to 64, not {fire_after}"),
            ));
        }
        let out_of = self.out_of.unwrap_or(fire_after);
        if out_of < fire_after || out_of > 64 {
            return Err(err(
                "out_of",
                format!("must be from fire_after ({fire_after}) to 64, not {out_of}"),
            ));
        }
        let min_history = self
            .min_history
            .unwrap_or(if kind == "threshold" { 0 } else { 100 });
        if min_history > 1_000_000 {
            return Err(err(
                "min_history",
                format!("must be at most 1000000, not {min_history}"),
            ));
        }
        Ok(Detector {
            method,
            direction: self.direction.unwrap_or_default(),
            alarm: AlarmParams {
                fire_after,
                out_of,
                for_: self.for_.unwrap_or(Span::Buckets(0)),
                clear_after: span_at_least("clear_after", self.clear_after, Span::Buckets(10), 1)?,
                cooldown: self.cooldown.unwrap_or(Span::Buckets(120)),
            },
            min_history,
            stale_after: self.stale_after.unwrap_or(Span::Buckets(60)),
        })
    }
}

impl Detector {
    /// The default detector with its default parameters.
    pub fn default_detector() -> Detector {
        DetectorTable::default()
            .resolve("detector")
            .expect("the defaults are valid")
    }

    /// This detector as a table with every key set (what a finding records).
    pub fn table(&self) -> DetectorTable {
        let mut t = DetectorTable {
            kind: Some(self.method.kind().to_string()),
            fire_after: Some(self.alarm.fire_after),
            out_of: Some(self.alarm.out_of),
            for_: Some(self.alarm.for_),
            clear_after: Some(self.alarm.clear_after),
            cooldown: Some(self.alarm.cooldown),
            min_history: Some(self.min_history),
            stale_after: Some(self.stale_after),
            ..DetectorTable::default()
        };
        match &self.method {
            Method::Default(e) => {
                t.direction = Some(self.direction);
                t.window = Some(e.window);
                t.alpha = Some(e.alpha);
                t.seasons = Some(e.seasons);
                t.memory = Some(e.memory);
                t.collective = Some(e.collective);
                t.surprise = Some(e.surprise);
            }
            Method::Threshold { above, below } => {
                t.above = *above;
                t.below = *below;
            }
            Method::RobustZ { window, threshold } => {
                t.direction = Some(self.direction);
                t.window = Some(*window);
                t.threshold = Some(*threshold);
            }
            Method::Ewma { alpha, threshold } => {
                t.direction = Some(self.direction);
                t.alpha = Some(*alpha);
                t.threshold = Some(*threshold);
            }
            Method::Seasonal {
                period,
                seasons,
                threshold,
            } => {
                t.direction = Some(self.direction);
                t.period = Some(*period);
                t.seasons = Some(*seasons);
                t.threshold = Some(*threshold);
            }
        }
        t
    }
}
