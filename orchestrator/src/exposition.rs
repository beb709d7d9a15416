//! What `/metrics` answers: one prometheus-client registry, rendered as the classic Prometheus
//! text format (0.0.4) or as OpenMetrics 1.0.0, which carries exemplars.
//!
//! The histograms that link a latency to the trace that caused it ([`TracedHistogram`]) are
//! prometheus-client metrics in that registry. Every other metric is still a `prometheus` crate
//! metric in [`Metrics::registry`](crate::Metrics::registry), where the roles and the benches
//! register theirs; the registry reads them in at each scrape ([`Gathered`]), so both formats
//! are one document with every family in it.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::proto;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The two text formats of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: no exemplars.
    Classic,
    /// OpenMetrics 1.0.0 text: exemplars on the traced histograms, `# EOF` at the end.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// An exemplar's labels: the trace, and the span in it, that made an observation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
    pub span_id: String,
}

impl TraceExemplar {
    pub fn of(trace: &bus::TraceContext) -> Self {
        Self {
            trace_id: trace.trace_id.clone(),
            span_id: trace.span_id.clone(),
        }
    }

    /// The exemplar of a W3C `traceparent` header, when it is a valid one.
    pub fn from_traceparent(traceparent: &str) -> Option<Self> {
        bus::TraceContext::parse(traceparent).map(|trace| Self::of(&trace))
    }
}

/// What a traced histogram's series are labelled with (a struct deriving `EncodeLabelSet`,
/// its fields in the order the labels are written).
pub trait SeriesLabels:
    Clone + Hash + Eq + fmt::Debug + EncodeLabelSet + Send + Sync + 'static
{
}

impl<T: Clone + Hash + Eq + fmt::Debug + EncodeLabelSet + Send + Sync + 'static> SeriesLabels
    for T
{
}

/// A histogram whose buckets remember the trace of their latest observation: OpenMetrics
/// shows it as an exemplar (`# {trace_id="...",span_id="..."} 0.234 1764770000.1`), so a
/// latency spike on a dashboard leads to a trace that caused it.
#[derive(Debug, Clone)]
pub struct TracedHistogram<L> {
    family: Family<L, HistogramWithExemplars<TraceExemplar>, Buckets>,
}

impl<L: SeriesLabels> TracedHistogram<L> {
    fn new(buckets: &[f64]) -> Self {
        Self {
            family: Family::new_with_constructor(Buckets(buckets.into())),
        }
    }

    pub fn observe(&self, labels: &L, value: f64, trace: Option<TraceExemplar>) {
        self.family
            .get_or_create(labels)
            .observe(value, trace, Some(SystemTime::now()));
    }

    /// Export the series at zero before its first observation.
    pub fn start(&self, labels: &L) {
        drop(self.family.get_or_create(labels));
    }
}

#[derive(Debug, Clone)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<HistogramWithExemplars<TraceExemplar>> for Buckets {
    fn new_metric(&self) -> HistogramWithExemplars<TraceExemplar> {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

/// The registry behind `/metrics`, and the traced histograms registered in it by name.
#[derive(Debug)]
pub(crate) struct Exposition {
    registry: Registry,
    traced: HashMap<String, Arc<dyn Any + Send + Sync>>,
}

impl Exposition {
    pub(crate) fn new(gathered: prometheus::Registry) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Gathered(gathered)));
        Self {
            registry,
            traced: HashMap::new(),
        }
    }

    /// The traced histogram `name`, registered by the first call (several routers on one
    /// registry, as in tests, share it).
    ///
    /// # Panics
    /// When `name` was registered with another label type.
    pub(crate) fn traced_histogram<L: SeriesLabels>(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> TracedHistogram<L> {
        if let Some(existing) = self.traced.get(name) {
            return existing
                .downcast_ref::<TracedHistogram<L>>()
                .unwrap_or_else(|| panic!("{name} is registered with other labels"))
                .clone();
        }
        let histogram = TracedHistogram::new(buckets);
        // The registry ends every help text with a period of its own.
        let help = help.strip_suffix('.').unwrap_or(help);
        self.registry.register(name, help, histogram.family.clone());
        self.traced
            .insert(name.to_string(), Arc::new(histogram.clone()));
        histogram
    }

    pub(crate) fn render(&self, format: Format) -> String {
        let mut text = String::new();
        let written = match format {
            Format::Classic => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
            }
        };
        // Writing to a String fails only when an encoder refuses a metric; an OpenMetrics
        // document cut short has no `# EOF`, so the scraper sees that it is incomplete.
        if written.is_err() {
            tracing::error!(?format, "the metrics exposition could not be encoded whole");
        }
        text
    }
}

