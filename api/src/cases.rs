//! `/v1/cases`: open, list, read, transition, and the products stored with a case.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator::model::{
    Automation, Case, CaseFilter, DecisionRecord, NewCase, PlanRecord, Severity, TimelineEntry,
};
use orchestrator::service::Render;
use orchestrator::Principal;
use orchestrator::{
    Error, IdempotencyClaim, Reply, RequestContext, StoredResponse, TransitionRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use workflow::{ApprovalInput, Event, Status, StepResult};

use crate::auth::{Allowed, Decide, Operate, Read, Transition};
use crate::contract::{self, BodyLimit, CaseNotFound, Malformed};
use crate::extract::{self, JsonBody, PathId, QueryParams};
use crate::problem::{Problem, PROBLEM_JSON};
use crate::{request_id, AppState};

/// Open a case.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenCase {
    #[schema(schema_with = contract::title_schema)]
    pub title: String,
    #[schema(schema_with = contract::case_tenant_schema)]
    pub tenant: Option<String>,
    pub severity: Option<Severity>,
    #[schema(schema_with = contract::labels_schema)]
    pub labels: Option<BTreeMap<String, String>>,
    pub automation: Option<Automation>,
    #[schema(schema_with = contract::evidence_schema)]
    pub evidence: Option<Vec<Value>>,
    #[schema(schema_with = contract::actor_schema)]
    pub actor: Option<String>,
}

/// Apply one event to a case.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    pub event: Event,
    #[schema(schema_with = contract::actor_schema)]
    pub actor: Option<String>,
    /// Required for `gate_rejected`, `resume`, `cancel`; explains failures.
    pub reason: Option<String>,
    /// Free-form context stored on the timeline row.
    pub meta: Option<Map<String, Value>>,
    /// Alternative to `If-Match`: stale → 409.
    #[serde(default, deserialize_with = "workflow::integer::option")]
    pub expected_version: Option<i64>,
    /// `plan_ready`: the proposed ChangePlan (see `GET /v1/schemas/change-plan`).
    pub plan: Option<Value>,
    /// `gate_approved`: the approval of the current plan.
    pub decision: Option<DecisionBody>,
    /// `exec_done` / `exec_failed`: per-step results.
    pub results: Option<Vec<StepResult>>,
    /// Groups related requests on the timeline.
    pub correlation_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Defaults to the request's actor; must differ from the plan's requester.
    pub approver: Option<String>,
    /// The plan approved; defaults to the case's current plan.
    pub plan_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListCasesQuery {
    pub status: Option<Status>,
    pub tenant: Option<String>,
    #[param(schema_with = contract::label_filter_schema)]
    pub label: Option<String>,
    /// What opened the case: `api`, or a signal source (`alertmanager`, `grafana`, `events`,
    /// `analyst`).
    #[param(pattern = "^[a-z0-9_-]{1,32}$")]
    pub source: Option<String>,
    pub severity: Option<Severity>,
    pub automation: Option<Automation>,
    /// Cases whose title contains this text (case-insensitive), e.g. what a person types in a
    /// search box; blank is no filter.
    #[param(max_length = 200)]
    pub q: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
    #[param(schema_with = contract::page_limit_schema)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// `next_cursor` of the previous page (a timeline row id).
    pub cursor: Option<i64>,
    #[param(schema_with = contract::page_limit_schema)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CasePage {
    pub items: Vec<Case>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TimelinePage {
    pub items: Vec<TimelineEntry>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanList {
    pub items: Vec<PlanRecord>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionList {
    pub items: Vec<DecisionRecord>,
}

/// The seed's `POST /case/create` answer: the id under `data`, and the case.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAlias {
    pub data: Uuid,
    pub case: Case,
}

#[utoipa::path(post, path = "/v1/cases", tag = "cases",
    params(contract::OptionalIdempotencyKey),
    request_body(content = OpenCase, content_type = "application/json"),
    responses(
        (status = 201, description = "The case, NEW at version 1", body = Case,
            headers(("ETag" = String, description = "\"<version>\""), ("Location" = String))),
        (status = 409, description = "The same Idempotency-Key is still in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The same Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        Malformed, BodyLimit,
    ))]
pub async fn open_case(
    State(app): State<AppState>,
    caller: Allowed<Operate>,
    headers: HeaderMap,
    body: JsonBody<OpenCase>,
) -> Result<Response, Problem> {
    open(
        app,
        caller.principal,
        headers,
        body,
        "/v1/cases",
        &|result| match result {
            Ok(case) => StoredResponse {
                status: StatusCode::CREATED.as_u16(),
                body: json!(case),
                headers: vec![
                    etag(case),
                    ("location".into(), format!("/v1/cases/{}", case.id)),
                ],
            },
            Err(error) => problem_response(error),
        },
    )
    .await
}

/// Seed alias of `POST /v1/cases`: answers `{"data": "<case id>", "case": {...}}`.
///
/// Its parameters, body and error answers are those of `POST /v1/cases`
/// ([`crate::openapi::SEED_ALIASES`]).
#[utoipa::path(post, path = "/case/create", tag = "seed aliases",
    responses(
        (status = 201, description = "The new case's id under `data`", body = CreatedAlias,
            headers(("ETag" = String, description = "\"<version>\""), ("Location" = String))),
    ))]
