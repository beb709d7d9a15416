//! The analysis of a case (pure): what deviates around its service in the last minutes. Given
//! the service's `metric_1m` series, its calls to other services (`service_call_5m`) and the
//! recent deploy and configuration changes, it reports
//!
//! * each metric of the service whose recent buckets left their baseline (a robust z-score
//!   against the median and MAD of the day before the window, in at least a few buckets, and by
//!   a relative margin, so that a quiet series' jitter is not news);
//! * the downstream dependencies ranked by p95 and error rate over the window (the seed's
//!   query), each one that degraded against its own baseline being a finding;
//! * each recent change of the service or of one of its dependencies.
//!
//! Nothing is inferred beyond what the numbers show: a case with nothing found says so.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

/// How an analysis looks. Every field has a documented default (`[analyst.analysis]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisSettings {
    /// The recent window examined (default 30 minutes).
    pub window: Duration,
    /// The history before the window a metric or a dependency is compared with (default 1 day).
    pub baseline: Duration,
    /// How far back changes are looked for (default 2 hours).
    pub change_lookback: Duration,
    /// Buckets of history a metric needs before it is judged (default 60).
    pub min_history: usize,
    /// Robust z-score a bucket must pass to count as deviating (default 4).
    pub threshold: f64,
    /// Relative distance from the baseline's median a deviating bucket must also have
    /// (default 0.2: 20%), unless the median is 0.
    pub min_change: f64,
    /// Deviating buckets, in one direction, that make a finding (default 3).
    pub min_buckets: usize,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30 * 60),
            baseline: Duration::from_secs(24 * 3600),
            change_lookback: Duration::from_secs(2 * 3600),
            min_history: 60,
            threshold: 4.0,
            min_change: 0.2,
            min_buckets: 3,
        }
    }
}

/// The labels that name a case's service, in order of preference.
pub const SERVICE_LABELS: [&str; 5] = ["service", "resource", "app", "deployment", "job"];

/// The service a case is about, from its labels.
pub fn service_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    SERVICE_LABELS
        .iter()
        .filter_map(|name| labels.get(*name))
        .map(|value| value.trim())
        .find(|value| !value.is_empty())
}

/// One metric of the service: its buckets (oldest first) over the baseline and the window.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSeries {
    pub metric: String,
    /// `avg`, `max` or `p95`: which aggregate of the minute the values are.
    pub stat: String,
    pub points: Vec<(DateTime<Utc>, f64)>,
}

/// Calls from the service to `dst` over five minutes.
#[derive(Debug, Clone, PartialEq)]
pub struct CallBucket {
    pub bucket: DateTime<Utc>,
    pub dst: String,
    pub rps: Option<f64>,
    pub err_rate: Option<f64>,
    pub p95_ms: Option<f64>,
}

/// A deploy or configuration change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Its envelope's id.
    pub id: String,
    /// `deploy` or `config`.
    pub kind: String,
    pub service: String,
    pub summary: String,
    pub at: DateTime<Utc>,
}

/// What the analysis is given.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub tenant: &'a str,
    pub service: &'a str,
    pub now: DateTime<Utc>,
    pub metrics: &'a [MetricSeries],
    pub calls: &'a [CallBucket],
    pub changes: &'a [Change],
}

/// One thing found, with the rows that show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseFinding {
    /// `metric_deviation`, `dependency_degraded` or `recent_change`.
    pub kind: String,
    pub title: String,
    /// In [0, 1]: how strongly the numbers say it (findings are sorted by it).
    pub score: f64,
    pub detail: Value,
    /// Each `{"kind", "title", "ref": {"table", "keys"}}`.
    pub evidence: Vec<Value>,
}

/// A dependency's numbers over the window, as the seed's query ranks them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DependencyRank {
    pub dst: String,
    pub p95_ms: Option<f64>,
    pub err_rate: Option<f64>,
    pub rps: Option<f64>,
    pub baseline_p95_ms: Option<f64>,
    pub baseline_err_rate: Option<f64>,
    pub degraded: bool,
}

