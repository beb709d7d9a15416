//! The canary loop: every check measured `count` times, `interval_s` apart, verdicts combined.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use workflow::messages::{topic, VerifyCommand, VerifyEvent};

use crate::source::{Check, Measurement, MetricSource};
use crate::threshold::Threshold;

/// The verdict of one check or of a whole verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not enough to decide: published as failed (fails closed).
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// Fail if any fails, else inconclusive if any is, else pass (also for none: the caller
    /// decides what no checks means).
    pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut combined = Verdict::Pass;
        for verdict in verdicts {
            match verdict {
                Verdict::Fail => return Verdict::Fail,
                Verdict::Inconclusive => combined = Verdict::Inconclusive,
                Verdict::Pass => {}
            }
        }
        combined
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check with the numbers it saw (an element of `VerifyEvent::checks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub name: String,
    pub source: String,
    pub query: String,
    /// As written in the plan.
    pub threshold: String,
    pub verdict: Verdict,
    pub measurements: Vec<Measurement>,
    pub reason: String,
}

/// The parameters of the canary loop, from the plan's `verify` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// `window_s`, default 300 (60..=86400).
    pub window: Duration,
    /// `interval_s`, default 60 (10..=3600).
    pub interval: Duration,
    /// `count`, default 1 (1..=100).
    pub count: u32,
    /// `failure_limit`, default 0 (0..=100, and below `count`).
    pub failure_limit: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            interval: Duration::from_secs(60),
            count: 1,
            failure_limit: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
struct VerifySpec {
    #[serde(default)]
    checks: Option<Vec<Value>>,
    window_s: Option<u64>,
    interval_s: Option<u64>,
    count: Option<u32>,
    failure_limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct CheckSpec {
    #[serde(default)]
    name: Option<String>,
    source: String,
    query: String,
    threshold: String,
}

fn in_range<T: PartialOrd + Copy + fmt::Display>(
    field: &str,
    value: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, String> {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        return Err(format!("{field} {value} is outside {min}..={max}"));
    }
    Ok(value)
}

/// Parse a `verify` section: its schedule and its checks (each as a JSON value).
pub fn parse_verify(verify: &Value) -> Result<(Schedule, Vec<Value>), String> {
    if verify.is_null() {
        return Err("the plan has no verify section".into());
    }
    let spec: VerifySpec = serde_json::from_value(verify.clone()).map_err(|e| e.to_string())?;
    let schedule = Schedule {
        window: Duration::from_secs(in_range("window_s", spec.window_s, 300, 60, 86_400)?),
        interval: Duration::from_secs(in_range("interval_s", spec.interval_s, 60, 10, 3_600)?),
        count: in_range("count", spec.count, 1, 1, 100)?,
        failure_limit: in_range("failure_limit", spec.failure_limit, 0, 0, 100)?,
    };
    if schedule.failure_limit >= schedule.count {
        return Err(format!(
            "failure_limit {} is not below count {}: such a check could never fail",
            schedule.failure_limit, schedule.count
        ));
    }
    let checks = spec.checks.unwrap_or_default();
    if checks.is_empty() {
        return Err("no checks: a verification that checks nothing cannot pass".into());
    }
    Ok((schedule, checks))
}

fn str_field(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Parse check `index` (0-based) of a `verify` section; on error, the report of the invalid
/// check (inconclusive).
fn parse_check(index: usize, value: &Value) -> Result<Check, Box<CheckReport>> {
    let default_name = format!("check-{}", index + 1);
    let invalid = |reason: String| {
        Box::new(CheckReport {
            name: value
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| default_name.clone(), str::to_string),
            source: str_field(value, "source"),
            query: str_field(value, "query"),
            threshold: str_field(value, "threshold"),
            verdict: Verdict::Inconclusive,
            measurements: Vec::new(),
            reason,
        })
    };
    let spec: CheckSpec = serde_json::from_value(value.clone())
        .map_err(|e| invalid(format!("invalid check: {e}")))?;
    let threshold = Threshold::parse(&spec.threshold)
        .map_err(|e| invalid(format!("invalid threshold: {e}")))?;
    if spec.query.trim().is_empty() {
        return Err(invalid("invalid check: the query is empty".into()));
    }
    Ok(Check {
        name: spec
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(default_name),
        source: spec.source,
        query: spec.query,
        threshold,
    })
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyOutcome {
    pub verdict: Verdict,
    pub reason: String,
    pub checks: Vec<CheckReport>,
    /// How long the run took (for `verify_latency_seconds`).
    pub latency: Duration,
    /// The checks' source (`metric_1m`, `prometheus`), `mixed` when they differ, `none` when
    /// there were no checks: the `source` label of `verify_latency_seconds`.
    pub source: String,
}

impl VerifyOutcome {
    pub fn latency_seconds(&self) -> f64 {
        self.latency.as_secs_f64()
    }

    /// `evt.verify.pass.v1` for a pass, `evt.verify.failed.v1` otherwise (inconclusive fails
    /// closed).
    pub fn topic(&self) -> &'static str {
        match self.verdict {
            Verdict::Pass => topic::VERIFY_PASS,
            Verdict::Fail | Verdict::Inconclusive => topic::VERIFY_FAILED,
        }
    }

    /// The event's data.
    pub fn event(&self, plan_id: &str) -> VerifyEvent {
        VerifyEvent {
            actor: crate::ROLE.into(),
            plan_id: plan_id.into(),
            verdict: self.verdict.as_str().into(),
            reason: self.reason.clone(),
            checks: self
                .checks
                .iter()
                .map(|c| serde_json::to_value(c).expect("a check report serializes"))
                .collect(),
            source: self.source.clone(),
            duration_ms: u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Where "now" comes from (measurement instants); the waits between measurements use
/// `tokio::time`, so tests can pause and advance time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Runs verifications against the configured sources.
#[derive(Clone)]
pub struct Verifier {
    sources: BTreeMap<String, Arc<dyn MetricSource>>,
    clock: Arc<dyn Clock>,
    measure_timeout: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("measure_timeout", &self.measure_timeout)
            .finish()
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

/// State of one check during the loop.
struct Running {
    check: Option<Check>,
    report: CheckReport,
    failures: u32,
    inconclusive: u32,
    done: bool,
}

impl Verifier {
    /// With the given sources, by the name checks use (`metric_1m`, `prometheus`); a check
    /// naming another source is inconclusive.
    pub fn new(sources: Vec<(String, Arc<dyn MetricSource>)>) -> Self {
        Self {
            sources: sources.into_iter().collect(),
            clock: Arc::new(SystemClock),
            measure_timeout: Duration::from_secs(60),
        }
    }

    /// Add (or replace) a source.
    pub fn with_source(mut self, name: impl Into<String>, source: Arc<dyn MetricSource>) -> Self {
        self.sources.insert(name.into(), source);
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The longest one measurement may take before it is inconclusive (default 60 s).
    pub fn with_measure_timeout(mut self, timeout: Duration) -> Self {
        self.measure_timeout = timeout;
        self
    }

    /// The configured source names.
    pub fn source_names(&self) -> Vec<&str> {
        self.sources.keys().map(String::as_str).collect()
    }

    /// Run the verification of `command`: never fails, a problem is an inconclusive verdict.
    pub async fn run(&self, command: &VerifyCommand) -> VerifyOutcome {
        let started = tokio::time::Instant::now();
        let (verdict, reason, checks) = self.verify(&command.case.tenant, &command.verify).await;
        let mut sources: Vec<&str> = checks.iter().map(|c| c.source.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        let source = match sources.as_slice() {
            [] => "none".to_string(),
            [one] if !one.is_empty() => one.to_string(),
            [_] => "none".to_string(),
            _ => "mixed".to_string(),
        };
        VerifyOutcome {
            verdict,
            reason,
            checks,
            latency: started.elapsed(),
            source,
        }
    }

    async fn verify(&self, tenant: &str, verify: &Value) -> (Verdict, String, Vec<CheckReport>) {
        let (schedule, specs) = match parse_verify(verify) {
            Ok(parsed) => parsed,
            Err(error) => {
                return (
                    Verdict::Inconclusive,
                    format!("invalid verify section: {error}"),
                    Vec::new(),
                )
            }
        };
        let mut running: Vec<Running> = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| match parse_check(index, spec) {
                Ok(check) => {
                    let report = CheckReport {
                        name: check.name.clone(),
                        source: check.source.clone(),
                        query: check.query.clone(),
                        threshold: str_field(spec, "threshold"),
                        verdict: Verdict::Inconclusive,
                        measurements: Vec::new(),
                        reason: String::new(),
                    };
                    let configured = self.sources.contains_key(&check.source);
                    let mut state = Running {
                        check: Some(check),
                        report,
                        failures: 0,
                        inconclusive: 0,
                        done: false,
                    };
                    if !configured {
                        state.report.reason = format!(
                            "source {:?} is not configured (configured: {})",
                            state.report.source,
                            if self.sources.is_empty() {
                                "none".to_string()
                            } else {
                                self.source_names().join(", ")
                            }
                        );
                        state.done = true;
                    }
                    state
                }
                Err(report) => Running {
                    check: None,
                    report: *report,
                    failures: 0,
                    inconclusive: 0,
                    done: true,
                },
            })
            .collect();

        let mut stopped_by: Option<String> = None;
        for round in 0..schedule.count {
            if running.iter().all(|r| r.done) {
                break;
            }
            if round > 0 {
                tokio::time::sleep(schedule.interval).await;
            }
            let at = self.clock.now();
            let active: Vec<usize> = (0..running.len()).filter(|&i| !running[i].done).collect();
            let measurements = futures::future::join_all(active.iter().map(|&i| {
                let check = running[i]
                    .check
                    .as_ref()
                    .expect("a running check is parsed");
                self.measure(tenant, check, schedule.window, at)
            }))
            .await;
            for (i, measurement) in active.into_iter().zip(measurements) {
                let state = &mut running[i];
                match measurement.passed {
                    Some(true) => {}
                    Some(false) => state.failures += 1,
                    None => state.inconclusive += 1,
                }
                state.report.measurements.push(measurement);
                if state.failures > schedule.failure_limit {
                    state.done = true;
                    state.report.verdict = Verdict::Fail;
                    let last = state
                        .report
                        .measurements
                        .iter()
                        .rev()
                        .find(|m| m.passed == Some(false))
                        .map(|m| m.note.clone())
                        .unwrap_or_default();
                    state.report.reason = format!(
                        "{} failed measurement(s) of {} exceed the failure limit {} (last: {last})",
                        state.failures,
                        state.report.measurements.len(),
                        schedule.failure_limit
                    );
                    stopped_by.get_or_insert_with(|| state.report.name.clone());
                }
            }
            if stopped_by.is_some() {
                break;
            }
        }

        for state in running.iter_mut().filter(|r| r.check.is_some()) {
            if state.report.verdict == Verdict::Fail || !state.report.reason.is_empty() {
                continue;
            }
            let taken = state.report.measurements.len() as u32;
            let passed = taken - state.failures - state.inconclusive;
            if state.inconclusive > 0 {
                let last = state
                    .report
                    .measurements
                    .iter()
                    .rev()
                    .find(|m| m.passed.is_none())
                    .map(|m| m.note.clone())
                    .unwrap_or_default();
                state.report.verdict = Verdict::Inconclusive;
                state.report.reason = format!(
                    "{} of {taken} measurement(s) inconclusive (last: {last})",
                    state.inconclusive
                );
            } else if taken < schedule.count {
                state.report.verdict = Verdict::Inconclusive;
                state.report.reason = format!(
                    "stopped after {taken} of {} measurement(s): check {:?} failed",
                    schedule.count,
                    stopped_by.as_deref().unwrap_or("?")
                );
            } else {
                state.report.verdict = Verdict::Pass;
                state.report.reason = format!(
                    "{passed} of {taken} measurement(s) passed ({} failed, failure limit {})",
                    state.failures, schedule.failure_limit
                );
            }
        }

        let checks: Vec<CheckReport> = running.into_iter().map(|r| r.report).collect();
        let verdict = Verdict::combine(checks.iter().map(|c| c.verdict));
        let reason = match verdict {
            Verdict::Pass => format!("all {} check(s) passed", checks.len()),
            Verdict::Fail | Verdict::Inconclusive => {
                let summary = checks
                    .iter()
                    .filter(|c| c.verdict == verdict)
                    .map(|c| format!("check {:?}: {}", c.name, c.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                if verdict == Verdict::Fail {
                    format!("failed: {summary}")
                } else {
                    format!("inconclusive (fails closed): {summary}")
                }
            }
        };
        (verdict, reason, checks)
    }

    /// One measurement of `check`, judged against its threshold.
    async fn measure(
        &self,
        tenant: &str,
        check: &Check,
        window: Duration,
        at: DateTime<Utc>,
    ) -> Measurement {
        let Some(source) = self.sources.get(&check.source) else {
            return Measurement::inconclusive(
                at,
                format!("source {:?} is not configured", check.source),
            );
        };
        let measured = tokio::time::timeout(
            self.measure_timeout,
            source.measure(tenant, check, window, at),
        )
        .await;
        match measured {
            Ok(measurement) => measurement.judged(&check.threshold),
            Err(_) => Measurement::inconclusive(
                at,
                format!(
                    "the {} measurement took longer than {:?}",
                    check.source, self.measure_timeout
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verdicts_combine_fail_over_inconclusive_over_pass() {
        use Verdict::*;
        assert_eq!(Verdict::combine([Pass, Pass]), Pass);
        assert_eq!(Verdict::combine([Pass, Inconclusive, Pass]), Inconclusive);
        assert_eq!(Verdict::combine([Inconclusive, Fail, Pass]), Fail);
        assert_eq!(Verdict::combine([Pass, Fail]), Fail);
        assert_eq!(Verdict::combine([]), Pass);
    }

    #[test]
    fn verify_sections_parse_with_defaults_and_ranges() {
        let check =
            json!({"source": "metric_1m", "query": "resource=a", "threshold": "p95_ms < 3"});
        let (schedule, checks) = parse_verify(&json!({"checks": [check]})).unwrap();
        assert_eq!(schedule, Schedule::default());
        assert_eq!(checks.len(), 1);
        let (schedule, _) = parse_verify(&json!({
            "checks": [check], "window_s": 60, "interval_s": 10, "count": 3, "failure_limit": 1
        }))
        .unwrap();
        assert_eq!(
            schedule,
            Schedule {
                window: Duration::from_secs(60),
                interval: Duration::from_secs(10),
                count: 3,
                failure_limit: 1
            }
        );
        for (bad, needle) in [
            (json!(null), "no verify"),
            (json!({"checks": []}), "no checks"),
            (json!({}), "no checks"),
            (json!({"checks": [check], "window_s": 59}), "window_s 59"),
            (json!({"checks": [check], "interval_s": 3601}), "interval_s"),
            (json!({"checks": [check], "count": 0}), "count 0"),
            (
                json!({"checks": [check], "count": 2, "failure_limit": 2}),
                "never fail",
            ),
            (json!({"checks": [check], "count": -1}), "invalid value"),
            (json!("x"), "invalid type"),
        ] {
            let error = parse_verify(&bad).unwrap_err();
            assert!(error.contains(needle), "{bad}: {error}");
        }
    }

    #[test]
    fn checks_parse_or_report_why_not() {
        let check = parse_check(
            1,
            &json!({"source": "prometheus", "query": "up", "threshold": "up >= 1"}),
        )
        .unwrap();
        assert_eq!(check.name, "check-2");
        let named = parse_check(
            0,
            &json!({"name": "latency", "source": "metric_1m", "query": "resource=a", "threshold": "p95_ms<3"}),
        )
        .unwrap();
        assert_eq!(named.name, "latency");
        let bad = parse_check(
            0,
            &json!({"name": "x", "source": "metric_1m", "query": "resource=a", "threshold": "p95 is fine"}),
        )
        .unwrap_err();
        assert_eq!(bad.verdict, Verdict::Inconclusive);
        assert_eq!(bad.threshold, "p95 is fine");
        assert!(
            bad.reason.starts_with("invalid threshold"),
            "{}",
            bad.reason
        );
        let missing = parse_check(0, &json!({"source": "metric_1m"})).unwrap_err();
        assert!(
            missing.reason.contains("missing field"),
            "{}",
            missing.reason
        );
    }
}