pub async fn open_case_alias(
    State(app): State<AppState>,
    caller: Allowed<Operate>,
    headers: HeaderMap,
    body: JsonBody<OpenCase>,
) -> Result<Response, Problem> {
    open(
        app,
        caller.principal,
        headers,
        body,
        "/case/create",
        &|result| match result {
            Ok(case) => StoredResponse {
                status: StatusCode::CREATED.as_u16(),
                body: json!(CreatedAlias {
                    data: case.id,
                    case: case.clone()
                }),
                headers: vec![
                    etag(case),
                    ("location".into(), format!("/v1/cases/{}", case.id)),
                ],
            },
            Err(error) => problem_response(error),
        },
    )
    .await
}

async fn open(
    app: AppState,
    principal: Principal,
    headers: HeaderMap,
    body: JsonBody<OpenCase>,
    route: &str,
    render: Render<'_>,
) -> Result<Response, Problem> {
    let new = validate_new_case(body.value, &principal)?;
    let claim = extract::idempotency_key(&headers)?
        .map(|key| IdempotencyClaim::new(&principal.identity(), &key, "POST", route, &body.raw));
    let context = request_context(principal, None);
    let reply = app
        .orchestrator
        .open_case(new, &context, claim.as_ref(), render)
        .await;
    Ok(respond(reply, render))
}

#[utoipa::path(get, path = "/v1/cases", tag = "cases", params(ListCasesQuery),
    responses(
        (status = 200, description = "Newest first", body = CasePage),
        Malformed,
    ))]
pub async fn list_cases(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    QueryParams(query): QueryParams<ListCasesQuery>,
) -> Result<Json<CasePage>, Problem> {
    let limit = contract::page_limit(query.limit)?;
    // A tenant-scoped key lists its own tenant; asking for another one finds nothing.
    let tenant = match (&caller.principal.tenant, query.tenant) {
        (Some(own), Some(asked)) if *own != asked => {
            return Ok(Json(CasePage {
                items: vec![],
                next_cursor: None,
            }));
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    let label = query
        .label
        .map(|text| {
            let (key, value) = text
                .split_once('=')
                .ok_or_else(|| Problem::invalid("label", "label must be key=value"))?;
            validate_label_key("label", key)?;
            Ok::<_, Problem>((key.to_string(), value.to_string()))
        })
        .transpose()?;
    if let Some(source) = &query.source {
        let known = (1..=32).contains(&source.len())
            && source
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
        // Kept in step with the documented pattern of `source`.
        if !known {
            return Err(Problem::invalid(
                "source",
                "source is a name like api, alertmanager, grafana, events or analyst",
            ));
        }
    }
    let filter = CaseFilter {
        status: query.status,
        tenant,
        label,
        source: query.source,
        severity: query.severity,
        automation: query.automation,
        title_contains: title_text(query.q)?,
        before: query.cursor,
        limit,
    };
    let items = app.orchestrator.list_cases(&filter).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|c| c.id.to_string()))
        .flatten();
    Ok(Json(CasePage { items, next_cursor }))
}

/// `q`, trimmed; blank is no filter.
fn title_text(q: Option<String>) -> Result<Option<String>, Problem> {
    let Some(text) = q else { return Ok(None) };
    if text.chars().count() > 200 {
        return Err(Problem::invalid("q", "q must be at most 200 characters"));
    }
    let text = text.trim();
    Ok((!text.is_empty()).then(|| text.to_string()))
}

