//! Worker events in: each `evt.*` a worker publishes becomes a state-machine event applied
//! through the same transaction as a PATCH, together with the event's product and an inbox row
//! (consumer, message id). A redelivered message finds its inbox row and changes nothing.

use bus::Envelope;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;
use workflow::messages::{topic, AnalysisEvent};
use workflow::{ApprovalInput, Event, Status, StepResult};

use crate::exposition::TraceExemplar;
use crate::model::{Case, Outcome};
use crate::service::{timeline_entry, Error, Orchestrator, RequestContext, TransitionRequest};
use crate::store::{LockedCase, Tx};

/// The worker events the orchestrator acts on: those that move a case, and those it only
/// records on the timeline (`NOTED_EVENTS`).
pub const WORKER_EVENTS: [&str; 13] = [
    topic::ANALYSIS_FINDINGS,
    topic::ANALYSIS_SUMMARY,
    topic::PLAN_PROPOSED,
    topic::PLAN_FAILED,
    topic::PLAN_APPROVED,
    topic::PLAN_REJECTED,
    topic::PLAN_HELD,
    topic::PLAN_EXPLAINED,
    topic::STEP_RESULT,
    topic::EXEC_DONE,
    topic::EXEC_FAILED,
    topic::VERIFY_PASS,
    topic::VERIFY_FAILED,
];

/// Worker events that move nothing and become a `noted` timeline row, under this event name.
fn noted_event(kind: &str) -> Option<&'static str> {
    match kind {
        topic::PLAN_HELD => Some("gate_held"),
        topic::PLAN_EXPLAINED => Some("gate_explanation"),
        topic::ANALYSIS_SUMMARY => Some("findings_summary"),
        topic::STEP_RESULT => Some("step_result"),
        _ => None,
    }
}

/// What became of one consumed message.
#[derive(Debug)]
pub enum Consumed {
    /// The case moved (by one event, or two for a plan that arrives during analysis).
    Applied { case: Box<Case>, events: Vec<Event> },
    /// This consumer had handled the message already.
    Duplicate,
    /// The case could not take the event (it moved on); recorded on the timeline.
    Ignored { status: Status },
    /// A guard refused the event's product; recorded on the timeline.
    Refused,
    /// Recorded on the timeline without a transition (a step result, a gate hold).
    Noted,
}

/// What a worker event carries. Every field is optional: each event uses its own.
#[derive(Debug, Default, Deserialize)]
struct WorkerData {
    /// The worker that acted, as it names itself.
    actor: Option<String>,
    reason: Option<String>,
    plan: Option<Value>,
    plan_id: Option<Uuid>,
    policy_rev: Option<String>,
    inputs: Option<Value>,
    #[serde(default)]
    results: Vec<StepResult>,
    /// The rollback steps run after a failed execution.
    #[serde(default)]
    rollback: Vec<StepResult>,
    /// The gate rule that fired.
    rule: Option<String>,
    /// Who asked for a proposed plan.
    requested_by: Option<String>,
    /// A verdict: `pass`, `fail`, `inconclusive` (or, from older workers, an object).
    verdict: Option<Value>,
    /// The verifier's checks with the numbers they saw.
    checks: Option<Value>,
    /// A refused plan's validation errors.
    errors: Option<Value>,
    /// The model calls behind a plan (or its failure).
    llm: Option<Value>,
    /// What the Librarian found for a proposed plan's case.
    references: Option<workflow::references::References>,
}

