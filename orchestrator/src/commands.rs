//! Commands to the workers. A command is an outbox message carrying everything its stateless
//! worker needs (the case brief, the plan); the orchestrator writes it either with a
//! transition (`automation: auto`) or on an operator's request (`POST /v1/plan/generate`, ...),
//! in the latter case with a timeline row, in one transaction, after checking that the
//! command makes sense for the case's state.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;
use workflow::messages::{
    topic, AnalysisCommand, CaseBrief, ExecCommand, GateCommand, PlanCommand, VerifyCommand,
};
use workflow::Status;

use crate::idempotency::{IdempotencyClaim, StoredResponse};
use crate::model::{Case, NewTimelineEntry, OutboxMessage, Outcome, PlanRecord, TimelineEntry};
use crate::service::{Error, Orchestrator, RequestContext};

/// What an operator asks a worker to do.
#[derive(Debug, Clone, Default)]
pub struct CommandRequest {
    pub case_id: Uuid,
    /// One of the `cmd.*` topics.
    pub topic: &'static str,
    pub actor: String,
    /// `cmd.plan.generate`: the template and its inputs.
    pub template: Option<String>,
    pub params: Map<String, Value>,
    /// `cmd.exec.run`: an ad-hoc step list to run in place of the plan's (already allowed by
    /// the gate policy), or a dry run.
    pub steps: Option<Vec<Value>>,
    pub dry_run: bool,
    /// `cmd.analysis.run`: the minutes before now to analyse (the analyst's default if absent).
    pub window_minutes: Option<u32>,
}

/// Extra inputs a command carries besides the case and its plan.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommandOptions {
    pub template: Option<String>,
    pub params: Map<String, Value>,
    pub steps: Option<Vec<Value>>,
    pub dry_run: bool,
    pub reason: Option<String>,
    pub window_minutes: Option<u32>,
    /// The case's latest findings, for the brief of `cmd.plan.generate`.
    pub findings: Vec<Value>,
}

/// A command written to the outbox.
#[derive(Debug, Clone)]
pub struct Issued {
    pub command_id: Uuid,
    pub topic: &'static str,
    /// The case as it is now (for a replay, maybe moved on since the command was written).
    pub case: Case,
    /// The case's version when the command was written: a later one means it was applied.
    pub version: i64,
    /// The timeline row recording the request; answers come after it.
    pub timeline_id: i64,
    /// The request repeated an Idempotency-Key: nothing was written, this is the first one.
    pub replayed: bool,
}

/// How a command's case stands when the caller stops waiting.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The case moved.
    Applied(Case),
    /// The worker answered without moving the case (a refused plan, a gate hold, a late event).
    Answered {
        case: Case,
        entry: Box<TimelineEntry>,
    },
    /// Nothing yet: the worker is still at it, or the bus is slow.
    Pending(Case),
}

/// The states in which each command makes sense.
pub fn accepted_states(topic: &str) -> &'static [Status] {
    match topic {
        // An analysis only reads, so it may run at any time before the case is closed; its
        // findings end ANALYZING, and elsewhere are recorded for the plans to come.
        topic::ANALYSIS_RUN => &[
            Status::New,
            Status::Analyzing,
            Status::Planning,
            Status::WaitGate,
            Status::Executing,
            Status::Verifying,
            Status::Parked,
        ],
        topic::PLAN_GENERATE => &[Status::Analyzing, Status::Planning],
        topic::GATE_EVAL => &[Status::WaitGate],
        topic::EXEC_RUN => &[Status::Executing],
        topic::VERIFY_RUN => &[Status::Verifying],
        topic::EXEC_ROLLBACK => &[Status::Executing, Status::Verifying, Status::Parked],
        _ => &[],
    }
}

fn needs_plan(topic: &str) -> bool {
    topic != topic::PLAN_GENERATE && topic != topic::ANALYSIS_RUN
}

