//! The orchestrator's Prometheus metrics. One registry per process; the API adds its HTTP
//! metrics to the same registry, and `/metrics` renders it ([`crate::exposition`]).

use std::sync::{Arc, Mutex};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use prometheus_client::encoding::EncodeLabelSet;
use workflow::{Status, TRANSITIONS};

use crate::exposition::{Exposition, Format, SeriesLabels, TraceExemplar, TracedHistogram};

/// Why a request changed nothing (the `reason` label of `conflict_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
    IllegalTransition,
    VersionMismatch,
    PreconditionFailed,
    GuardFailed,
    IdempotencyMismatch,
    InFlight,
}

impl ConflictReason {
    pub const ALL: [ConflictReason; 6] = [
        ConflictReason::IllegalTransition,
        ConflictReason::VersionMismatch,
        ConflictReason::PreconditionFailed,
        ConflictReason::GuardFailed,
        ConflictReason::IdempotencyMismatch,
        ConflictReason::InFlight,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConflictReason::IllegalTransition => "illegal_transition",
            ConflictReason::VersionMismatch => "version_mismatch",
            ConflictReason::PreconditionFailed => "precondition_failed",
            ConflictReason::GuardFailed => "guard_failed",
            ConflictReason::IdempotencyMismatch => "idempotency_mismatch",
            ConflictReason::InFlight => "in_flight",
        }
    }
}

/// The labels of `adapter_step_latency_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StepLabels {
    adapter: String,
    status: String,
}

/// The labels of `verify_latency_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerifyLabels {
    source: String,
    verdict: String,
}

