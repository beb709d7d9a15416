//! Step output as evidence: the executor ships each attempt's output to a log store (Loki) and
//! its step result carries the locator; the sensor, a consumer of step results, turns each such
//! locator into a `log` evidence of the case, so `GET /v1/evidence/{id}/lines` reads it back.

use std::sync::Arc;

use async_trait::async_trait;
use bus::{Envelope, Handled, Handler};
use orchestrator::RequestContext;
use uuid::Uuid;

use crate::evidence::NewEvidence;
use crate::ingest::{IngestError, Sensor};
use crate::store::Locator;

/// The topic it takes, and its consumer name on the bus.
pub const STEP_RESULT: &str = "evt.exec.step_result.v1";
pub const CONSUMER: &str = "sensor";

pub struct StepOutputs {
    sensor: Arc<Sensor>,
}

impl StepOutputs {
    pub fn new(sensor: Arc<Sensor>) -> Self {
        Self { sensor }
    }
}

#[async_trait]
impl Handler for StepOutputs {
    async fn handle(&self, envelope: &Envelope) -> Handled {
        if envelope.kind != STEP_RESULT {
            return Handled::Done;
        }
        let data = &envelope.data;
        let Some(locator) = data.get("output_ref").filter(|r| !r.is_null()) else {
            return Handled::Done;
        };
        let locator: Locator = match serde_json::from_value(locator.clone()) {
            Ok(locator) => locator,
            Err(error) => return Handled::Poison(format!("output_ref is not a locator: {error}")),
        };
        let Ok(case_id) = Uuid::parse_str(&envelope.subject) else {
            return Handled::Poison(format!("subject {:?} is not a case id", envelope.subject));
        };
        let text = |name: &str| data[name].as_str().unwrap_or("?").to_string();
        let new = NewEvidence {
            kind: "log".into(),
            title: format!(
                "output of {} step {}, attempt {}",
                text("phase"),
                text("step"),
                data["attempt"].as_u64().unwrap_or(0)
            )
            .chars()
            .take(200)
            .collect(),
            note: None,
            locator: Some(locator),
            reference: None,
            url: None,
        };
        // The service's own work: no key, no tenant scope. The same locator twice is kept once.
        match self
            .sensor
            .add_evidence(case_id, new, &RequestContext::default())
            .await
        {
            Ok(_) => Handled::Done,
            Err(IngestError::Orchestrator(orchestrator::Error::Store(error)))
                if error.is_unavailable() =>
            {
                Handled::Retry(error.to_string())
            }
            Err(error) => Handled::Poison(error.to_string()),
        }
    }
}