impl Orchestrator {
    /// Write `request`'s command and its timeline row, or refuse it (409) when the case is not
    /// in a state where it makes sense; nothing is written then. With an Idempotency-Key, the
    /// command is written once: a repeat gets the first one back (to wait for its answer), and
    /// the key with another request is refused.
    pub async fn issue_command(
        &self,
        request: &CommandRequest,
        context: &RequestContext,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Issued, Error> {
        let _in_flight = self.claim_key(idempotency)?;
        let now = Utc::now();
        let mut tx = self.store().begin().await?;
        let locked = tx
            .lock_case(request.case_id)
            .await?
            .ok_or(Error::NotFound(request.case_id))?;
        let case = locked.case;
        if context
            .tenant_scope()
            .is_some_and(|tenant| tenant != case.tenant)
        {
            return Err(Error::NotFound(request.case_id));
        }
        if let Some(claim) = idempotency {
            if let Some(record) = tx.find_idempotency(&claim.scope, &claim.key, now).await? {
                if record.fingerprint != claim.fingerprint {
                    return Err(Error::IdempotencyMismatch);
                }
                return first_issued(request.topic, case, &record.response);
            }
        }
        let states = accepted_states(request.topic);
        // A dry run only describes, so it may also look at a plan still waiting at the gate.
        let dry_run_at_gate = request.dry_run && case.status == Status::WaitGate;
        if !states.contains(&case.status) && !dry_run_at_gate {
            let expected: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            return Err(Error::CommandNotApplicable {
                reason: format!(
                    "{} needs the case in {}, but it is {}",
                    request.topic,
                    expected.join(" or "),
                    case.status
                ),
                case: Box::new(case),
            });
        }
        let plan = match case.current_plan_id {
            Some(id) if needs_plan(request.topic) => tx.plan(id).await?,
            _ => None,
        };
        if needs_plan(request.topic) && plan.is_none() {
            return Err(Error::CommandNotApplicable {
                reason: format!("{} needs a plan, and the case has none", request.topic),
                case: Box::new(case),
            });
        }
        let findings = if request.topic == topic::PLAN_GENERATE {
            tx.latest_findings(case.id).await?.unwrap_or_default()
        } else {
            Vec::new()
        };
        let options = CommandOptions {
            template: request.template.clone(),
            params: request.params.clone(),
            steps: request.steps.clone(),
            dry_run: request.dry_run,
            reason: None,
            window_minutes: request.window_minutes,
            findings,
        };
        let command_id = Uuid::now_v7();
        let message = command_message(
            command_id,
            &case,
            request.topic,
            plan.as_ref(),
            &context.identity_or(&request.actor),
            &options,
            context,
            now,
        );
        let mut meta = Map::new();
        meta.insert("command_id".into(), json!(command_id));
        meta.insert("topic".into(), json!(request.topic));
        if let Some(template) = &request.template {
            meta.insert("template".into(), json!(template));
        }
        if let Some(steps) = &request.steps {
            meta.insert(
                "steps".into(),
                json!(steps.iter().map(audit_view).collect::<Vec<_>>()),
            );
        }
        if request.dry_run {
            meta.insert("dry_run".into(), json!(true));
        }
        if let Some(minutes) = request.window_minutes {
            meta.insert("window_minutes".into(), json!(minutes));
        }
        let timeline_id = tx
            .append_timeline(&NewTimelineEntry {
                case_id: case.id,
                version: case.version,
                event: request.topic.to_string(),
                outcome: Outcome::Requested,
                from_status: Some(case.status),
                to_status: Some(case.status),
                actor: request.actor.clone(),
                principal_id: context.principal_identity(),
                principal_name: context.principal_name(),
                reason: None,
                correlation_id: Some(command_id.to_string()),
                request_id: context.request_id.clone(),
                meta: crate::service::server_meta(self.redact_meta(meta), context),
                created_at: now,
            })
            .await?;
        tx.append_outbox(&message).await?;
        // What a repeat needs to wait for this command's answer.
        let issued = StoredResponse {
            status: 200,
            body: json!({"command_id": command_id, "version": case.version,
                         "timeline_id": timeline_id}),
            headers: Vec::new(),
        };
        self.save_response(tx.as_mut(), idempotency, issued, now)
            .await?;
        tx.commit().await?;
        self.outbox_written().notify_one();
        Ok(Issued {
            command_id,
            topic: request.topic,
            version: case.version,
            case,
            timeline_id,
            replayed: false,
        })
    }

    /// Wait until the command's answer lands on the case, or `wait` passes.
    pub async fn await_answer(&self, issued: &Issued, wait: Duration) -> Result<Answer, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut poll = Duration::from_millis(10);
        loop {
            let case = self
                .store()
                .get_case(issued.case.id)
                .await?
                .ok_or(Error::NotFound(issued.case.id))?;
            if case.version != issued.version {
                return Ok(Answer::Applied(case));
            }
            let later = self
                .store()
                .timeline(issued.case.id, Some(issued.timeline_id), 50)
                .await?;
            if let Some(entry) = later.into_iter().find(is_an_answer) {
                return Ok(Answer::Answered {
                    case,
                    entry: Box::new(entry),
                });
            }
            if tokio::time::Instant::now() + poll > deadline {
                return Ok(Answer::Pending(case));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(200));
        }
    }
}