#[utoipa::path(get, path = "/v1/cases/{id}", tag = "cases",
    params(("id" = Uuid, Path, description = "Case id")),
    responses(
        (status = 200, description = "The case", body = Case, headers(("ETag" = String, description = "\"<version>\", for If-Match"))),
        Malformed, CaseNotFound,
    ))]
pub async fn get_case(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    PathId(id): PathId,
) -> Result<Response, Problem> {
    let context = read_context(caller);
    let case = app
        .orchestrator
        .get_case(extract::parse_uuid("id", &id)?, &context)
        .await?;
    let (name, value) = etag(&case);
    Ok(([(name, value)], Json(case)).into_response())
}

/// Seed alias of `GET /v1/cases/{id}`.
#[utoipa::path(get, path = "/case/{id}", tag = "seed aliases")]
pub async fn get_case_alias(
    state: State<AppState>,
    caller: Allowed<Read>,
    id: PathId,
) -> Result<Response, Problem> {
    get_case(state, caller, id).await
}

#[utoipa::path(get, path = "/v1/cases/{id}/timeline", tag = "cases",
    params(("id" = Uuid, Path, description = "Case id"), TimelineQuery),
    responses(
        (status = 200, description = "Oldest first, including rejected attempts", body = TimelinePage),
        Malformed, CaseNotFound,
    ))]
pub async fn timeline(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    PathId(id): PathId,
    QueryParams(query): QueryParams<TimelineQuery>,
) -> Result<Json<TimelinePage>, Problem> {
    let limit = contract::page_limit(query.limit)?;
    let context = read_context(caller);
    let items = app
        .orchestrator
        .timeline(
            extract::parse_uuid("id", &id)?,
            query.cursor,
            limit,
            &context,
        )
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(TimelinePage { items, next_cursor }))
}

/// Seed alias of `GET /v1/cases/{id}/timeline`.
#[utoipa::path(get, path = "/case/{id}/timeline", tag = "seed aliases")]
pub async fn timeline_alias(
    state: State<AppState>,
    caller: Allowed<Read>,
    id: PathId,
    query: QueryParams<TimelineQuery>,
) -> Result<Json<TimelinePage>, Problem> {
    timeline(state, caller, id, query).await
}

#[utoipa::path(patch, path = "/v1/cases/{id}/transition", tag = "cases",
    params(("id" = Uuid, Path, description = "Case id"), contract::TransitionHeaders),
    request_body(content = TransitionBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The case after the event", body = Case, headers(("ETag" = String))),
        (status = 409, description = "Illegal transition, stale expected_version, or key in flight", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Guard refused (recorded on the timeline), or key reused for another request", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "A precondition is required by configuration", body = Problem, content_type = "application/problem+json"),
        Malformed, BodyLimit, CaseNotFound,
    ))]
pub async fn transition(
    State(app): State<AppState>,
    caller: Allowed<Transition>,
    PathId(id): PathId,
    headers: HeaderMap,
    body: JsonBody<TransitionBody>,
) -> Result<Response, Problem> {
    transition_at(app, caller, id, headers, body, "/v1/cases/{id}/transition").await
}

/// Seed alias of `PATCH /v1/cases/{id}/transition`.
#[utoipa::path(patch, path = "/case/{id}/transition", tag = "seed aliases")]
pub async fn transition_alias(
    State(app): State<AppState>,
    caller: Allowed<Transition>,
    PathId(id): PathId,
    headers: HeaderMap,
    body: JsonBody<TransitionBody>,
) -> Result<Response, Problem> {
    transition_at(app, caller, id, headers, body, "/case/{id}/transition").await
}