/// The analysis of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Strongest first.
    pub findings: Vec<CaseFinding>,
    /// The top dependencies by p95, then error rate (at most [`TOP_DEPENDENCIES`]).
    pub dependencies: Vec<DependencyRank>,
    /// One line: what was found, or what was looked at and found normal.
    pub reason: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Dependencies reported (the seed's `LIMIT 5`).
pub const TOP_DEPENDENCIES: usize = 5;
/// Changes reported at most.
const MAX_CHANGES: usize = 10;
/// MAD to standard deviation, for normally distributed data.
const MAD_SCALE: f64 = 1.4826;

/// Analyse the service of one case.
pub fn analyse(inputs: &Inputs<'_>, settings: &AnalysisSettings) -> Report {
    let to = inputs.now;
    let from = to - chrono_duration(settings.window);
    let baseline_from = from - chrono_duration(settings.baseline);
    let mut findings = Vec::new();

    let mut judged = 0;
    let mut unjudged = 0;
    let mut onsets = Vec::new();
    for series in inputs.metrics {
        match deviation(series, from, to, settings) {
            Judged::Deviates(deviation) => {
                judged += 1;
                onsets.push(deviation.onset);
                findings.push(deviation.finding(inputs, series, baseline_from, to));
            }
            Judged::Normal => judged += 1,
            Judged::Unjudged => unjudged += 1,
        }
    }

    let dependencies = rank_dependencies(inputs.calls, from, to, baseline_from);
    for (rank, dependency) in dependencies.iter().enumerate() {
        if dependency.degraded {
            findings.push(dependency_finding(
                inputs,
                dependency,
                rank,
                baseline_from,
                to,
            ));
        }
    }

    let onset = onsets.iter().min().copied();
    let neighbours: Vec<&str> = dependencies.iter().map(|d| d.dst.as_str()).collect();
    let mut changes: Vec<&Change> = inputs
        .changes
        .iter()
        .filter(|c| c.at <= to && to - c.at <= chrono_duration(settings.change_lookback))
        .filter(|c| c.service == inputs.service || neighbours.contains(&c.service.as_str()))
        .collect();
    changes.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.id.cmp(&b.id)));
    for change in changes.iter().take(MAX_CHANGES) {
        findings.push(change_finding(inputs, change, onset));
    }

    findings.sort_by(|a, b| b.score.total_cmp(&a.score));
    let reason = reason(
        inputs.service,
        settings,
        &findings,
        judged,
        unjudged,
        dependencies.len(),
    );
    Report {
        findings,
        dependencies,
        reason,
        from,
        to,
    }
}

enum Judged {
    Deviates(Deviation),
    Normal,
    /// No bucket in the window, or too little history to say.
    Unjudged,
}

struct Deviation {
    direction: &'static str,
    baseline: f64,
    scale: f64,
    observed: f64,
    peak: f64,
    peak_z: f64,
    deviating: usize,
    buckets: usize,
    onset: DateTime<Utc>,
    history: usize,
}

fn deviation(
    series: &MetricSeries,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    settings: &AnalysisSettings,
) -> Judged {
    let history: Vec<f64> = series
        .points
        .iter()
        .filter(|(at, _)| *at < from)
        .map(|(_, v)| *v)
        .collect();
    let window: Vec<(DateTime<Utc>, f64)> = series
        .points
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .copied()
        .collect();
    if window.is_empty() || history.len() < settings.min_history {
        return Judged::Unjudged;
    }
    let baseline = median(&history);
    let deviations: Vec<f64> = history.iter().map(|v| (v - baseline).abs()).collect();
    // A constant history has no spread: a twentieth of its level stands in, so that any real
    // move shows and a flat zero is still compared with something.
    let scale = (median(&deviations) * MAD_SCALE)
        .max(baseline.abs() * 0.05)
        .max(1e-9);
    let leaves = |value: f64, sign: f64| {
        let z = (value - baseline) / scale;
        let relative_ok =
            baseline == 0.0 || (value - baseline) * sign / baseline.abs() >= settings.min_change;
        z * sign > settings.threshold && relative_ok
    };
    for (sign, direction) in [(1.0, "above"), (-1.0, "below")] {
        let deviating: Vec<&(DateTime<Utc>, f64)> =
            window.iter().filter(|(_, v)| leaves(*v, sign)).collect();
        if deviating.len() < settings.min_buckets {
            continue;
        }
        let values: Vec<f64> = deviating.iter().map(|(_, v)| *v).collect();
        let peak = values
            .iter()
            .copied()
            .max_by(|a, b| ((a - baseline) * sign).total_cmp(&((b - baseline) * sign)))
            .unwrap_or(baseline);
        return Judged::Deviates(Deviation {
            direction,
            baseline,
            scale,
            observed: median(&values),
            peak,
            peak_z: (peak - baseline) / scale,
            deviating: deviating.len(),
            buckets: window.len(),
            onset: deviating[0].0,
            history: history.len(),
        });
    }
    Judged::Normal
}