impl Orchestrator {
    /// Apply one worker event for `consumer`, exactly once in effect.
    pub async fn consume(&self, consumer: &str, envelope: &Envelope) -> Result<Consumed, Error> {
        let case_id = Uuid::parse_str(&envelope.subject).map_err(|_| {
            Error::BadMessage(format!("subject {:?} is not a case id", envelope.subject))
        })?;
        if let Some(name) = noted_event(&envelope.kind) {
            return self.note(consumer, envelope, case_id, name).await;
        }
        if envelope.kind == topic::ANALYSIS_FINDINGS {
            return self.consume_findings(consumer, envelope, case_id).await;
        }
        let event = fsm_event(&envelope.kind)
            .ok_or_else(|| Error::BadMessage(format!("{} is not a worker event", envelope.kind)))?;
        let data: WorkerData = serde_json::from_value(envelope.data.clone())
            .map_err(|e| Error::BadMessage(format!("{}: data: {e}", envelope.kind)))?;
        let context = event_context(envelope);
        let now = Utc::now();
        let Some((mut tx, locked)) = self
            .first_delivery(consumer, envelope, case_id, now)
            .await?
        else {
            return Ok(Consumed::Duplicate);
        };
        // The planner's answer while the case is still analysing finishes the analysis first,
        // whether it is a plan or the planner's failure (which then parks the case, visibly).
        let mut events = vec![event];
        if matches!(event, Event::PlanReady | Event::PlanFailed)
            && locked.case.status == Status::Analyzing
        {
            events.insert(0, Event::AnalysisDone);
        }
        let mut applied = Vec::new();
        let mut last = locked.case;
        for event in &events {
            let request = self.redacted(request_of(case_id, *event, &data, envelope));
            match self.step(tx.as_mut(), &request, &context, now).await {
                Ok((case, accepted)) => {
                    applied.push((accepted.from, accepted.to, *event));
                    last = case;
                }
                Err(Error::Illegal { case, .. }) => {
                    let mut meta = request.meta.clone();
                    meta.insert(
                        "ignored".into(),
                        json!(format!("{event} is not allowed in {}", case.status)),
                    );
                    tx.record_timeline(&timeline_entry(
                        &case,
                        &request,
                        Outcome::Ignored,
                        case.status,
                        case.status,
                        meta,
                        &context,
                        now,
                    ))
                    .await?;
                    tx.commit().await?;
                    self.metrics()
                        .conflict(crate::metrics::ConflictReason::IllegalTransition);
                    tracing::info!(case_id = %case_id, event = %event, status = %case.status, "worker event ignored");
                    return Ok(Consumed::Ignored {
                        status: case.status,
                    });
                }
                Err(Error::GuardFailed { .. }) => {
                    tx.commit().await?;
                    self.metrics()
                        .conflict(crate::metrics::ConflictReason::GuardFailed);
                    return Ok(Consumed::Refused);
                }
                Err(other) => return Err(other),
            }
        }
        tx.commit().await?;
        for (from, to, event) in &applied {
            self.metrics().transition(*from, *to, event.as_str());
        }
        self.measure_worker_event(envelope);
        self.outbox_written().notify_one();
        Ok(Consumed::Applied {
            case: Box::new(last),
            events: applied.into_iter().map(|(_, _, e)| e).collect(),
        })
    }
}

impl Orchestrator {
    /// A transaction holding `consumer`'s inbox row for the message and the case's lock, or
    /// `None` when the consumer handled the message already.
    async fn first_delivery(
        &self,
        consumer: &str,
        envelope: &Envelope,
        case_id: Uuid,
        now: chrono::DateTime<Utc>,
    ) -> Result<Option<(Box<dyn Tx>, LockedCase)>, Error> {
        let mut tx = self.store().begin().await?;
        if !tx.insert_inbox(consumer, envelope.id, now).await? {
            self.metrics().inbox_duplicate();
            return Ok(None);
        }
        let locked = tx
            .lock_case(case_id)
            .await?
            .ok_or_else(|| Error::BadMessage(format!("case {case_id} does not exist")))?;
        Ok(Some((tx, locked)))
    }

    /// The analyst's findings: they end ANALYZING (`analysis_done`, carrying them, so that the
    /// planner's command gets them), and are recorded as an `analysis_findings` row in any other
    /// state, for the plans to come.
    async fn consume_findings(
        &self,
        consumer: &str,
        envelope: &Envelope,
        case_id: Uuid,
    ) -> Result<Consumed, Error> {
        let data: AnalysisEvent = serde_json::from_value(envelope.data.clone())
            .map_err(|e| Error::BadMessage(format!("{}: data: {e}", envelope.kind)))?;
        let context = event_context(envelope);
        let now = Utc::now();
        let Some((mut tx, locked)) = self
            .first_delivery(consumer, envelope, case_id, now)
            .await?
        else {
            return Ok(Consumed::Duplicate);
        };
        let case = locked.case;
        let mut meta = Map::new();
        meta.insert("message_id".into(), json!(envelope.id));
        meta.insert("source".into(), json!(envelope.source));
        meta.insert("run_id".into(), json!(data.run_id));
        if let Some(service) = &data.service {
            meta.insert("service".into(), json!(service));
        }
        meta.insert("window".into(), data.window.clone());
        meta.insert("findings".into(), json!(data.findings));
        if !data.dependencies.is_empty() {
            meta.insert("dependencies".into(), json!(data.dependencies));
        }
        let request = self.redacted(TransitionRequest {
            case_id,
            event: Event::AnalysisDone,
            actor: data.actor.clone(),
            reason: Some(data.reason.clone()),
            meta,
            plan: None,
            approval: None,
            results: Vec::new(),
            if_match: None,
            expected_version: None,
            policy_rev: None,
            decision_inputs: None,
            plan_requester: None,
            plan_references: None,
        });
        if case.status != Status::Analyzing {
            tx.record_timeline(&crate::model::NewTimelineEntry {
                event: FINDINGS_NOTED.into(),
                ..timeline_entry(
                    &case,
                    &request,
                    Outcome::Noted,
                    case.status,
                    case.status,
                    request.meta.clone(),
                    &context,
                    now,
                )
            })
            .await?;
            tx.commit().await?;
            return Ok(Consumed::Noted);
        }
        let (moved, accepted) = self.step(tx.as_mut(), &request, &context, now).await?;
        tx.commit().await?;
        self.metrics()
            .transition(accepted.from, accepted.to, Event::AnalysisDone.as_str());
        self.outbox_written().notify_one();
        Ok(Consumed::Applied {
            case: Box::new(moved),
            events: vec![Event::AnalysisDone],
        })
    }