async fn transition_at(
    app: AppState,
    caller: Allowed<Transition>,
    id: String,
    headers: HeaderMap,
    body: JsonBody<TransitionBody>,
    route: &str,
) -> Result<Response, Problem> {
    let case_id = extract::parse_uuid("id", &id)?;
    // Deciding the gate is the approvers' job; everything else is the operators'.
    if matches!(body.value.event, Event::GateApproved | Event::GateRejected) {
        caller.also::<Decide>()?;
    } else {
        caller.also::<Operate>()?;
    }
    let principal = caller.principal;
    let key = extract::idempotency_key(&headers)?.ok_or_else(|| {
        Problem::invalid("Idempotency-Key", "the Idempotency-Key header is required on transitions (any unique string, e.g. a UUID)")
    })?;
    let if_match = extract::if_match(&headers)?;
    let JsonBody { value: body, raw } = body;
    if app.settings.require_precondition && if_match.is_none() && body.expected_version.is_none() {
        let mut problem = Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition-required",
            "Precondition required",
            "this server requires If-Match or expected_version on transitions",
        );
        problem.field = Some("If-Match".into());
        return Err(problem);
    }
    let actor = actor_of(body.actor.as_deref(), &principal)?;
    let request = TransitionRequest {
        case_id,
        event: body.event,
        approval: body.decision.map(|d| ApprovalInput {
            plan_id: d.plan_id.map(|id| id.to_string()),
            approver: d.approver.unwrap_or_else(|| actor.clone()),
        }),
        actor,
        reason: body.reason,
        meta: body.meta.unwrap_or_default(),
        plan: body.plan,
        results: body.results.unwrap_or_default(),
        if_match,
        expected_version: body.expected_version,
        policy_rev: None,
        decision_inputs: None,
        plan_requester: None,
        plan_references: None,
    };
    let route = route.replace("{id}", &case_id.to_string());
    let claim = IdempotencyClaim::new(&principal.identity(), &key, "PATCH", &route, &raw);
    let context = request_context(principal, body.correlation_id);
    let render: Render<'_> = &|result| match result {
        Ok(case) => StoredResponse {
            status: StatusCode::OK.as_u16(),
            body: json!(case),
            headers: vec![etag(case)],
        },
        Err(error) => problem_response(error),
    };
    let reply = app
        .orchestrator
        .transition(request, &context, Some(&claim), render)
        .await;
    Ok(respond(reply, render))
}

/// Timeline rows of one kind of product.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryList {
    pub items: Vec<TimelineEntry>,
}

#[utoipa::path(get, path = "/v1/cases/{id}/executions", tag = "cases",
    params(("id" = Uuid, Path, description = "Case id")),
    responses(
        (status = 200, description = "Execution requests, every step attempt (`step_result`, with output) and outcomes, oldest first", body = EntryList),
        Malformed, CaseNotFound,
    ))]
pub async fn executions(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    PathId(id): PathId,
) -> Result<Json<EntryList>, Problem> {
    const EVENTS: &[&str] = &["cmd.exec.run", "step_result", "exec_done", "exec_failed"];
    entries_of(app, caller, &id, EVENTS).await
}

#[utoipa::path(get, path = "/v1/cases/{id}/verifications", tag = "cases",
    params(("id" = Uuid, Path, description = "Case id")),
    responses(
        (status = 200, description = "Verdicts with the numbers each check saw, oldest first", body = EntryList),
        Malformed, CaseNotFound,
    ))]
pub async fn verifications(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    PathId(id): PathId,
) -> Result<Json<EntryList>, Problem> {
    const EVENTS: &[&str] = &["verify_pass", "verify_failed"];
    entries_of(app, caller, &id, EVENTS).await
}

/// The case's timeline rows of `events`.
async fn entries_of(
    app: AppState,
    caller: Allowed<Read>,
    id: &str,
    events: &[&str],
) -> Result<Json<EntryList>, Problem> {
    let items = app
        .orchestrator
        .timeline_of(
            extract::parse_uuid("id", id)?,
            events,
            &read_context(caller),
        )
        .await?;
    Ok(Json(EntryList { items }))
}

#[utoipa::path(get, path = "/v1/cases/{id}/plans", tag = "cases",
    params(("id" = Uuid, Path, description = "Case id")),
    responses(
        (status = 200, description = "Plans proposed for the case, oldest first", body = PlanList),
        Malformed, CaseNotFound,
    ))]
pub async fn plans(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    PathId(id): PathId,
) -> Result<Json<PlanList>, Problem> {
    let context = read_context(caller);
    let items = app
        .orchestrator
        .plans(extract::parse_uuid("id", &id)?, &context)
        .await?;
    Ok(Json(PlanList { items }))
}

#[utoipa::path(get, path = "/v1/cases/{id}/decisions", tag = "cases",
    params(("id" = Uuid, Path, description = "Case id")),
    responses(
        (status = 200, description = "Gate decisions on the case's plans, oldest first", body = DecisionList),
        Malformed, CaseNotFound,
    ))]