/// The `prometheus` crate's metrics, gathered at each scrape and written by prometheus-client
/// in the format asked for. Names, labels, help texts and label order stay what that crate
/// gives; a counter's `_total` is written by prometheus-client, as OpenMetrics wants it.
#[derive(Debug)]
struct Gathered(prometheus::Registry);

impl Collector for Gathered {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for family in self.0.gather() {
            encode_family(&mut encoder, &family)?;
        }
        Ok(())
    }
}

fn encode_family(encoder: &mut DescriptorEncoder, family: &proto::MetricFamily) -> fmt::Result {
    let kind = family.get_field_type();
    let (name, metric_type) = match kind {
        proto::MetricType::COUNTER => match family.name().strip_suffix("_total") {
            Some(base) => (base, MetricType::Counter),
            // A counter by another name would be renamed `<name>_total`; untyped keeps it.
            None => (family.name(), MetricType::Unknown),
        },
        proto::MetricType::GAUGE => (family.name(), MetricType::Gauge),
        proto::MetricType::HISTOGRAM => (family.name(), MetricType::Histogram),
        // The prometheus crate has neither (its proto types only; opscase makes none).
        proto::MetricType::UNTYPED | proto::MetricType::SUMMARY => return Ok(()),
    };
    let mut metric_encoder = encoder.encode_descriptor(name, family.help(), None, metric_type)?;
    for metric in family.get_metric() {
        let labels: Vec<(&str, &str)> = metric
            .get_label()
            .iter()
            .map(|pair| (pair.name(), pair.value()))
            .collect();
        let series = metric_encoder.encode_family(&labels)?;
        encode_series(series, metric_type, metric)?;
    }
    Ok(())
}

fn encode_series(
    mut series: MetricEncoder,
    metric_type: MetricType,
    metric: &proto::Metric,
) -> fmt::Result {
    match metric_type {
        MetricType::Counter => {
            let value = metric.get_counter().get_value();
            match integral(value).and_then(|v| u64::try_from(v).ok()) {
                Some(count) => series.encode_counter::<NoLabelSet, _, u64>(&count, None),
                None => series.encode_counter::<NoLabelSet, _, f64>(&value, None),
            }
        }
        MetricType::Gauge => encode_number(series, metric.get_gauge().get_value()),
        // A counter not named `*_total` (see `encode_family`).
        MetricType::Unknown => encode_number(series, metric.get_counter().get_value()),
        MetricType::Histogram => {
            let histogram = metric.get_histogram();
            let count = histogram.get_sample_count();
            // prometheus-client takes each bucket's own count and adds them up again.
            let mut buckets = Vec::with_capacity(histogram.get_bucket().len() + 1);
            let mut below = 0;
            for bucket in histogram.get_bucket() {
                let cumulative = bucket.cumulative_count();
                buckets.push((bucket.upper_bound(), cumulative.saturating_sub(below)));
                below = cumulative;
            }
            if buckets.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
                buckets.push((f64::INFINITY, count.saturating_sub(below)));
            }
            series.encode_histogram::<NoLabelSet>(histogram.get_sample_sum(), count, &buckets, None)
        }
        // `encode_family` chooses no info metric.
        MetricType::Info => Ok(()),
    }
}

/// A sample written as its family's name and the value, as a gauge is.
fn encode_number(mut series: MetricEncoder, value: f64) -> fmt::Result {
    match integral(value) {
        Some(value) => series.encode_gauge(&value),
        None => series.encode_gauge(&value),
    }
}

