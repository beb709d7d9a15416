//! Commands to the workers: `POST /v1/analysis/run`, `/v1/plan/generate`, `/v1/gate/eval`,
//! `/v1/adapter/exec`, `/v1/verify/run` (and the seed's aliases without `/v1`). Each writes a `cmd.*` to the
//! outbox and a timeline row in one transaction, then by default waits (bounded) for the
//! worker's answer to land on the case; `Prefer: respond-async` answers 202 at once.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator::commands::{Answer, CommandRequest, Issued};
use orchestrator::model::{Case, TimelineEntry};
use orchestrator::IdempotencyClaim;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;
use workflow::messages::topic;

use crate::auth::{Allowed, Operate};
use crate::cases::{actor_of, request_context};
use crate::contract::{self, BodyLimit, CaseNotFound, Malformed};
use crate::extract::{self, JsonBody};
use crate::problem::Problem;
use crate::AppState;

/// `POST /v1/plan/generate`: ask the planner for a plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanGenerate {
    pub case_id: Uuid,
    #[schema(schema_with = contract::template_schema)]
    pub template: Option<String>,
    /// Template inputs; they override the case's labels.
    pub params: Option<Map<String, Value>>,
    #[schema(schema_with = contract::actor_schema)]
    pub actor: Option<String>,
}

/// `POST /v1/analysis/run`: ask the analyst to examine the case's service.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisRun {
    pub case_id: Uuid,
    /// Minutes before now to examine, 1 to 1440 (default `analyst.analysis.window_min`).
    #[schema(minimum = 1, maximum = 1440)]
    #[serde(default, deserialize_with = "workflow::integer::option")]
    pub window_minutes: Option<u32>,
    #[schema(schema_with = contract::actor_schema)]
    pub actor: Option<String>,
}

/// `POST /v1/gate/eval`: ask the gatekeeper to decide on the current plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateEval {
    pub case_id: Uuid,
    #[schema(schema_with = contract::actor_schema)]
    pub actor: Option<String>,
}

/// `POST /v1/verify/run`: ask the verifier to check the plan's `verify` section.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRun {
    pub case_id: Uuid,
    #[schema(schema_with = contract::actor_schema)]
    pub actor: Option<String>,
}

/// `POST /v1/adapter/exec`: run the approved plan, or one ad-hoc step the gate policy allows
/// on its own, or describe either without side effects (`dry_run`). `script`, `params` and
/// `timeout_s` describe the ad-hoc step, so they need `adapter` (else 422).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterExec {
    pub case_id: Uuid,
    #[schema(schema_with = contract::adapter_schema)]
    pub adapter: Option<String>,
    #[schema(schema_with = contract::script_schema)]
    pub script: Option<String>,
    /// The ad-hoc step's params, valid for its adapter (see `GET /v1/adapters`; else 422).
    pub params: Option<Map<String, Value>>,
    #[schema(schema_with = contract::adhoc_timeout_schema)]
    #[serde(default, deserialize_with = "workflow::integer::option")]
    pub timeout_s: Option<u32>,
    #[serde(default)]
    pub dry_run: bool,
    #[schema(schema_with = contract::actor_schema)]
    pub actor: Option<String>,
}

/// What became of a command.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandResult {
    pub command_id: Uuid,
    #[schema(example = "cmd.plan.generate")]
    pub topic: String,
    /// `accepted` (not waited for), `applied` (the case moved), `answered` (the worker answered
    /// without moving it: see `answer`), `pending` (no answer within the wait).
    #[schema(example = "applied")]
    pub status: String,
    pub case: Case,
    /// The timeline row that answered without a transition (a refused plan, a gate hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<TimelineEntry>,
}

const ADHOC_STEP_ID: &str = "adhoc-1";

