//! The planner worker: one `cmd.plan.generate` in, one plan event out.

use std::sync::Arc;

use async_trait::async_trait;
use bus::{answer, Envelope, Publisher, Worker, WorkerError};
use serde_json::{json, Value};
use workflow::messages::{topic, PlanCommand, PlanEvent};

use crate::llm::{LlmPlanner, ModelPlan, LLM_TEMPLATE};
use crate::templates::{chosen_template, generate, PlanError};

/// The CloudEvents `source` of the planner's events unless configured otherwise.
pub const DEFAULT_SOURCE: &str = "opscase/planner";

/// Answers `cmd.plan.generate` with `evt.plan.proposed.v1` (a plan that passed the ChangePlan
/// guard, `actor` = `planner/<template>`) or `evt.plan.failed.v1` (`actor` = `planner`, with
/// the reason and the field errors). The answer's id is
/// `bus::answer_id(command, <topic>, "")`, so a redelivered command publishes under the same
/// id and the bus drops it; a template's plan is deterministic as well.
#[derive(Clone)]
pub struct Planner {
    /// The CloudEvents `source` of the events it publishes.
    pub source: String,
    /// The model behind the `llm` template, when one is configured.
    model: Option<Arc<LlmPlanner>>,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner")
            .field("source", &self.source)
            .field("model", &self.model.is_some())
            .finish()
    }
}

impl Planner {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            model: None,
        }
    }

    /// Answer the `llm` template with `model`.
    pub fn with_model(mut self, model: Arc<LlmPlanner>) -> Self {
        self.model = Some(model);
        self
    }

    /// The plan event for `request`: a template's plan, or the model's.
    async fn propose(&self, request: &PlanCommand) -> (&'static str, PlanEvent) {
        match (&self.model, chosen_template(request)) {
            (Some(model), LLM_TEMPLATE) => self.model_plan(model, request).await,
            _ => template_plan(request, None),
        }
    }

    async fn model_plan(
        &self,
        model: &LlmPlanner,
        request: &PlanCommand,
    ) -> (&'static str, PlanEvent) {
        match model.plan(request).await {
            Ok(ModelPlan { plan, llm }) => {
                tracing::info!(case_id = %request.case.id, "plan proposed by the model");
                proposed(request, LLM_TEMPLATE, plan, Some(llm))
            }
            Err(failure) => match model.fallback_template() {
                Some(fallback) if failure.unavailable => {
                    tracing::warn!(case_id = %request.case.id, reason = %failure.error.reason,
                        fallback, "the model is unavailable: the fallback template plans");
                    let mut llm = failure.llm;
                    llm["fallback"] = json!(fallback);
                    llm["reason"] = json!(failure.error.reason);
                    let mut instead = request.clone();
                    instead.template = Some(fallback.to_string());
                    template_plan(&instead, Some(llm))
                }
                _ => {
                    tracing::warn!(case_id = %request.case.id, reason = %failure.error.reason,
                        "no plan from the model");
                    failed(failure.error, Some(failure.llm))
                }
            },
        }
    }
}

impl Default for Planner {
    fn default() -> Self {
        Self::new(DEFAULT_SOURCE)
    }
}

fn template_plan(request: &PlanCommand, llm: Option<Value>) -> (&'static str, PlanEvent) {
    match generate(request) {
        Ok((template, plan)) => {
            tracing::info!(case_id = %request.case.id, %template, "plan proposed");
            proposed(request, &template, plan, llm)
        }
        Err(error) => {
            tracing::warn!(case_id = %request.case.id, reason = %error.reason, "no plan");
            failed(error, llm)
        }
    }
}

fn proposed(
    request: &PlanCommand,
    template: &str,
    plan: Value,
    llm: Option<Value>,
) -> (&'static str, PlanEvent) {
    (
        topic::PLAN_PROPOSED,
        PlanEvent {
            actor: format!("planner/{template}"),
            requested_by: Some(request.requested_by.clone()),
            plan: Some(plan),
            template: Some(template.to_string()),
            llm,
            ..PlanEvent::default()
        },
    )
}

fn failed(error: PlanError, llm: Option<Value>) -> (&'static str, PlanEvent) {
    (
        topic::PLAN_FAILED,
        PlanEvent {
            actor: "planner".into(),
            reason: Some(error.reason),
            errors: error.errors,
            llm,
            ..PlanEvent::default()
        },
    )
}