/// `value` as an integer when it is one that an f64 holds exactly (written as before: `3`,
/// not `3.0`).
fn integral(value: f64) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    (value.fract() == 0.0 && value.abs() <= EXACT).then_some(value as i64)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct Route {
        route: String,
    }

    /// A counter family, a gauge below zero, a histogram with observations, a counter with
    /// neither labels nor a sample yet, and a help text the classic format escapes
    /// (prometheus-client 0.26 writes OpenMetrics help texts as they are, so opscase's must
    /// need no escaping).
    fn gathered() -> prometheus::Registry {
        let registry = prometheus::Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests \\ by \"zone\" and\nstatus."),
            &["zone", "status"],
        )
        .unwrap();
        requests.with_label_values(&["eu\"1", "200"]).inc_by(3);
        requests.with_label_values(&["us", "500"]);
        let drift = IntGauge::new("drift", "Drift.").unwrap();
        drift.set(-4);
        let seconds = HistogramVec::new(
            HistogramOpts::new("work_seconds", "Work.").buckets(vec![0.5, 1.0, 2.5]),
            &["kind"],
        )
        .unwrap();
        for value in [0.1, 0.7, 2.0, 9.0] {
            seconds.with_label_values(&["a"]).observe(value);
        }
        let idle = IntCounter::new("idle_total", "Idle.").unwrap();
        for collector in [
            Box::new(requests) as Box<dyn prometheus::core::Collector>,
            Box::new(drift),
            Box::new(seconds),
            Box::new(idle),
        ] {
            registry.register(collector).unwrap();
        }
        registry
    }

    /// `name{labels}` → value of each sample, and every comment line, of a text exposition.
    fn parsed(text: &str) -> (BTreeMap<String, f64>, BTreeSet<String>) {
        let mut samples = BTreeMap::new();
        let mut comments = BTreeSet::new();
        for line in text.lines() {
            if line.starts_with('#') {
                comments.insert(line.to_string());
            } else if let Some((series, value)) = line.rsplit_once(' ') {
                samples.insert(series.to_string(), value.parse().unwrap());
            }
        }
        (samples, comments)
    }

    #[test]
    fn the_classic_format_is_what_the_prometheus_crate_writes() {
        let registry = gathered();
        let ours = Exposition::new(registry.clone()).render(Format::Classic);
        let theirs = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert_eq!(
            parsed(&ours),
            parsed(&theirs),
            "ours:\n{ours}\ntheirs:\n{theirs}"
        );
        // Whole numbers stay integers.
        assert!(ours.contains("\nrequests_total{status=\"200\",zone=\"eu\\\"1\"} 3\n"));
        assert!(ours.contains("\ndrift -4\n"));
    }

    #[test]
    fn openmetrics_carries_exemplars_and_names_counters_as_it_asks() {
        let mut exposition = Exposition::new(gathered());
        let durations: TracedHistogram<Route> =
            exposition.traced_histogram("took_seconds", "Took.", &[0.1, 1.0]);
        let trace = bus::TraceContext::root();
        durations.observe(
            &Route { route: "/x".into() },
            0.25,
            Some(TraceExemplar::of(&trace)),
        );
        let again: TracedHistogram<Route> =
            exposition.traced_histogram("took_seconds", "Took.", &[0.1, 1.0]);
        again.start(&Route { route: "/y".into() });

        let text = exposition.render(Format::OpenMetrics);
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert!(text.contains("\n# TYPE requests counter\n"), "{text}");
        assert!(text.contains("\nrequests_total{status=\"200\",zone=\"eu\\\"1\"} 3\n"));
        assert!(text.contains("\n# TYPE idle counter\nidle_total 0\n"));
        assert_eq!(text.matches("# TYPE took_seconds histogram").count(), 1);
        assert!(text.starts_with("# HELP took_seconds Took.\n"), "{text}");
        let exemplar = format!(
            "took_seconds_bucket{{le=\"1.0\",route=\"/x\"}} 1 # {{trace_id=\"{}\",span_id=\"{}\"}} 0.25 ",
            trace.trace_id, trace.span_id
        );
        assert!(text.contains(&exemplar), "{exemplar} in\n{text}");
        assert!(text.contains("took_seconds_count{route=\"/y\"} 0\n"));
        assert!(text.contains("work_seconds_bucket{le=\"+Inf\",kind=\"a\"} 4\n"));

        let classic = exposition.render(Format::Classic);
        assert!(
            !classic.contains(" # {") && !classic.contains("# EOF"),
            "{classic}"
        );
        assert!(classic.contains("\ntook_seconds_bucket{route=\"/x\",le=\"1\"} 1\n"));
    }

    #[test]
    fn a_counter_not_named_total_keeps_its_name_untyped() {
        let registry = prometheus::Registry::new();
        let restarts = IntCounter::new("restarts", "Restarts.").unwrap();
        restarts.inc_by(2);
        registry.register(Box::new(restarts)).unwrap();
        let exposition = Exposition::new(registry);
        assert_eq!(
            exposition.render(Format::OpenMetrics),
            "# HELP restarts Restarts.\n# TYPE restarts unknown\nrestarts 2\n# EOF\n"
        );
        assert_eq!(
            exposition.render(Format::Classic),
            "# HELP restarts Restarts.\n# TYPE restarts untyped\nrestarts 2\n"
        );
    }
}