/// A command route and its seed alias. `$extra` lists the responses only this command has.
macro_rules! command_routes {
    ($v1:ident, $alias:ident, $path:literal, $alias_path:literal, $body:ty, $summary:literal,
        [$($extra:tt)*]) => {
        #[doc = $summary]
        #[utoipa::path(post, path = $path, tag = "commands",
            params(("Prefer" = Option<String>, Header,
                description = "`respond-async`: answer 202 at once; `wait=N`: wait up to N seconds (default from config)"),
                contract::OptionalIdempotencyKey),
            request_body(content = $body, content_type = "application/json"),
            responses(
                (status = 200, description = "The worker answered", body = CommandResult),
                (status = 202, description = "Written; not answered yet (or not waited for)", body = CommandResult),
                (status = 409, description = "Not applicable in the case's state, or the same Idempotency-Key is still in flight", body = Problem, content_type = "application/problem+json"),
                $($extra)*
                Malformed, BodyLimit, CaseNotFound,
            ))]
        pub async fn $v1(
            state: State<AppState>,
            caller: Allowed<Operate>,
            headers: HeaderMap,
            body: JsonBody<$body>,
        ) -> Result<Response, Problem> {
            run(state, caller, headers, body, $path).await
        }

        #[doc = concat!("Seed alias of `", $path, "`.")]
        #[utoipa::path(post, path = $alias_path, tag = "seed aliases")]
        pub async fn $alias(
            state: State<AppState>,
            caller: Allowed<Operate>,
            headers: HeaderMap,
            body: JsonBody<$body>,
        ) -> Result<Response, Problem> {
            // The same command as its route, so one key covers both paths.
            run(state, caller, headers, body, $path).await
        }
    };
}

command_routes!(
    plan_generate,
    plan_generate_alias,
    "/v1/plan/generate",
    "/plan/generate",
    PlanGenerate,
    "Ask the planner for a ChangePlan (the case must be ANALYZING or PLANNING).",
    [(
        status = 422,
        description = "The same Idempotency-Key was used for a different request",
        body = Problem,
        content_type = "application/problem+json"
    ),]
);
command_routes!(
    gate_eval,
    gate_eval_alias,
    "/v1/gate/eval",
    "/gate/eval",
    GateEval,
    "Ask the gatekeeper to decide on the current plan (WAIT_GATE).",
    [(
        status = 422,
        description = "The same Idempotency-Key was used for a different request",
        body = Problem,
        content_type = "application/problem+json"
    ),]
);
command_routes!(
    adapter_exec,
    adapter_exec_alias,
    "/v1/adapter/exec",
    "/adapter/exec",
    AdapterExec,
    "Run the approved plan, or an ad-hoc step the gate policy allows on its own (EXECUTING).",
    [(
        status = 422,
        description = "The ad-hoc step is refused: by the gate policy (`rule` names it), \
        or its fields do not go together or its params do not fit its adapter (`field` names it); \
        or the same Idempotency-Key was used for a different request",
        body = Problem,
        content_type = "application/problem+json"
    ),]
);
command_routes!(
    verify_run,
    verify_run_alias,
    "/v1/verify/run",
    "/verify/run",
    VerifyRun,
    "Ask the verifier to check the plan's verification (VERIFYING).",
    [(
        status = 422,
        description = "The same Idempotency-Key was used for a different request",
        body = Problem,
        content_type = "application/problem+json"
    ),]
);

/// Ask the analyst to examine the case's service: metrics off their baseline, degraded
/// dependencies, recent deploys and configuration changes (any state but CLOSED). In
/// ANALYZING its findings move the case to PLANNING; later they are recorded for the next plan.
#[utoipa::path(post, path = "/v1/analysis/run", tag = "commands",
    params(("Prefer" = Option<String>, Header,
        description = "`respond-async`: answer 202 at once; `wait=N`: wait up to N seconds (default from config)"),
        contract::OptionalIdempotencyKey),
    request_body(content = AnalysisRun, content_type = "application/json",
        example = json!({"case_id": "0193a5a4-7c1e-7b1a-9d2f-1a2b3c4d5e6f", "window_minutes": 30})),
    responses(
        (status = 200, description = "The analyst answered", body = CommandResult),
        (status = 202, description = "Written; not answered yet (or not waited for)", body = CommandResult),
        (status = 409, description = "The case is closed, or the same Idempotency-Key is still in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The same Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        Malformed, BodyLimit, CaseNotFound,
    ))]
pub async fn analysis_run(
    state: State<AppState>,
    caller: Allowed<Operate>,
    headers: HeaderMap,
    body: JsonBody<AnalysisRun>,
) -> Result<Response, Problem> {
    run(state, caller, headers, body, "/v1/analysis/run").await
}

