//! Verifier of opscase: canary-style SLO checks against metric_1m or Prometheus, failing closed.
//!
//! A `cmd.verify.run` carries the plan's `verify` section:
//!
//! ```json
//! {"checks": [{"name": "latency", "source": "metric_1m", "query": "resource=checkout",
//!              "threshold": "p95_ms < 300"}],
//!  "window_s": 300, "interval_s": 60, "count": 3, "failure_limit": 1}
//! ```
//!
//! # Checks
//!
//! * **Threshold**: `name op number`, `op` one of `<`, `<=`, `>`, `>=` (see [`Threshold`]).
//!   A measured value passes when `value op number` holds.
//! * **`metric_1m` source** ([`Metric1mSource`]): the query is `resource=<name>` (or
//!   `service=<name>`), optionally followed by `,stat=avg|max|p95`. The threshold's name is
//!   the metric looked up (`p95_ms < 300` reads metric `p95_ms`), the tenant is the case's.
//!   The stat defaults to `p95` when the metric name starts with `p9`, else `avg`. The rows
//!   whose minute bucket starts in `[at - window_s, at)` are combined into one value: the
//!   **maximum** (the worst minute) for `p95` and `max`, the unweighted **mean** of the minutes
//!   for `avg`. No rows is inconclusive.
//! * **`prometheus` source** ([`PrometheusSource`]): the query is PromQL, sent as an instant
//!   query `GET {base}/api/v1/query?query=...&time=<unix seconds>`; `$window` in it becomes the
//!   window (`300s`). The answer must be a scalar or a vector of exactly one sample; an empty
//!   vector, several series, NaN or ±Inf, an error status or no answer is inconclusive.
//! * A source the verifier was not configured with is inconclusive, naming it.
//!
//! # The canary loop
//!
//! Every check is measured `count` times (default 1), the first immediately, then every
//! `interval_s` seconds (default 60), each over the last `window_s` seconds (default 300);
//! all checks are measured at the same instants. A check **fails** as soon as its failed
//! measurements exceed `failure_limit` (default 0), and then the whole verification stops
//! (checks cut short are inconclusive: not finished). A check that did not fail **passes**
//! only if every one of its `count` measurements was conclusive; any inconclusive
//! measurement (no data, NaN, source error) makes it **inconclusive**. A `failure_limit` not
//! below `count` would make a check that can never fail, so it is rejected.
//!
//! The verdict is **fail** if any check fails, else **inconclusive** if any check is (or the
//! `verify` section is invalid or has no checks), else **pass**. Inconclusive fails closed:
//! it is published as `evt.verify.failed.v1` with verdict `inconclusive`. Each check reports
//! the numbers it saw ([`CheckReport`]): `{name, source, query, threshold, verdict,
//! measurements: [{at, value|null, passed|null, note}], reason}`.
//!
//! # Storage
//!
//! [`Metric1mStore`] reads and writes the `metric_1m` table (SQLite or PostgreSQL,
//! migration `20261121000005_metric_1m.sql`): one row per tenant, resource, metric and
//! minute, upserted so that re-ingesting a minute is idempotent.

mod source;
mod store;
mod threshold;
mod verify;
mod worker;

pub use source::{
    prometheus_time, Check, Measurement, Metric1mQuery, Metric1mSource, MetricSource,
    PrometheusSource, MAX_PROMETHEUS_RESPONSE, METRIC_1M, PROMETHEUS,
};
pub use store::{
    truncate_to_minute, Metric1mError, Metric1mStore, MetricPoint, SeriesRow, Stat, MAX_METRIC_LEN,
    MAX_NAME_LEN,
};
pub use threshold::{Op, Threshold, ThresholdError};
pub use verify::{
    parse_verify, CheckReport, Clock, Schedule, SystemClock, Verdict, Verifier, VerifyOutcome,
};
pub use worker::{Observer, VerifierWorker, SOURCE};

/// The worker role, and the `actor` of its events.
pub const ROLE: &str = "verifier";