impl Deviation {
    fn finding(
        &self,
        inputs: &Inputs<'_>,
        series: &MetricSeries,
        baseline_from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> CaseFinding {
        CaseFinding {
            kind: "metric_deviation".into(),
            title: format!(
                "{} {} of {} {} its baseline: {} (baseline {}) in {} of {} buckets since {}",
                series.metric,
                series.stat,
                inputs.service,
                self.direction,
                number(self.observed),
                number(self.baseline),
                self.deviating,
                self.buckets,
                self.onset.format("%H:%M"),
            ),
            score: strength(self.peak_z.abs()),
            detail: json!({
                "service": inputs.service,
                "metric": series.metric,
                "stat": series.stat,
                "direction": self.direction,
                "observed": self.observed,
                "peak": self.peak,
                "baseline": self.baseline,
                "spread": self.scale,
                "z": self.peak_z,
                "deviating_buckets": self.deviating,
                "window_buckets": self.buckets,
                "history_buckets": self.history,
                "onset": self.onset,
            }),
            evidence: vec![json!({
                "kind": "metric",
                "title": format!("{} {} of {}, baseline and window", series.metric, series.stat,
                                 inputs.service),
                "ref": {"table": "metric_1m", "keys": {
                    "tenant": inputs.tenant, "resource": inputs.service, "metric": series.metric,
                    "from": baseline_from, "to": to,
                }},
            })],
        }
    }
}

/// A z-score (or a ratio's logarithm) as a score in (0, 1): 4 → 0.5, 12 → 0.75.
fn strength(z: f64) -> f64 {
    let z = z.max(0.0);
    z / (z + 4.0)
}

fn rank_dependencies(
    calls: &[CallBucket],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    baseline_from: DateTime<Utc>,
) -> Vec<DependencyRank> {
    let mut by_dst: BTreeMap<&str, (Vec<&CallBucket>, Vec<&CallBucket>)> = BTreeMap::new();
    for call in calls {
        let entry = by_dst.entry(call.dst.as_str()).or_default();
        if call.bucket >= from && call.bucket <= to {
            entry.1.push(call);
        } else if call.bucket >= baseline_from && call.bucket < from {
            entry.0.push(call);
        }
    }
    let mut ranked: Vec<DependencyRank> = by_dst
        .into_iter()
        .filter(|(_, (_, window))| !window.is_empty())
        .map(|(dst, (history, window))| {
            let p95_ms = mean(window.iter().filter_map(|c| c.p95_ms));
            let err_rate = mean(window.iter().filter_map(|c| c.err_rate));
            let baseline_p95_ms = typical(history.iter().filter_map(|c| c.p95_ms));
            let baseline_err_rate = typical(history.iter().filter_map(|c| c.err_rate));
            DependencyRank {
                dst: dst.to_string(),
                p95_ms,
                err_rate,
                rps: mean(window.iter().filter_map(|c| c.rps)),
                baseline_p95_ms,
                baseline_err_rate,
                degraded: slower(p95_ms, baseline_p95_ms)
                    || failing_more(err_rate, baseline_err_rate),
            }
        })
        .collect();
    // The seed's order: p95 descending, then error rate descending.
    ranked.sort_by(|a, b| {
        b.p95_ms
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.p95_ms.unwrap_or(f64::NEG_INFINITY))
            .then_with(|| {
                b.err_rate
                    .unwrap_or(f64::NEG_INFINITY)
                    .total_cmp(&a.err_rate.unwrap_or(f64::NEG_INFINITY))
            })
            .then_with(|| a.dst.cmp(&b.dst))
    });
    ranked.truncate(TOP_DEPENDENCIES);
    ranked
}

