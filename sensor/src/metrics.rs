//! The sensor's metrics, in the service's registry.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::signal::Source;

/// The `source` label of change events.
const CHANGES: &str = "changes";

#[derive(Clone)]
pub struct SensorMetrics {
    received: IntCounterVec,
    duplicates: IntCounterVec,
    opened: IntCounterVec,
    ingest: HistogramVec,
}

impl SensorMetrics {
    /// Register in `registry` (once per registry; a second call reuses nothing and fails, so
    /// the service builds one and shares it).
    pub fn register(registry: &Registry) -> Self {
        let received = IntCounterVec::new(
            Opts::new(
                "signals_received_total",
                "Alerts and events received, by source and status (firing, resolved, \
                 acknowledged; invalid for a payload refused whole).",
            ),
            &["source", "status"],
        )
        .expect("valid metric");
        let duplicates = IntCounterVec::new(
            Opts::new(
                "signal_duplicates_total",
                "Repeated deliveries of an alert state already received (nothing written).",
            ),
            &["source"],
        )
        .expect("valid metric");
        let opened = IntCounterVec::new(
            Opts::new("cases_opened_total", "Cases opened by signals, by source."),
            &["source"],
        )
        .expect("valid metric");
        let ingest = HistogramVec::new(
            HistogramOpts::new(
                "signal_ingest_seconds",
                "Time to take in one payload, from the parsed body to the commit, by source.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["source"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(received.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duplicates.clone()),
            Box::new(opened.clone()),
            Box::new(ingest.clone()),
        ] {
            registry
                .register(collector)
                .expect("sensor metrics are registered once");
        }
        for source in Source::ALL {
            for status in ["firing", "resolved", "acknowledged", "invalid"] {
                received.with_label_values(&[source.as_str(), status]);
            }
            duplicates.with_label_values(&[source.as_str()]);
            opened.with_label_values(&[source.as_str()]);
            ingest.with_label_values(&[source.as_str()]);
        }
        for kind in crate::intake::CHANGE_KINDS {
            received.with_label_values(&[CHANGES, kind]);
        }
        Self {
            received,
            duplicates,
            opened,
            ingest,
        }
    }

    pub fn received(&self, source: Source, status: &str) {
        self.received
            .with_label_values(&[source.as_str(), status])
            .inc();
    }

    /// A change event recorded: `signals_received_total{source="changes",status=<kind>}`.
    pub fn change(&self, kind: &str) {
        self.received.with_label_values(&[CHANGES, kind]).inc();
    }

    pub fn duplicate(&self, source: Source) {
        self.duplicates.with_label_values(&[source.as_str()]).inc();
    }

    pub fn opened(&self, source: Source) {
        self.opened.with_label_values(&[source.as_str()]).inc();
    }

    pub fn ingest_timer(&self, source: Source) -> Histogram {
        self.ingest.with_label_values(&[source.as_str()])
    }
}
