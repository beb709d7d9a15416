//! The Analyst's metrics, in the service's registry.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use crate::finding::Finding;
use crate::rule::Rule;
use crate::series::Detector;

#[derive(Clone)]
pub struct AnalystMeters {
    findings: IntCounterVec,
    series: IntGauge,
    eval: Histogram,
}

impl AnalystMeters {
    pub fn register(registry: &Registry, rules: &[(Rule, Detector)]) -> Self {
        let findings = IntCounterVec::new(
            Opts::new(
                "analyst_findings_total",
                "Alarms the analyst's detectors raised, by detector and rule (old buckets too).",
            ),
            &["detector", "rule"],
        )
        .expect("valid metric");
        let series = IntGauge::new(
            "analyst_series",
            "Series (tenant, resource, metric) with a bucket in the last day, as of the last sweep.",
        )
        .expect("valid metric");
        let eval = Histogram::with_opts(
            HistogramOpts::new(
                "analyst_eval_seconds",
                "Time to judge the new buckets of one series under one rule (reads and save included).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid metric");
        for collector in [
            Box::new(findings.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(series.clone()),
            Box::new(eval.clone()),
        ] {
            registry
                .register(collector)
                .expect("analyst metrics are registered once");
        }
        for (rule, detector) in rules {
            findings.with_label_values(&[detector.method.kind(), &rule.name]);
        }
        Self {
            findings,
            series,
            eval,
        }
    }

    pub fn finding(&self, finding: &Finding) {
        self.findings
            .with_label_values(&[&finding.detector, &finding.rule])
            .inc();
    }

    pub fn series(&self, count: usize) {
        self.series.set(count as i64);
    }

    pub fn eval_timer(&self) -> prometheus::HistogramTimer {
        self.eval.start_timer()
    }
}