/// Half again as slow as usual, and by at least 20 ms.
fn slower(now: Option<f64>, usual: Option<f64>) -> bool {
    match (now, usual) {
        (Some(now), Some(usual)) => now > usual * 1.5 && now - usual >= 20.0,
        _ => false,
    }
}

/// Failing at least 1% of calls, and twice (and a point) as often as usual; 5% without a
/// baseline.
fn failing_more(now: Option<f64>, usual: Option<f64>) -> bool {
    match (now, usual) {
        (Some(now), Some(usual)) => now >= 0.01 && now >= (usual * 2.0).max(usual + 0.01),
        (Some(now), None) => now >= 0.05,
        _ => false,
    }
}

fn dependency_finding(
    inputs: &Inputs<'_>,
    dependency: &DependencyRank,
    rank: usize,
    baseline_from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> CaseFinding {
    let mut parts = Vec::new();
    if slower(dependency.p95_ms, dependency.baseline_p95_ms) {
        parts.push(format!(
            "p95 {} ms (baseline {} ms)",
            number(dependency.p95_ms.unwrap_or_default()),
            number(dependency.baseline_p95_ms.unwrap_or_default())
        ));
    }
    if failing_more(dependency.err_rate, dependency.baseline_err_rate) {
        parts.push(match dependency.baseline_err_rate {
            Some(usual) => format!(
                "errors {} (baseline {})",
                percent(dependency.err_rate.unwrap_or_default()),
                percent(usual)
            ),
            None => format!(
                "errors {} (no baseline)",
                percent(dependency.err_rate.unwrap_or_default())
            ),
        });
    }
    let ratio = |now: Option<f64>, usual: Option<f64>, floor: f64| match (now, usual) {
        (Some(now), Some(usual)) => now / usual.max(floor),
        (Some(now), None) => now / floor,
        _ => 1.0,
    };
    let worst = ratio(dependency.p95_ms, dependency.baseline_p95_ms, 1.0).max(ratio(
        dependency.err_rate,
        dependency.baseline_err_rate,
        0.005,
    ));
    CaseFinding {
        kind: "dependency_degraded".into(),
        title: format!(
            "dependency {} of {} degraded: {}",
            dependency.dst,
            inputs.service,
            parts.join(", ")
        ),
        score: strength(4.0 * worst.max(1.0).log2()),
        detail: json!({
            "service": inputs.service,
            "dst": dependency.dst,
            "rank": rank + 1,
            "p95_ms": dependency.p95_ms,
            "err_rate": dependency.err_rate,
            "rps": dependency.rps,
            "baseline_p95_ms": dependency.baseline_p95_ms,
            "baseline_err_rate": dependency.baseline_err_rate,
        }),
        evidence: vec![json!({
            "kind": "metric",
            "title": format!("calls {} → {}, baseline and window", inputs.service, dependency.dst),
            "ref": {"table": "service_call_5m", "keys": {
                "tenant": inputs.tenant, "src": inputs.service, "dst": dependency.dst,
                "from": baseline_from, "to": to,
            }},
        })],
    }
}

fn change_finding(
    inputs: &Inputs<'_>,
    change: &Change,
    onset: Option<DateTime<Utc>>,
) -> CaseFinding {
    let own = change.service == inputs.service;
    let minutes_before = (inputs.now - change.at).num_minutes();
    // A change shortly before the first deviation is worth a look first.
    let before_onset = onset.is_some_and(|onset| {
        change.at <= onset && onset - change.at <= chrono::Duration::minutes(30)
    });
    let score = if own { 0.6 } else { 0.4 } + if before_onset { 0.2 } else { 0.0 };
    CaseFinding {
        kind: "recent_change".into(),
        title: format!(
            "{} of {}{} {} min ago: {}",
            change.kind,
            change.service,
            if own { "" } else { " (a dependency)" },
            minutes_before,
            change.summary
        ),
        score,
        detail: json!({
            "service": change.service,
            "change": change.kind,
            "at": change.at,
            "summary": change.summary,
            "dependency": !own,
            "before_onset": before_onset,
        }),
        evidence: vec![json!({
            "kind": "change",
            "title": change.summary,
            "ref": {"table": "event_envelope", "keys": {"id": change.id}},
        })],
    }
}

fn reason(
    service: &str,
    settings: &AnalysisSettings,
    findings: &[CaseFinding],
    judged: usize,
    unjudged: usize,
    dependencies: usize,
) -> String {
    let minutes = settings.window.as_secs() / 60;
    if findings.is_empty() {
        let mut looked = vec![format!(
            "{judged} metric{} within {} baseline",
            plural(judged),
            if judged == 1 { "its" } else { "their" }
        )];
        if unjudged > 0 {
            looked.push(format!(
                "{unjudged} without enough history or recent data to judge"
            ));
        }
        looked.push(format!(
            "{dependencies} dependenc{} normal",
            if dependencies == 1 { "y" } else { "ies" }
        ));
        looked.push("no deploy or config change".into());
        return format!(
            "nothing found for {service} in the last {minutes} min: {}",
            looked.join(", ")
        );
    }
    let top: Vec<&str> = findings.iter().take(3).map(|f| f.title.as_str()).collect();
    format!(
        "{} finding{} for {service} in the last {minutes} min: {}",
        findings.len(),
        plural(findings.len()),
        top.join("; ")
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn median(values: &[f64]) -> f64 {
    crate::stats::median(&mut values.to_vec())
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The median of at least three values (fewer are no baseline).
fn typical(values: impl Iterator<Item = f64>) -> Option<f64> {
    let values: Vec<f64> = values.collect();
    (values.len() >= 3).then(|| median(&values))
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap()
    }

    /// A day of noisy history around `level`, then `recent` for the last buckets.
    fn series(metric: &str, level: f64, recent: &[f64]) -> MetricSeries {
        let start = now() - chrono::Duration::minutes(24 * 60 + 30);
        let mut points: Vec<(DateTime<Utc>, f64)> = (0..24 * 60 + 30 - recent.len() as i64)
            .map(|m| {
                let noise = ((m * 7919) % 11) as f64 / 10.0 - 0.5;
                (
                    start + chrono::Duration::minutes(m),
                    level * (1.0 + 0.05 * noise),
                )
            })
            .collect();
        let first_recent = now() - chrono::Duration::minutes(recent.len() as i64 - 1);
        for (i, value) in recent.iter().enumerate() {
            points.push((first_recent + chrono::Duration::minutes(i as i64), *value));
        }
        MetricSeries {
            metric: metric.into(),
            stat: "p95".into(),
            points,
        }
    }

    fn calls(dst: &str, p95: f64, err: f64, recent_p95: f64, recent_err: f64) -> Vec<CallBucket> {
        (0..12 * 24)
            .map(|i| {
                let bucket = now() - chrono::Duration::minutes(5 * i);
                let recent = i <= 6;
                CallBucket {
                    bucket,
                    dst: dst.into(),
                    rps: Some(50.0),
                    err_rate: Some(if recent { recent_err } else { err }),
                    p95_ms: Some(if recent { recent_p95 } else { p95 }),
                }
            })
            .collect()
    }

    fn analyse_with(metrics: &[MetricSeries], calls: &[CallBucket], changes: &[Change]) -> Report {
        analyse(
            &Inputs {
                tenant: "t-001",
                service: "checkout",
                now: now(),
                metrics,
                calls,
                changes,
            },
            &AnalysisSettings::default(),
        )
    }

    #[test]
    fn the_service_label_comes_first_then_the_others() {
        let labels = BTreeMap::from([
            ("job".to_string(), "api".to_string()),
            ("service".to_string(), " ".to_string()),
            ("app".to_string(), "cart".to_string()),
        ]);
        assert_eq!(service_of(&labels), Some("cart"));
        assert_eq!(service_of(&BTreeMap::new()), None);
    }

    #[test]
    fn a_metric_that_left_its_baseline_is_a_finding_and_a_quiet_one_is_not() {
        let latency = series("p95_ms", 120.0, &[125.0, 700.0, 820.0, 900.0, 870.0]);
        let errors = series("err_rate", 0.4, &[0.41, 0.39, 0.4]);
        let report = analyse_with(&[latency, errors], &[], &[]);
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        let finding = &report.findings[0];
        assert_eq!(finding.kind, "metric_deviation");
        assert_eq!(finding.detail["metric"], "p95_ms");
        assert_eq!(finding.detail["direction"], "above");
        assert_eq!(finding.detail["deviating_buckets"], 4);
        assert_eq!(finding.detail["observed"], 845.0);
        assert!((finding.detail["baseline"].as_f64().unwrap() - 120.0).abs() < 3.0);
        assert!(finding.score > 0.9);
        assert_eq!(finding.evidence[0]["ref"]["table"], "metric_1m");
        assert!(report
            .reason
            .starts_with("1 finding for checkout in the last 30 min: p95_ms"));
    }

    #[test]
    fn a_drop_is_found_too_and_two_stray_buckets_are_not_enough() {
        let rps = series("rps", 500.0, &[480.0, 90.0, 80.0, 85.0]);
        let blips = series("p95_ms", 120.0, &[900.0, 121.0, 950.0, 119.0]);
        let report = analyse_with(&[rps, blips], &[], &[]);
        assert_eq!(report.findings.len(), 1);
        assert_eq!(report.findings[0].detail["metric"], "rps");
        assert_eq!(report.findings[0].detail["direction"], "below");
    }

    #[test]
    fn a_flat_history_still_judges_and_short_history_is_not_judged() {
        let mut flat = series("queue", 0.0, &[0.0, 0.0, 0.0]);
        for point in &mut flat.points {
            point.1 = 0.0;
        }
        let mut short = series("p95_ms", 120.0, &[900.0, 900.0, 900.0]);
        short.points.drain(..short.points.len() - 40);
        let report = analyse_with(&[flat, short], &[], &[]);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(
            report.reason,
            "nothing found for checkout in the last 30 min: 1 metric within its baseline, 1 \
             without enough history or recent data to judge, 0 dependencies normal, no deploy \
             or config change"
        );
    }

    #[test]
    fn dependencies_are_ranked_by_p95_and_the_degraded_ones_are_findings() {
        let mut all = calls("payments", 80.0, 0.002, 95.0, 0.12);
        all.extend(calls("inventory", 300.0, 0.001, 310.0, 0.001));
        all.extend(calls("search", 40.0, 0.0, 200.0, 0.0));
        let report = analyse_with(&[], &all, &[]);
        let order: Vec<&str> = report.dependencies.iter().map(|d| d.dst.as_str()).collect();
        assert_eq!(order, ["inventory", "search", "payments"]);
        let degraded: Vec<(&str, bool)> = report
            .dependencies
            .iter()
            .map(|d| (d.dst.as_str(), d.degraded))
            .collect();
        assert_eq!(
            degraded,
            [("inventory", false), ("search", true), ("payments", true)]
        );
        let titles: Vec<&str> = report.findings.iter().map(|f| f.title.as_str()).collect();
        assert!(titles
            .contains(&"dependency payments of checkout degraded: errors 12.0% (baseline 0.2%)"));
        assert!(titles
            .contains(&"dependency search of checkout degraded: p95 200 ms (baseline 40.0 ms)"));
    }

    #[test]
    fn recent_changes_of_the_service_and_its_dependencies_count_and_others_do_not() {
        let mut all = calls("payments", 80.0, 0.002, 80.0, 0.002);
        all.truncate(30);
        let change = |id: &str, service: &str, minutes: i64| Change {
            id: id.into(),
            kind: "deploy".into(),
            service: service.into(),
            summary: format!("{service} rolled out"),
            at: now() - chrono::Duration::minutes(minutes),
        };
        let changes = [
            change("a", "checkout", 12),
            change("b", "payments", 40),
            change("c", "unrelated", 5),
            change("d", "checkout", 6 * 60),
        ];
        let latency = series("p95_ms", 120.0, &[900.0; 10]);
        let report = analyse_with(&[latency], &all, &changes);
        let kinds: Vec<(&str, f64)> = report
            .findings
            .iter()
            .map(|f| (f.kind.as_str(), f.score))
            .collect();
        assert_eq!(kinds[0].0, "metric_deviation");
        assert_eq!(kinds[1], ("recent_change", 0.8));
        assert_eq!(kinds[2], ("recent_change", 0.4));
        assert_eq!(kinds.len(), 3);
        assert_eq!(
            report.findings[1].title,
            "deploy of checkout 12 min ago: checkout rolled out"
        );
        assert_eq!(report.findings[2].detail["dependency"], true);
    }
}