#[async_trait]
impl Worker for Planner {
    fn role(&self) -> &'static str {
        "planner"
    }

    fn commands(&self) -> &'static [&'static str] {
        &[topic::PLAN_GENERATE]
    }

    async fn handle(&self, command: &Envelope, out: &dyn Publisher) -> Result<(), WorkerError> {
        if command.kind != topic::PLAN_GENERATE {
            return Err(WorkerError::Poison(format!(
                "the planner takes {}, not {}",
                topic::PLAN_GENERATE,
                command.kind
            )));
        }
        let request: PlanCommand = serde_json::from_value(command.data.clone()).map_err(|e| {
            WorkerError::Poison(format!("{} data is malformed: {e}", topic::PLAN_GENERATE))
        })?;
        let (kind, event) = self.propose(&request).await;
        let data = serde_json::to_value(&event)
            .map_err(|e| WorkerError::Poison(format!("plan event is not JSON: {e}")))?;
        out.publish(answer(command, &self.source, kind, "", data))
            .await
            .map_err(|e| WorkerError::Retry(format!("publishing {kind}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bus::{answer_id, BusError};
    use chrono::Utc;
    use serde_json::{json, Value};
    use uuid::Uuid;
    use workflow::messages::CaseBrief;

    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Envelope>>);

    #[async_trait]
    impl Publisher for Collect {
        async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
            self.0.lock().unwrap().push(envelope);
            Ok(())
        }
    }

    struct Down;

    #[async_trait]
    impl Publisher for Down {
        async fn publish(&self, _: Envelope) -> Result<(), BusError> {
            Err(BusError::Unavailable("connection refused".into()))
        }
    }

    fn command(data: Value) -> Envelope {
        Envelope::new(
            Uuid::new_v4(),
            "opscase/orchestrator",
            topic::PLAN_GENERATE,
            "case-1",
            Utc::now(),
            data,
        )
        .with_traceparent(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ))
    }

    fn plan_command(template: Option<&str>, labels: &[(&str, &str)]) -> Value {
        serde_json::to_value(PlanCommand {
            case: CaseBrief {
                id: "case-1".into(),
                tenant: "t-001".into(),
                title: "p95 spike".into(),
                severity: "high".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                evidence: vec![],
                version: 2,
                findings: vec![],
            },
            requested_by: "alice".into(),
            template: template.map(str::to_string),
            params: Default::default(),
            references: None,
        })
        .unwrap()
    }

    #[test]
    fn role_and_commands() {
        let planner = Planner::default();
        assert_eq!(planner.role(), "planner");
        assert_eq!(planner.commands(), &["cmd.plan.generate"]);
        assert!(!planner.detached());
        assert_eq!(planner.source, DEFAULT_SOURCE);
    }

    #[tokio::test]
    async fn a_plan_is_proposed_once_with_the_answer_id() {
        let planner = Planner::new("test/planner");
        let out = Collect::default();
        let cmd = command(plan_command(
            Some("k8s.rollout.canary"),
            &[("service", "checkout"), ("image", "checkout:2")],
        ));
        planner.handle(&cmd, &out).await.unwrap();

        let published = out.0.into_inner().unwrap();
        assert_eq!(published.len(), 1);
        let event = &published[0];
        assert_eq!(event.id, answer_id(&cmd, "evt.plan.proposed.v1", ""));
        assert_eq!(event.kind, "evt.plan.proposed.v1");
        assert_eq!(event.source, "test/planner");
        assert_eq!(event.subject, "case-1");
        assert_eq!(event.traceparent, cmd.traceparent);
        let data: PlanEvent = serde_json::from_value(event.data.clone()).unwrap();
        assert_eq!(data.actor, "planner/k8s.rollout.canary");
        assert_eq!(data.template.as_deref(), Some("k8s.rollout.canary"));
        assert_eq!(data.reason, None);
        let plan = data.plan.unwrap();
        assert_eq!(workflow::plan::check_change_plan(&plan), vec![]);
        assert_eq!(plan["steps"][0]["params"]["image"], "checkout:2");
    }

    #[tokio::test]
    async fn the_same_command_publishes_the_same_message() {
        let planner = Planner::default();
        let out = Collect::default();
        let cmd = command(plan_command(None, &[("service", "checkout")]));
        planner.handle(&cmd, &out).await.unwrap();
        planner.handle(&cmd, &out).await.unwrap();
        let published = out.0.into_inner().unwrap();
        assert_eq!(published.len(), 2);
        assert_eq!(published[0].id, published[1].id);
        assert_eq!(published[0].data, published[1].data);
        assert_eq!(published[0].data["template"], "noop.check");
    }

    #[tokio::test]
    async fn no_plan_publishes_a_failed_event() {
        let planner = Planner::default();
        let out = Collect::default();
        // The seed's demo case: no labels, so no deployment to roll.
        let cmd = command(plan_command(Some("k8s.rollout.canary"), &[]));
        planner.handle(&cmd, &out).await.unwrap();

        let published = out.0.into_inner().unwrap();
        assert_eq!(published.len(), 1);
        let event = &published[0];
        assert_eq!(event.kind, "evt.plan.failed.v1");
        assert_eq!(event.id, answer_id(&cmd, "evt.plan.failed.v1", ""));
        let data: PlanEvent = serde_json::from_value(event.data.clone()).unwrap();
        assert_eq!(data.actor, "planner");
        assert_eq!(data.plan, None);
        assert!(data.reason.unwrap().contains("deployment"));
        assert_eq!(data.errors[0]["field"], "params.deployment");
    }

    #[tokio::test]
    async fn a_plan_the_guard_refuses_is_never_proposed() {
        let planner = Planner::default();
        let out = Collect::default();
        let mut data = plan_command(Some("noop.check"), &[("service", "checkout")]);
        data["params"] = json!({"count": 0});
        let cmd = command(data);
        planner.handle(&cmd, &out).await.unwrap();
        let published = out.0.into_inner().unwrap();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].kind, "evt.plan.failed.v1");
        assert_eq!(published[0].data["errors"][0]["field"], "plan.verify.count");
        assert!(published[0].data.get("plan").is_none());
    }

    #[tokio::test]
    async fn malformed_data_is_poison() {
        let planner = Planner::default();
        let out = Collect::default();
        for data in [
            json!({"case": "nope"}),
            json!([]),
            json!({"requested_by": "a"}),
        ] {
            let error = planner.handle(&command(data), &out).await.unwrap_err();
            assert!(matches!(error, WorkerError::Poison(_)), "{error:?}");
        }
        let mut wrong_kind = command(plan_command(None, &[("service", "checkout")]));
        wrong_kind.kind = "cmd.gate.eval".into();
        assert!(matches!(
            planner.handle(&wrong_kind, &out).await,
            Err(WorkerError::Poison(_))
        ));
        assert!(out.0.into_inner().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_publish_failure_is_retried() {
        let planner = Planner::default();
        let cmd = command(plan_command(None, &[("service", "checkout")]));
        let error = planner.handle(&cmd, &Down).await.unwrap_err();
        assert!(matches!(error, WorkerError::Retry(_)), "{error:?}");
    }
}