    /// Record a worker event that moves nothing as a `noted` timeline row.
    async fn note(
        &self,
        consumer: &str,
        envelope: &Envelope,
        case_id: Uuid,
        name: &str,
    ) -> Result<Consumed, Error> {
        let Value::Object(data) = envelope.data.clone() else {
            return Err(Error::BadMessage(format!(
                "{}: data is not an object",
                envelope.kind
            )));
        };
        let now = Utc::now();
        let Some((mut tx, locked)) = self
            .first_delivery(consumer, envelope, case_id, now)
            .await?
        else {
            return Ok(Consumed::Duplicate);
        };
        let case = locked.case;
        let actor = data
            .get("actor")
            .and_then(Value::as_str)
            .unwrap_or_else(|| default_actor(&envelope.kind))
            .to_string();
        let reason = data
            .get("reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut meta = self.redact_meta(data);
        meta.insert("message_id".into(), json!(envelope.id));
        meta.insert("source".into(), json!(envelope.source));
        let context = event_context(envelope);
        tx.record_timeline(&crate::model::NewTimelineEntry {
            case_id,
            version: case.version,
            event: name.to_string(),
            outcome: Outcome::Noted,
            from_status: Some(case.status),
            to_status: Some(case.status),
            actor,
            principal_id: None,
            principal_name: None,
            reason: reason.map(|r| self.redact_text(&r)),
            correlation_id: context.correlation_id.clone(),
            request_id: None,
            meta: crate::service::server_meta(meta, &context),
            created_at: now,
        })
        .await?;
        tx.commit().await?;
        if name == "step_result" {
            let data = &envelope.data;
            self.metrics().step_attempt(
                label(data, "action"),
                label(data, "status"),
                data["duration_ms"].as_f64().unwrap_or_default() / 1000.0,
                exemplar(envelope),
            );
        } else if name == "gate_held" {
            self.metrics()
                .gate_decision("held", label(&envelope.data, "rule"));
        }
        Ok(Consumed::Noted)
    }
}

impl Orchestrator {
    /// What an applied worker event says about the workers: gate decisions, verifications.
    fn measure_worker_event(&self, envelope: &Envelope) {
        let data = &envelope.data;
        match envelope.kind.as_str() {
            topic::PLAN_APPROVED => self
                .metrics()
                .gate_decision("approved", label(data, "rule")),
            topic::PLAN_REJECTED => self
                .metrics()
                .gate_decision("rejected", label(data, "rule")),
            topic::VERIFY_PASS | topic::VERIFY_FAILED => self.metrics().verification(
                label(data, "source"),
                label(data, "verdict"),
                data["duration_ms"].as_f64().unwrap_or_default() / 1000.0,
                exemplar(envelope),
            ),
            _ => {}
        }
    }
}

/// The trace of a worker event (the one its timeline row names), for a latency's exemplar.
fn exemplar(envelope: &Envelope) -> Option<TraceExemplar> {
    envelope
        .traceparent
        .as_deref()
        .and_then(TraceExemplar::from_traceparent)
}

/// A string field of a worker event as a metric label (`unknown` when absent).
fn label<'a>(data: &'a Value, field: &str) -> &'a str {
    data[field]
        .as_str()
        .filter(|value| !value.is_empty())
        .unwrap_or("unknown")
}

fn fsm_event(kind: &str) -> Option<Event> {
    Some(match kind {
        topic::PLAN_PROPOSED => Event::PlanReady,
        topic::PLAN_FAILED => Event::PlanFailed,
        topic::PLAN_APPROVED => Event::GateApproved,
        topic::PLAN_REJECTED => Event::GateRejected,
        topic::EXEC_DONE => Event::ExecDone,
        topic::EXEC_FAILED => Event::ExecFailed,
        topic::VERIFY_PASS => Event::VerifyPass,
        topic::VERIFY_FAILED => Event::VerifyFailed,
        _ => return None,
    })
}

