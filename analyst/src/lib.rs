//! The Analyst. Its detection half is pure code (no async, no I/O): streaming, unsupervised
//! detectors over metric series, the alarm logic against flapping, the rules that say which
//! series to watch, the findings an alarm produces, and the offline scorer of
//! `opscase analyst score`.
//!
//! The live path keeps one [`SeriesState`] per (rule, series), feeds it each new bucket and
//! raises a finding when the alarm fires:
//!
//! ```
//! use analyst::{AnalystConfig, SeriesKey, SeriesState, Stat};
//! use chrono::{TimeZone, Utc};
//!
//! let config: AnalystConfig = toml::from_str(r#"
//!     [[rules]]
//!     name = "latency"
//!     metric = "p95_ms"
//! "#).unwrap();
//! config.validate("analyst").unwrap();
//! let rule = &config.rules[0];
//! let detector = rule.detector().unwrap();
//! let labels = serde_json::json!({});
//! assert!(rule.matches("t-001", "checkout", "p95_ms", &labels));
//! let series = SeriesKey {
//!     tenant: "t-001".into(), resource: "checkout".into(), metric: "p95_ms".into(),
//!     stat: rule.stat_for("p95_ms"),
//! };
//! assert_eq!(series.stat, Stat::P95);
//! let mut state = SeriesState::new(&detector);
//! for minute in 0..600 {
//!     let at = Utc.timestamp_opt(1_700_000_000 + 60 * minute, 0).unwrap();
//!     let value = if minute == 500 { 900.0 } else { 120.0 + (minute % 7) as f64 };
//!     let evaluation = state.observe(&detector, at, value);
//!     if let Some(finding) = evaluation.finding(&rule.name, &detector, &series) {
//!         assert_eq!(finding.observed, 900.0);
//!     }
//! }
//! // The state survives a restart as JSON (or any serde format).
//! let saved = serde_json::to_string(&state).unwrap();
//! let _restored: SeriesState = serde_json::from_str(&saved).unwrap();
//! ```

pub mod alarm;
pub mod analysis;
pub mod calibrate;
pub mod components;
pub mod finding;
pub mod live;
pub mod meters;
pub mod method;
pub mod offline;
pub mod rule;
pub mod series;
pub mod span;
pub mod stats;
pub mod store;
pub mod summary;
pub mod worker;

pub use alarm::{AlarmParams, Transition};
pub use components::Direction;
pub use finding::{Band, Finding, SeriesKey, Window, FINDING_KIND};
pub use method::{Ensemble, Method, Reading};
pub use offline::{detector_from_args, score_csv, OfflineError, OfflineScorer};
pub use rule::{
    AnalystConfig, Automation, DetectorTable, Labels, Param, Route, Rule, RuleError, Severity,
    Stat, KINDS, PARAMETERS,
};
pub use series::{Detector, Evaluation, SeriesState};
pub use span::Span;
