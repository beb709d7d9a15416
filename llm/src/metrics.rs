//! `llm_requests_total{purpose,outcome}`, `llm_request_seconds{purpose}` and
//! `llm_tokens_total{purpose,kind}`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct LlmMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    tokens: IntCounterVec,
}

impl LlmMetrics {
    /// Register on `registry`; a second client on the same registry shares the first's.
    pub fn register(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "llm_requests_total",
                "Calls to the model, by purpose and outcome (ok, invalid, error, timeout, \
                 rate_limited, circuit_open, budget_exhausted).",
            ),
            &["purpose", "outcome"],
        )
        .expect("valid metric");
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "llm_request_seconds",
                "Time of a call to the model, retries included.",
            )
            .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            &["purpose"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new(
                "llm_tokens_total",
                "Tokens the model's server reported, by purpose and kind (prompt, completion).",
            ),
            &["purpose", "kind"],
        )
        .expect("valid metric");
        Self {
            requests: register_or_existing(registry, requests),
            seconds: register_or_existing(registry, seconds),
            tokens: register_or_existing(registry, tokens),
        }
    }

    pub fn request(&self, purpose: &str, outcome: &str) {
        self.requests.with_label_values(&[purpose, outcome]).inc();
    }

    pub fn observe(&self, purpose: &str, seconds: f64) {
        self.seconds.with_label_values(&[purpose]).observe(seconds);
    }

    pub fn tokens(&self, purpose: &str, prompt: Option<i64>, completion: Option<i64>) {
        for (kind, count) in [("prompt", prompt), ("completion", completion)] {
            if let Some(count) = count.and_then(|c| u64::try_from(c).ok()) {
                self.tokens
                    .with_label_values(&[purpose, kind])
                    .inc_by(count);
            }
        }
    }
}

fn register_or_existing<C>(registry: &Registry, collector: C) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    match registry.register(Box::new(collector.clone())) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => collector,
        Err(error) => panic!("metric registration: {error}"),
    }
}
