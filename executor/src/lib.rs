//! Step runner of opscase: adapters (noop, script.exec, http.call, k8s.rollout), timeouts, retries, rollback, durable claims.