pub async fn decisions(
    State(app): State<AppState>,
    caller: Allowed<Read>,
    PathId(id): PathId,
) -> Result<Json<DecisionList>, Problem> {
    let context = read_context(caller);
    let items = app
        .orchestrator
        .decisions(extract::parse_uuid("id", &id)?, &context)
        .await?;
    Ok(Json(DecisionList { items }))
}

fn respond(reply: Result<Reply<Case>, Error>, render: Render<'_>) -> Response {
    match reply {
        Ok(Reply::Fresh(case)) => stored_response(render(Ok(&case)), false),
        Ok(Reply::Replayed(stored)) => stored_response(stored, true),
        Err(error) => Problem::from(&error).into_response(),
    }
}

fn stored_response(stored: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, Json(stored.body)).into_response();
    let headers = response.headers_mut();
    if status.is_client_error() || status.is_server_error() {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    }
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_str(&value)) {
            headers.insert(name, value);
        }
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn problem_response(error: &Error) -> StoredResponse {
    let problem = Problem::from(error);
    StoredResponse {
        status: problem.status,
        body: json!(problem),
        headers: vec![],
    }
}

fn etag(case: &Case) -> (String, String) {
    ("etag".into(), format!("\"{}\"", case.version))
}

pub(crate) fn read_context(caller: Allowed<Read>) -> RequestContext {
    RequestContext {
        principal: Some(caller.principal),
        ..RequestContext::default()
    }
}

pub(crate) fn request_context(
    principal: Principal,
    correlation_id: Option<String>,
) -> RequestContext {
    RequestContext {
        principal: Some(principal),
        request_id: request_id::current(),
        correlation_id,
        traceparent: request_id::current_traceparent(),
        tracestate: request_id::current_tracestate(),
    }
}

/// The client's name for itself, defaulting to the key's name.
pub(crate) fn actor_of(actor: Option<&str>, principal: &Principal) -> Result<String, Problem> {
    match actor {
        None => Ok(principal.name.clone()),
        Some(actor) => contract::text("actor", actor, contract::ACTOR_MAX_CHARS),
    }
}

fn validate_new_case(body: OpenCase, principal: &Principal) -> Result<NewCase, Problem> {
    let title = contract::text("title", &body.title, contract::TITLE_MAX_CHARS)?;
    let tenant = match (body.tenant, &principal.tenant) {
        (Some(asked), Some(own)) if asked != *own => {
            let mut problem = Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!("this key is scoped to tenant {own:?} and cannot open cases in {asked:?}"),
            );
            problem.field = Some("tenant".into());
            return Err(problem);
        }
        (Some(asked), _) => asked,
        (None, own) => own.clone().unwrap_or_else(|| "default".into()),
    };
    extract::validate_tenant("tenant", &tenant)?;
    let labels = body.labels.unwrap_or_default();
    if labels.len() > contract::MAX_LABELS {
        return Err(Problem::invalid(
            "labels",
            format!("at most {} labels", contract::MAX_LABELS),
        ));
    }
    for (key, value) in &labels {
        validate_label_key(&format!("labels.{key}"), key)?;
        if value.chars().count() > contract::LABEL_VALUE_MAX_CHARS {
            return Err(Problem::invalid(
                format!("labels.{key}"),
                format!(
                    "label values are at most {} characters",
                    contract::LABEL_VALUE_MAX_CHARS
                ),
            ));
        }
    }
    let evidence = body.evidence.unwrap_or_default();
    if evidence.len() > contract::MAX_EVIDENCE {
        return Err(Problem::invalid(
            "evidence",
            format!("at most {} evidence items", contract::MAX_EVIDENCE),
        ));
    }
    Ok(NewCase {
        tenant,
        title,
        severity: body.severity.unwrap_or_default(),
        labels,
        automation: body.automation.unwrap_or_default(),
        evidence,
        source: "api".into(),
        created_by: actor_of(body.actor.as_deref(), principal)?,
    })
}

fn validate_label_key(field: &str, key: &str) -> Result<(), Problem> {
    if contract::is_label_key(key) {
        Ok(())
    } else {
        Err(Problem::invalid(
            field,
            format!("label key {key:?} must be 1 to 63 of A-Z a-z 0-9 - _ . /"),
        ))
    }
}