impl CommandBody for AnalysisRun {
    fn into_request(self, caller: &Allowed<Operate>) -> Result<CommandRequest, Problem> {
        if let Some(minutes) = self.window_minutes {
            if !(1..=analyst::worker::MAX_WINDOW_MINUTES).contains(&minutes) {
                return Err(Problem::invalid(
                    "window_minutes",
                    format!(
                        "window_minutes must be within 1..={}",
                        analyst::worker::MAX_WINDOW_MINUTES
                    ),
                ));
            }
        }
        Ok(CommandRequest {
            case_id: self.case_id,
            topic: topic::ANALYSIS_RUN,
            actor: actor_of(self.actor.as_deref(), &caller.principal)?,
            window_minutes: self.window_minutes,
            ..CommandRequest::default()
        })
    }
}

/// Each body knows which command it is and what it carries.
trait CommandBody {
    fn into_request(self, caller: &Allowed<Operate>) -> Result<CommandRequest, Problem>;
}

impl CommandBody for PlanGenerate {
    fn into_request(self, caller: &Allowed<Operate>) -> Result<CommandRequest, Problem> {
        if let Some(template) = self.template.as_deref() {
            let known = contract::template_names();
            if !known.contains(&template) {
                return Err(Problem::invalid(
                    "template",
                    format!("unknown template {template:?}; known: {}", known.join(", ")),
                ));
            }
        }
        Ok(CommandRequest {
            case_id: self.case_id,
            topic: topic::PLAN_GENERATE,
            actor: actor_of(self.actor.as_deref(), &caller.principal)?,
            template: self.template,
            params: self.params.unwrap_or_default(),
            ..CommandRequest::default()
        })
    }
}

macro_rules! case_command {
    ($body:ty, $topic:expr) => {
        impl CommandBody for $body {
            fn into_request(self, caller: &Allowed<Operate>) -> Result<CommandRequest, Problem> {
                Ok(CommandRequest {
                    case_id: self.case_id,
                    topic: $topic,
                    actor: actor_of(self.actor.as_deref(), &caller.principal)?,
                    ..CommandRequest::default()
                })
            }
        }
    };
}

case_command!(GateEval, topic::GATE_EVAL);
case_command!(VerifyRun, topic::VERIFY_RUN);

impl CommandBody for AdapterExec {
    fn into_request(self, caller: &Allowed<Operate>) -> Result<CommandRequest, Problem> {
        let steps = adhoc_step(&self)?.map(|step| vec![step]);
        Ok(CommandRequest {
            case_id: self.case_id,
            topic: topic::EXEC_RUN,
            actor: actor_of(self.actor.as_deref(), &caller.principal)?,
            steps,
            dry_run: self.dry_run,
            ..CommandRequest::default()
        })
    }
}

/// The single step an ad-hoc `/adapter/exec` asks for, validated against its adapter's
/// params schema; `None` when the plan's own steps are to run.
///
/// What the document describes field by field (the adapter's name, a blank `script`, the
/// timeout's range) is refused with 400; what it cannot (fields that do not go together,
/// params that do not fit the adapter's own schema) with 422.
fn adhoc_step(body: &AdapterExec) -> Result<Option<Value>, Problem> {
    if let Some(timeout_s) = body.timeout_s {
        if !contract::ADHOC_TIMEOUT_S.contains(&timeout_s) {
            return Err(Problem::invalid(
                "timeout_s",
                format!(
                    "timeout_s must be within {}..={}",
                    contract::ADHOC_TIMEOUT_S.start(),
                    contract::ADHOC_TIMEOUT_S.end()
                ),
            ));
        }
    }
    if let Some(script) = body.script.as_deref() {
        if script.trim().is_empty() {
            return Err(Problem::invalid("script", "`script` is empty"));
        }
    }
    let Some(adapter) = body.adapter.as_deref() else {
        if body.script.is_some() || body.params.is_some() || body.timeout_s.is_some() {
            return Err(Problem::unprocessable(
                "adapter",
                "`script`, `params` and `timeout_s` describe an ad-hoc step and need an `adapter` to run it with",
            ));
        }
        return Ok(None);
    };
    if !contract::adapter_names().contains(&adapter) {
        return Err(Problem::invalid(
            "adapter",
            format!(
                "unknown adapter {adapter:?}; known: {}",
                contract::adapter_names().join(", ")
            ),
        ));
    }
    let action = if adapter == contract::SCRIPT_SHORTHAND {
        "script.exec"
    } else {
        adapter
    };
    let mut params = body.params.clone().unwrap_or_default();
    if let Some(command_line) = body.script.as_deref() {
        if action != "script.exec" {
            return Err(Problem::unprocessable(
                "script",
                "`script` goes with adapter `script`",
            ));
        }
        let mut words = command_line.split_whitespace();
        let script = words.next().unwrap_or_default();
        params.insert("script".into(), json!(script));
        params.insert("args".into(), json!(words.collect::<Vec<_>>()));
    }
    let params = Value::Object(params);
    let errors = workflow::adapters::validate_params(action, Some(&params)).unwrap_or_default();
    if let Some(error) = errors.first() {
        let field = format!("params{}", error.pointer.replace('/', "."));
        return Err(Problem::unprocessable(
            field,
            format!("{action} params: {}", error.message),
        ));
    }
    let timeout_s = body.timeout_s.unwrap_or(contract::ADHOC_TIMEOUT_DEFAULT_S);
    Ok(Some(json!({
        "id": ADHOC_STEP_ID,
        "action": action,
        "params": params,
        "timeout_s": timeout_s,
        "retry": 0,
    })))
}

