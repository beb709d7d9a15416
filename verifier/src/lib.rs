//! Verifier of opscase: canary-style SLO checks against metric_1m or Prometheus, failing closed.