fn request_of(
    case_id: Uuid,
    event: Event,
    data: &WorkerData,
    envelope: &Envelope,
) -> TransitionRequest {
    let actor = data
        .actor
        .clone()
        .unwrap_or_else(|| default_actor(&envelope.kind).to_string());
    let mut meta = Map::new();
    meta.insert("message_id".into(), json!(envelope.id));
    meta.insert("source".into(), json!(envelope.source));
    if !data.results.is_empty() {
        meta.insert("results".into(), json!(data.results));
    }
    if !data.rollback.is_empty() {
        meta.insert("rollback".into(), json!(data.rollback));
    }
    if let (Event::PlanReady, Some(references)) = (event, &data.references) {
        meta.insert("references".into(), references.summary());
    }
    for (key, value) in [
        ("verdict", &data.verdict),
        ("checks", &data.checks),
        ("errors", &data.errors),
        ("llm", &data.llm),
        ("policy_rev", &data.policy_rev.clone().map(Value::String)),
        ("rule", &data.rule.clone().map(Value::String)),
        ("inputs", &data.inputs),
    ] {
        if let Some(value) = value {
            meta.insert(key.into(), value.clone());
        }
    }
    TransitionRequest {
        case_id,
        event,
        approval: (event == Event::GateApproved).then(|| ApprovalInput {
            plan_id: data.plan_id.map(|id| id.to_string()),
            approver: actor.clone(),
        }),
        actor,
        reason: data.reason.clone(),
        meta,
        plan: (event == Event::PlanReady)
            .then(|| data.plan.clone())
            .flatten(),
        results: data.results.clone(),
        if_match: None,
        expected_version: None,
        policy_rev: data.policy_rev.clone(),
        plan_requester: data.requested_by.clone(),
        plan_references: (event == Event::PlanReady)
            .then(|| data.references.clone())
            .flatten(),
        decision_inputs: data.inputs.clone().map(|mut inputs| {
            if let (Value::Object(map), Some(rule)) = (&mut inputs, &data.rule) {
                map.insert("rule".into(), json!(rule));
            }
            inputs
        }),
    }
}

/// A worker event's trace (the span handling it, a child of the event's) and correlation, for
/// the rows it writes.
fn event_context(envelope: &Envelope) -> RequestContext {
    let trace = bus::trace::current_or(envelope.trace());
    RequestContext {
        traceparent: trace.as_ref().map(bus::TraceContext::traceparent),
        tracestate: trace.as_ref().and_then(bus::TraceContext::tracestate),
        correlation_id: Some(envelope.id.to_string()),
        ..RequestContext::default()
    }
}

/// The timeline event of findings that arrive when the case is no longer analysing.
pub const FINDINGS_NOTED: &str = "analysis_findings";

fn default_actor(kind: &str) -> &'static str {
    match kind.split('.').nth(1) {
        Some("analysis") => "analyst",
        Some("plan") if kind.contains("proposed") => "planner",
        Some("plan") => "gatekeeper",
        Some("exec") => "executor",
        Some("verify") => "verifier",
        _ => "worker",
    }
}

/// The inbox name the orchestrator's consumers share.
pub const CONSUMER: &str = "orchestrator";

/// The orchestrator's durable consumers on `OPS_EVT`: one per worker-event family, since a
/// JetStream consumer before server 2.10 takes a single filter subject.
pub fn event_consumers() -> Vec<bus::ConsumerSettings> {
    [
        ("orchestrator-analysis", "evt.analysis.>"),
        ("orchestrator-plan", "evt.plan.>"),
        ("orchestrator-exec", "evt.exec.>"),
        ("orchestrator-verify", "evt.verify.>"),
    ]
    .into_iter()
    .map(|(name, subject)| bus::ConsumerSettings::new(name, bus::STREAM_EVENTS, subject))
    .collect()
}

/// The orchestrator as a consumer of the embedded bus.
pub fn embedded_subscription(
    orchestrator: std::sync::Arc<Orchestrator>,
) -> crate::embedded::Subscription {
    crate::embedded::Subscription {
        consumer: CONSUMER.into(),
        topics: WORKER_EVENTS.iter().map(|t| t.to_string()).collect(),
        handler: std::sync::Arc::new(EventHandler::new(orchestrator)),
    }
}

/// Feeds bus messages to [`Orchestrator::consume`].
pub struct EventHandler {
    orchestrator: std::sync::Arc<Orchestrator>,
}

impl EventHandler {
    pub fn new(orchestrator: std::sync::Arc<Orchestrator>) -> Self {
        Self { orchestrator }
    }
}

#[async_trait::async_trait]
impl bus::Handler for EventHandler {
    async fn handle(&self, envelope: &Envelope) -> bus::Handled {
        // Other events under the same subjects (step results) are for other readers.
        if !WORKER_EVENTS.contains(&envelope.kind.as_str()) {
            return bus::Handled::Done;
        }
        match self.orchestrator.consume(CONSUMER, envelope).await {
            Ok(_) => bus::Handled::Done,
            Err(Error::BadMessage(reason)) => bus::Handled::Poison(reason),
            Err(error) => bus::Handled::Retry(error.to_string()),
        }
    }
}
