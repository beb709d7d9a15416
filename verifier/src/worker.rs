//! The `verifier` worker role: `cmd.verify.run` in, one verdict event out.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bus::{Envelope, Publisher, Worker, WorkerError};
use workflow::messages::{topic, VerifyCommand};

use crate::verify::{Verifier, VerifyOutcome};

/// The envelope `source` of the verifier's events.
pub const SOURCE: &str = "opscase/verifier";

/// Called with every outcome before it is published (e.g. to record
/// `verify_latency_seconds{source,verdict}`).
pub type Observer = Arc<dyn Fn(&VerifyOutcome) + Send + Sync>;

/// Runs `cmd.verify.run` and publishes `evt.verify.pass.v1` or `evt.verify.failed.v1`.
///
/// A redelivered command runs the verification again; its answer has the same message id as
/// the first one's when the verdict's topic is the same (the bus drops the repeat).
#[derive(Clone)]
pub struct VerifierWorker {
    verifier: Arc<Verifier>,
    observer: Option<Observer>,
}

impl fmt::Debug for VerifierWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierWorker")
            .field("verifier", &self.verifier)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl VerifierWorker {
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier: Arc::new(verifier),
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }
}

#[async_trait]
impl Worker for VerifierWorker {
    fn role(&self) -> &'static str {
        crate::ROLE
    }

    fn commands(&self) -> &'static [&'static str] {
        &[topic::VERIFY_RUN]
    }

    /// A verification waits out its intervals: it runs on its own task.
    fn detached(&self) -> bool {
        true
    }

    async fn handle(&self, command: &Envelope, out: &dyn Publisher) -> Result<(), WorkerError> {
        if command.kind != topic::VERIFY_RUN {
            return Err(WorkerError::Poison(format!(
                "the verifier does not take {}",
                command.kind
            )));
        }
        let request: VerifyCommand = serde_json::from_value(command.data.clone())
            .map_err(|e| WorkerError::Poison(format!("{}: data: {e}", command.kind)))?;
        let outcome = self.verifier.run(&request).await;
        tracing::info!(
            case = %request.case.id,
            plan = %request.plan_id,
            verdict = %outcome.verdict,
            source = %outcome.source,
            latency_s = outcome.latency_seconds(),
            reason = %outcome.reason,
            "verification finished"
        );
        if let Some(observer) = &self.observer {
            observer(&outcome);
        }
        let data = serde_json::to_value(outcome.event(&request.plan_id))
            .map_err(|e| WorkerError::Poison(format!("the verdict does not serialize: {e}")))?;
        out.publish(bus::answer(command, SOURCE, outcome.topic(), "", data))
            .await
            .map_err(|e| WorkerError::Retry(format!("publishing the verdict: {e}")))
    }
}