/// The command an Idempotency-Key first wrote, from its record.
fn first_issued(topic: &'static str, case: Case, record: &Value) -> Result<Issued, Error> {
    let corrupt = || {
        Error::Store(crate::store::StoreError::Corrupt(
            "idempotency record of a command".into(),
        ))
    };
    Ok(Issued {
        command_id: record["command_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .ok_or_else(corrupt)?,
        topic,
        version: record["version"].as_i64().ok_or_else(corrupt)?,
        timeline_id: record["timeline_id"].as_i64().ok_or_else(corrupt)?,
        case,
        replayed: true,
    })
}

/// A row that ends a caller's wait without a transition: a refusal, a late event, a hold.
fn is_an_answer(entry: &TimelineEntry) -> bool {
    match entry.outcome {
        Outcome::Rejected | Outcome::Ignored => true,
        Outcome::Noted => entry.event == "gate_held" || entry.event == "analysis_findings",
        _ => false,
    }
}

/// A step as the timeline shows it: its arguments as one line, so that a secret split over
/// several arguments (`Bearer`, `abc...`) is still recognised and masked by redaction.
fn audit_view(step: &Value) -> Value {
    let mut step = step.clone();
    if let Some(args) = step["params"]["args"].as_array() {
        let line: Vec<&str> = args.iter().filter_map(Value::as_str).collect();
        step["params"]["args"] = Value::String(line.join(" "));
    }
    step
}

/// The brief a worker gets about the case, with its latest findings.
pub(crate) fn brief(case: &Case, findings: Vec<Value>) -> CaseBrief {
    CaseBrief {
        id: case.id.to_string(),
        tenant: case.tenant.clone(),
        title: case.title.clone(),
        severity: case.severity.as_str().to_string(),
        labels: case.labels.clone(),
        evidence: case.evidence.clone(),
        version: case.version,
        findings,
    }
}

/// The outbox message of a command, with everything its worker needs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn command_message(
    id: Uuid,
    case: &Case,
    topic: &str,
    plan: Option<&PlanRecord>,
    requested_by: &str,
    options: &CommandOptions,
    context: &RequestContext,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let case_brief = brief(case, options.findings.clone());
    let plan_id = plan.map(|p| p.id.to_string()).unwrap_or_default();
    let plan_json = plan.map(|p| p.plan.clone()).unwrap_or(Value::Null);
    let payload = match topic {
        topic::ANALYSIS_RUN => json!(AnalysisCommand {
            case: case_brief,
            requested_by: requested_by.to_string(),
            window_minutes: options.window_minutes,
        }),
        topic::PLAN_GENERATE => json!(PlanCommand {
            case: case_brief,
            requested_by: requested_by.to_string(),
            template: options.template.clone(),
            params: options.params.clone(),
            references: None,
        }),
        topic::GATE_EVAL => json!(GateCommand {
            case: case_brief,
            plan_id,
            requested_by: plan
                .map(|p| p.requested_by_key.clone().unwrap_or(p.requested_by.clone()))
                .unwrap_or_default(),
            plan: plan_json,
        }),
        topic::VERIFY_RUN => json!(VerifyCommand {
            case: case_brief,
            plan_id,
            verify: plan_json.get("verify").cloned().unwrap_or(Value::Null),
        }),
        // cmd.exec.run and cmd.exec.rollback
        _ => json!(ExecCommand {
            case: case_brief,
            plan_id,
            plan: plan_json,
            dry_run: options.dry_run,
            steps: options.steps.clone(),
            reason: options.reason.clone(),
        }),
    };
    OutboxMessage {
        message_id: id,
        topic: topic.into(),
        key: case.id.to_string(),
        payload,
        headers: context.outbox_headers(),
        created_at: now,
    }
}