async fn run<B: CommandBody>(
    State(app): State<AppState>,
    caller: Allowed<Operate>,
    headers: HeaderMap,
    body: JsonBody<B>,
    route: &str,
) -> Result<Response, Problem> {
    let claim = extract::idempotency_key(&headers)?.map(|key| {
        IdempotencyClaim::new(&caller.principal.identity(), &key, "POST", route, &body.raw)
    });
    let request = body.value.into_request(&caller)?;
    let context = request_context(caller.principal.clone(), None);
    if let Some(steps) = &request.steps {
        let case = app.orchestrator.get_case(request.case_id, &context).await?;
        crate::policy::allow_adhoc(&app, &case, &steps[0])?;
    }
    let issued = app
        .orchestrator
        .issue_command(&request, &context, claim.as_ref())
        .await?;
    let preference = Preference::parse(&headers, app.settings.command_wait);
    if preference.respond_async || request.dry_run {
        return Ok(answer(&issued, "accepted", issued.case.clone(), None));
    }
    let answer_now = app
        .orchestrator
        .await_answer(&issued, preference.wait)
        .await?;
    Ok(match answer_now {
        Answer::Applied(case) => answer(&issued, "applied", case, None),
        Answer::Answered { case, entry } => answer(&issued, "answered", case, Some(*entry)),
        Answer::Pending(case) => answer(&issued, "pending", case, None),
    })
}

/// The command's status now; a repeated Idempotency-Key says so (`Idempotent-Replayed`), as a
/// transition does.
fn answer(issued: &Issued, status: &str, case: Case, entry: Option<TimelineEntry>) -> Response {
    let mut response = command_result(issued, status, case, entry);
    if issued.replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    response
}

fn command_result(
    issued: &Issued,
    status: &str,
    case: Case,
    entry: Option<TimelineEntry>,
) -> Response {
    let code = match status {
        "applied" | "answered" => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    let body = CommandResult {
        command_id: issued.command_id,
        topic: issued.topic.to_string(),
        status: status.to_string(),
        case,
        answer: entry,
    };
    (code, Json(body)).into_response()
}

/// RFC 7240 preferences this API honours.
struct Preference {
    respond_async: bool,
    wait: Duration,
}

impl Preference {
    fn parse(headers: &HeaderMap, default_wait: Duration) -> Self {
        let mut preference = Preference {
            respond_async: false,
            wait: default_wait,
        };
        for value in headers.get_all("prefer") {
            let Ok(text) = value.to_str() else { continue };
            for token in text.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("respond-async") {
                    preference.respond_async = true;
                } else if let Some(seconds) = token
                    .strip_prefix("wait=")
                    .and_then(|s| s.trim().parse::<u64>().ok())
                {
                    preference.wait = Duration::from_secs(seconds).min(default_wait);
                }
            }
        }
        preference
    }
}