#[derive(Clone)]
pub struct Metrics {
    /// Where metrics without exemplars are registered (every role's and the API's).
    pub registry: Registry,
    exposition: Arc<Mutex<Exposition>>,
    transitions: IntCounterVec,
    conflicts: IntCounterVec,
    replays: IntCounter,
    cases_open: IntGaugeVec,
    outbox_publishes: IntCounterVec,
    outbox_pending: IntGauge,
    outbox_lag: Histogram,
    inbox_duplicates: IntCounter,
    dead_letters: IntCounterVec,
    redeliveries: IntCounterVec,
    stalls: IntCounterVec,
    gate_decisions: IntCounterVec,
    step_latency: TracedHistogram<StepLabels>,
    verify_latency: TracedHistogram<VerifyLabels>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let mut exposition = Exposition::new(registry.clone());
        let transitions = IntCounterVec::new(
            Opts::new("case_transition_total", "Accepted case transitions."),
            &["from", "to", "event"],
        )
        .expect("valid metric");
        let conflicts = IntCounterVec::new(
            Opts::new(
                "conflict_total",
                "Requests refused without changing a case, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let replays = IntCounter::new(
            "idempotent_replay_total",
            "Requests answered from a stored idempotent response.",
        )
        .expect("valid metric");
        let cases_open = IntGaugeVec::new(
            Opts::new("cases_open", "Cases not yet CLOSED, by status."),
            &["status"],
        )
        .expect("valid metric");
        let outbox_publishes = IntCounterVec::new(
            Opts::new(
                "outbox_publish_total",
                "Outbox messages handed to the bus, by topic and outcome.",
            ),
            &["topic", "status"],
        )
        .expect("valid metric");
        let outbox_pending = IntGauge::new("outbox_pending", "Outbox rows not yet published.")
            .expect("valid metric");
        let outbox_lag = Histogram::with_opts(
            HistogramOpts::new(
                "outbox_lag_seconds",
                "Time from commit to the bus's acknowledgement.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
        )
        .expect("valid metric");
        let inbox_duplicates = IntCounter::new(
            "inbox_dedup_total",
            "Bus messages a consumer had already handled (redeliveries).",
        )
        .expect("valid metric");
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "bus_dead_letter_total",
                "Messages a consumer gave up on and copied to the dead-letter stream.",
            ),
            &["consumer"],
        )
        .expect("valid metric");
        let redeliveries = IntCounterVec::new(
            Opts::new(
                "bus_redelivery_total",
                "Commands the embedded bus delivered again because the process running them \
                 stopped before they finished (or their lease ran out).",
            ),
            &["consumer"],
        )
        .expect("valid metric");
        let stalls = IntCounterVec::new(
            Opts::new(
                "case_stall_total",
                "Cases the watchdog found without progress past their bound, by status.",
            ),
            &["status"],
        )
        .expect("valid metric");
        let gate_decisions = IntCounterVec::new(
            Opts::new(
                "gate_decision_total",
                "Gate decisions, by decision (approved, rejected, held) and the rule that fired \
                 (`human` for a PATCH by an approver).",
            ),
            &["decision", "rule"],
        )
        .expect("valid metric");
        let step_latency = exposition.traced_histogram(
            "adapter_step_latency_seconds",
            "Duration of each step attempt the executor reported, by adapter and outcome.",
            &[
                0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
            ],
        );
        let verify_latency = exposition.traced_histogram(
            "verify_latency_seconds",
            "Duration of each verification (windows and intervals included), by source and verdict.",
            &[
                0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ],
        );
        for collector in [
            Box::new(transitions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(conflicts.clone()),
            Box::new(replays.clone()),
            Box::new(cases_open.clone()),
            Box::new(outbox_publishes.clone()),
            Box::new(outbox_pending.clone()),
            Box::new(outbox_lag.clone()),
            Box::new(inbox_duplicates.clone()),
            Box::new(dead_letters.clone()),
            Box::new(redeliveries.clone()),
            Box::new(stalls.clone()),
            Box::new(gate_decisions.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for status in workflow::watchdog::WATCHED {
            stalls.with_label_values(&[status.as_str()]);
        }
        // Every row of the table starts at zero, so dashboards and rate() see the series at once.
        for transition in TRANSITIONS {
            for from in Status::ALL
                .into_iter()
                .filter(|s| transition.from.matches(*s))
            {
                transitions.with_label_values(&[
                    from.as_str(),
                    transition.to.as_str(),
                    transition.event.as_str(),
                ]);
            }
        }
        for reason in ConflictReason::ALL {
            conflicts.with_label_values(&[reason.as_str()]);
        }
        for status in Status::ALL.into_iter().filter(|s| !s.is_terminal()) {
            cases_open.with_label_values(&[status.as_str()]);
        }
        for adapter in workflow::adapters::ADAPTERS {
            for status in ["succeeded", "failed", "planned"] {
                step_latency.start(&StepLabels {
                    adapter: adapter.action.to_string(),
                    status: status.to_string(),
                });
            }
        }
        for source in ["metric_1m", "prometheus"] {
            for verdict in ["pass", "fail", "inconclusive"] {
                verify_latency.start(&VerifyLabels {
                    source: source.to_string(),
                    verdict: verdict.to_string(),
                });
            }
        }
        for (decision, rule) in [
            ("approved", "auto_approve"),
            ("approved", "human"),
            ("rejected", "human"),
        ] {
            gate_decisions.with_label_values(&[decision, rule]);
        }
        Self {
            registry,
            exposition: Arc::new(Mutex::new(exposition)),
            transitions,
            conflicts,
            replays,
            cases_open,
            outbox_publishes,
            outbox_pending,
            outbox_lag,
            inbox_duplicates,
            dead_letters,
            redeliveries,
            stalls,
            gate_decisions,
            step_latency,
            verify_latency,
        }
    }

    pub fn gate_decision(&self, decision: &str, rule: &str) {
        self.gate_decisions
            .with_label_values(&[decision, rule])
            .inc();
    }

    /// A step attempt the executor reported, with the trace of its report.
    pub fn step_attempt(
        &self,
        adapter: &str,
        status: &str,
        seconds: f64,
        trace: Option<TraceExemplar>,
    ) {
        let labels = StepLabels {
            adapter: adapter.to_string(),
            status: status.to_string(),
        };
        self.step_latency.observe(&labels, seconds, trace);
    }

    /// A verification the verifier reported, with the trace of its report.
    pub fn verification(
        &self,
        source: &str,
        verdict: &str,
        seconds: f64,
        trace: Option<TraceExemplar>,
    ) {
        let labels = VerifyLabels {
            source: source.to_string(),
            verdict: verdict.to_string(),
        };
        self.verify_latency.observe(&labels, seconds, trace);
    }

    /// A histogram with trace exemplars, in the exposition beside the registry's metrics
    /// (the one already registered as `name`, on a second call).
    pub fn traced_histogram<L: SeriesLabels>(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> TracedHistogram<L> {
        self.exposition
            .lock()
            .expect("not poisoned")
            .traced_histogram(name, help, buckets)
    }

    pub fn transition(&self, from: Status, to: Status, event: &str) {
        self.transitions
            .with_label_values(&[from.as_str(), to.as_str(), event])
            .inc();
        self.cases_open.with_label_values(&[from.as_str()]).dec();
        if !to.is_terminal() {
            self.cases_open.with_label_values(&[to.as_str()]).inc();
        }
    }

    /// Export the embedded store's group-commit counters, read from `read` at each scrape
    /// (once per registry; a second call changes nothing).
    pub fn watch_group_commits(
        &self,
        read: impl Fn() -> Option<(u64, u64)> + Send + Sync + 'static,
    ) {
        let collector = GroupCommits {
            read: Box::new(read),
            transactions: IntCounter::new(
                "sqlite_write_transactions_total",
                "Write transactions that reached their commit on the embedded SQLite store.",
            )
            .expect("valid metric"),
            commits: IntCounter::new(
                "sqlite_commits_total",
                "SQLite COMMITs that made them durable (one per group commit).",
            )
            .expect("valid metric"),
        };
        let _ = self.registry.register(Box::new(collector));
    }

    /// Every metric, in the classic text format or OpenMetrics (with exemplars).
    pub fn render(&self, format: Format) -> String {
        self.exposition.lock().expect("not poisoned").render(format)
    }

    pub fn case_opened(&self) {
        self.cases_open
            .with_label_values(&[Status::New.as_str()])
            .inc();
    }

    pub fn conflict(&self, reason: ConflictReason) {
        self.conflicts.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn replay(&self) {
        self.replays.inc();
    }

    pub fn outbox_published(&self, topic: &str, status: &str) {
        self.outbox_publishes
            .with_label_values(&[topic, status])
            .inc();
    }

    pub fn outbox_lag(&self, lag: std::time::Duration) {
        self.outbox_lag.observe(lag.as_secs_f64());
    }

    pub fn dead_letter(&self, consumer: &str) {
        self.dead_letters.with_label_values(&[consumer]).inc();
    }

    /// Start `bus_redelivery_total{consumer}` at zero, so it is there before the first one.
    pub fn redeliveries_of(&self, consumer: &str) {
        self.redeliveries.with_label_values(&[consumer]);
    }

    pub fn redelivery(&self, consumer: &str) {
        self.redeliveries.with_label_values(&[consumer]).inc();
    }

    pub fn stall(&self, status: Status) {
        self.stalls.with_label_values(&[status.as_str()]).inc();
    }

    pub fn inbox_duplicate(&self) {
        self.inbox_duplicates.inc();
    }

    pub fn set_outbox_pending(&self, pending: i64) {
        self.outbox_pending.set(pending);
    }

    /// Set `cases_open` from the database (at start-up, so the gauge survives restarts).
    pub fn set_open_cases(&self, counts: &[(String, i64)]) {
        for status in Status::ALL.into_iter().filter(|s| !s.is_terminal()) {
            let count = counts
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0, |(_, n)| *n);
            self.cases_open
                .with_label_values(&[status.as_str()])
                .set(count);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters the embedded store keeps itself, caught up with it whenever they are scraped.
struct GroupCommits {
    read: Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>,
    transactions: IntCounter,
    commits: IntCounter,
}

impl prometheus::core::Collector for GroupCommits {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        [self.transactions.desc(), self.commits.desc()].concat()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Some((transactions, commits)) = (self.read)() {
            catch_up(&self.transactions, transactions);
            catch_up(&self.commits, commits);
        }
        [self.transactions.collect(), self.commits.collect()].concat()
    }
}

fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}
