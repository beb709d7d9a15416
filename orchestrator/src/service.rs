//! The transition service: the only code that changes a case.
//!
//! Every accepted event is one database transaction that locks the case, asks the pure state
//! machine, then writes the case, a timeline row, the outbox messages, the event's products
//! and the idempotency record. Nothing outside the database happens before commit.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use uuid::Uuid;
use workflow::{
    Accepted, ApprovalInput, CaseView, Effect, Event, EventInput, GuardFailure, IllegalTransition,
    PlanRef, Rejection, Status, StepResult, TOPIC_CASE_OUTCOME, TOPIC_CASE_TRANSITION,
};

use crate::access::{self, ApiKey, NewApiKey, Principal, MIN_SUPPLIED_KEY_LEN};
use crate::idempotency::{IdempotencyClaim, InFlightKeys, StoredResponse};
use crate::metrics::{ConflictReason, Metrics};
use crate::model::{
    Case, CaseFilter, DecisionRecord, NewCase, NewTimelineEntry, OutboxMessage, Outcome,
    PlanRecord, TimelineEntry,
};
use crate::store::{
    IdempotencyRecord, KeyOrCase, LockedCase, Store, StoreError, Tx, IDEMPOTENCY_KEY,
};

/// Namespace of the stable outbox message ids (UUIDv5 of case, version and topic).
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f70_7363_6173_6500_8000_6f75_7462_6f78);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("case {0} does not exist")]
    NotFound(Uuid),
    #[error("API key {0} does not exist")]
    KeyNotFound(Uuid),
    #[error("{0}")]
    InvalidKey(String),
    #[error("If-Match names {expected} but the case is at version {}", .case.version)]
    PreconditionFailed { case: Box<Case>, expected: IfMatch },
    #[error("expected_version is {expected} but the case is at version {}", .case.version)]
    VersionMismatch { case: Box<Case>, expected: i64 },
    #[error("{} is not allowed in {}", .illegal.event, .illegal.from)]
    Illegal {
        case: Box<Case>,
        illegal: IllegalTransition,
    },
    #[error("{event} to {to} refused by its guard")]
    GuardFailed {
        case: Box<Case>,
        event: Event,
        to: Status,
        failures: Vec<GuardFailure>,
    },
    /// A command that makes no sense for the case's state (or the case has no plan for it).
    #[error("{reason}")]
    CommandNotApplicable { case: Box<Case>, reason: String },
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyMismatch,
    #[error("a request with this Idempotency-Key is still being processed")]
    InFlight,
    /// A bus message that can never be handled (unknown type, unreadable data, no such case).
    #[error("unusable message: {0}")]
    BadMessage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    fn conflict_reason(&self) -> Option<ConflictReason> {
        match self {
            Error::PreconditionFailed { .. } => Some(ConflictReason::PreconditionFailed),
            Error::VersionMismatch { .. } => Some(ConflictReason::VersionMismatch),
            Error::Illegal { .. } | Error::CommandNotApplicable { .. } => {
                Some(ConflictReason::IllegalTransition)
            }
            Error::GuardFailed { .. } => Some(ConflictReason::GuardFailed),
            Error::IdempotencyMismatch => Some(ConflictReason::IdempotencyMismatch),
            Error::InFlight => Some(ConflictReason::InFlight),
            Error::NotFound(_)
            | Error::KeyNotFound(_)
            | Error::InvalidKey(_)
            | Error::BadMessage(_)
            | Error::Store(_) => None,
        }
    }
}

/// What `bootstrap_admin_key` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    KeysExist,
    Supplied,
    /// A new key, to be shown once.
    Generated(String),
}

/// A fresh result, or the stored response of an earlier request with the same key.
#[derive(Debug)]
pub enum Reply<T> {
    Fresh(T),
    Replayed(StoredResponse),
}

/// Where a request came from: who (the authenticated key), and the ids that tie it to logs,
/// traces and other requests.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// `None` only for the service's own work; every HTTP request has one.
    pub principal: Option<Principal>,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    /// W3C trace context of the request, carried into timeline meta and outbox headers.
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that goes with it, carried in outbox headers.
    pub tracestate: Option<String>,
}

impl RequestContext {
    /// The tenant the caller is confined to, if any.
    pub(crate) fn tenant_scope(&self) -> Option<&str> {
        self.principal.as_ref().and_then(|p| p.tenant.as_deref())
    }

    pub(crate) fn principal_identity(&self) -> Option<String> {
        self.principal.as_ref().map(Principal::identity)
    }

    pub(crate) fn principal_name(&self) -> Option<String> {
        self.principal.as_ref().map(|p| p.name.clone())
    }

    /// Who four eyes sees: the key when there is one, else the name the client gave.
    pub(crate) fn identity_or(&self, name: &str) -> String {
        self.principal_identity()
            .unwrap_or_else(|| name.to_string())
    }

    fn trace_id(&self) -> Option<&str> {
        // traceparent = version "-" trace-id "-" parent-id "-" flags
        self.traceparent
            .as_deref()
            .and_then(|tp| tp.split('-').nth(1))
    }

    pub(crate) fn outbox_headers(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in [
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
            ("request_id", &self.request_id),
            ("correlation_id", &self.correlation_id),
        ] {
            if let Some(value) = value {
                headers.insert(name.into(), Value::String(value.clone()));
            }
        }
        Value::Object(headers)
    }
}

/// A timeline row that moves nothing (`noted`): a signal joining a case, an alert resolving.
#[derive(Debug, Clone)]
pub struct Note {
    pub event: String,
    pub actor: String,
    pub reason: Option<String>,
    pub meta: Map<String, Value>,
}

/// An `If-Match` precondition (`*` is none at all): the case versions its strong entity tags
/// name. If-Match compares strongly (RFC 9110 §13.1.1), so a weak tag names no version and a
/// list of only weak tags never matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfMatch(pub Vec<i64>);

impl IfMatch {
    pub fn version(version: i64) -> Self {
        Self(vec![version])
    }

    pub fn matches(&self, version: i64) -> bool {
        self.0.contains(&version)
    }
}

impl std::fmt::Display for IfMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("no version by a strong entity tag (weak tags never match If-Match)"),
            [one] => write!(f, "version {one}"),
            many => {
                let listed: Vec<String> = many.iter().map(i64::to_string).collect();
                write!(f, "versions {}", listed.join(", "))
            }
        }
    }
}

/// A request to apply one event to one case.
#[derive(Debug, Clone)]
pub struct TransitionRequest {
    pub case_id: Uuid,
    pub event: Event,
    pub actor: String,
    pub reason: Option<String>,
    pub meta: Map<String, Value>,
    pub plan: Option<Value>,
    pub approval: Option<ApprovalInput>,
    pub results: Vec<StepResult>,
    /// From `If-Match`: stale → 412.
    pub if_match: Option<IfMatch>,
    /// From the body: stale → 409.
    pub expected_version: Option<i64>,
    /// For gate decisions made by policy: the policy revision and the inputs it saw.
    pub policy_rev: Option<String>,
    pub decision_inputs: Option<Value>,
    /// `plan_ready` from the planner: who asked for the plan (a key identity or an actor),
    /// recorded as its requester for four eyes. Otherwise the request's own key is.
    pub plan_requester: Option<String>,
    /// `plan_ready` from the planner: what the Librarian found for the case, stored with the
    /// plan.
    pub plan_references: Option<workflow::references::References>,
}

/// Turns the outcome of a request into the response stored for idempotent replay. Supplied by
/// the API so that the stored answer is byte-for-byte the one first sent.
pub type Render<'a> = &'a (dyn Fn(Result<&Case, &Error>) -> StoredResponse + Send + Sync);

#[derive(Debug, Clone)]
pub struct Settings {
    pub idempotency_ttl: chrono::Duration,
    /// Applied to every event's `reason` and `meta` before they are stored.
    pub redactor: crate::redact::Redactor,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idempotency_ttl: chrono::Duration::hours(24),
            redactor: crate::redact::Redactor::default(),
        }
    }
}

pub struct Orchestrator {
    store: Arc<dyn Store>,
    metrics: Metrics,
    settings: Settings,
    in_flight: InFlightKeys,
    outbox_written: Arc<Notify>,
    /// Bumped after every commit that wrote timeline rows, for whoever follows a timeline live
    /// (the SSE routes); rows written by other processes are found by their polling.
    timeline_written: tokio::sync::watch::Sender<u64>,
}

impl Orchestrator {
    pub fn new(store: Arc<dyn Store>, metrics: Metrics, settings: Settings) -> Self {
        if store.group_commit_stats().is_some() {
            let watched = store.clone();
            metrics.watch_group_commits(move || watched.group_commit_stats());
        }
        Self {
            store,
            metrics,
            settings,
            in_flight: InFlightKeys::default(),
            outbox_written: Arc::new(Notify::new()),
            timeline_written: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Signalled after every commit that wrote outbox rows (the relay waits on it).
    pub fn outbox_written(&self) -> Arc<Notify> {
        self.outbox_written.clone()
    }

    /// Changes whenever this process has committed timeline rows.
    pub fn timeline_written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.timeline_written.subscribe()
    }

    /// After a commit that wrote timeline and outbox rows: wake the relay and the followers.
    fn wrote(&self) {
        self.outbox_written.notify_one();
        self.timeline_written
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Load gauges that must agree with the database (after a restart).
    pub async fn refresh_gauges(&self) -> Result<(), Error> {
        self.metrics
            .set_open_cases(&self.store.count_open_by_status().await?);
        Ok(())
    }

    /// Open a case: NEW at version 1, with its `open` timeline row and transition message.
    pub async fn open_case(
        &self,
        new: NewCase,
        context: &RequestContext,
        idempotency: Option<&IdempotencyClaim>,
        render: Render<'_>,
    ) -> Result<Reply<Case>, Error> {
        let result = self.open_case_once(new, context, idempotency, render).await;
        if let Ok(Reply::Fresh(_)) = &result {
            self.metrics.case_opened();
            self.wrote();
        }
        self.observe(result)
    }

    async fn open_case_once(
        &self,
        new: NewCase,
        context: &RequestContext,
        idempotency: Option<&IdempotencyClaim>,
        render: Render<'_>,
    ) -> Result<Reply<Case>, Error> {
        let _in_flight = self.claim_key(idempotency)?;
        let now = Utc::now();
        let mut tx = self.store.begin().await?;
        if let Some(replay) = self.replay(tx.as_mut(), idempotency, now).await? {
            return Ok(replay);
        }
        let case = self.open_case_in(tx.as_mut(), new, context, now).await?;
        self.save_response(tx.as_mut(), idempotency, render(Ok(&case)), now)
            .await?;
        commit_keyed(tx).await?;
        Ok(Reply::Fresh(case))
    }

    /// Open a case inside the caller's transaction: the case row, its `open` timeline row and
    /// transition message. The caller commits, then reports with [`Orchestrator::committed`].
    pub async fn open_case_in(
        &self,
        tx: &mut dyn Tx,
        new: NewCase,
        context: &RequestContext,
        now: DateTime<Utc>,
    ) -> Result<Case, Error> {
        let case = Case {
            id: Uuid::now_v7(),
            tenant: new.tenant,
            title: new.title,
            severity: new.severity,
            labels: new.labels,
            automation: new.automation,
            evidence: new.evidence,
            status: Status::New,
            version: 1,
            resolution: None,
            current_plan_id: None,
            source: new.source,
            created_by: new.created_by,
            created_at: now,
            updated_at: now,
        };
        tx.insert_case(&case).await?;
        tx.record_timeline(&NewTimelineEntry {
            case_id: case.id,
            version: case.version,
            event: "open".into(),
            outcome: Outcome::Applied,
            from_status: None,
            to_status: Some(Status::New),
            actor: case.created_by.clone(),
            principal_id: context.principal_identity(),
            principal_name: context.principal_name(),
            reason: None,
            correlation_id: context.correlation_id.clone(),
            request_id: context.request_id.clone(),
            meta: server_meta(Map::new(), context),
            created_at: now,
        })
        .await?;
        tx.append_outbox(&transition_message(
            TOPIC_CASE_TRANSITION,
            &case,
            "open",
            None,
            &case.created_by,
            None,
            context,
            now,
        ))
        .await?;
        Ok(case)
    }

    /// Apply one event inside the caller's transaction (secrets in its reason and meta masked).
    /// A guard refusal has written its timeline row when it returns `GuardFailed`.
    pub async fn apply_in(
        &self,
        tx: &mut dyn Tx,
        request: TransitionRequest,
        context: &RequestContext,
        now: DateTime<Utc>,
    ) -> Result<(Case, Accepted), Error> {
        let request = self.redacted(request);
        self.step(tx, &request, context, now).await
    }

    /// Record something that moves nothing on a case's timeline, inside the caller's
    /// transaction (which has locked the case).
    pub async fn note_in(
        &self,
        tx: &mut dyn Tx,
        case: &Case,
        note: Note,
        context: &RequestContext,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        tx.record_timeline(&NewTimelineEntry {
            case_id: case.id,
            version: case.version,
            event: note.event,
            outcome: Outcome::Noted,
            from_status: Some(case.status),
            to_status: Some(case.status),
            actor: note.actor,
            principal_id: context.principal_identity(),
            principal_name: context.principal_name(),
            reason: note.reason.map(|reason| self.redact_text(&reason)),
            correlation_id: context.correlation_id.clone(),
            request_id: context.request_id.clone(),
            meta: server_meta(self.redact_meta(note.meta), context),
            created_at: now,
        })
        .await?;
        Ok(())
    }

    /// After the commit of changes made with the `*_in` methods: count them and wake the relay.
    pub fn committed(&self, opened: usize, transitions: &[(Status, Status, Event)]) {
        for _ in 0..opened {
            self.metrics.case_opened();
        }
        for (from, to, event) in transitions {
            self.metrics.transition(*from, *to, event.as_str());
        }
        self.wrote();
    }

    /// Apply one event to one case (the body of `PATCH /v1/cases/{id}/transition`).
    pub async fn transition(
        &self,
        request: TransitionRequest,
        context: &RequestContext,
        idempotency: Option<&IdempotencyClaim>,
        render: Render<'_>,
    ) -> Result<Reply<Case>, Error> {
        let request = self.redacted(request);
        let span = tracing::info_span!(
            "transition",
            case_id = %request.case_id,
            event = %request.event,
            from = tracing::field::Empty,
            to = tracing::field::Empty,
        );
        let result = tracing::Instrument::instrument(
            self.transition_once(request, context, idempotency, render),
            span,
        )
        .await;
        if let Ok(Reply::Fresh(_)) | Err(Error::GuardFailed { .. }) = &result {
            self.wrote();
        }
        self.observe(result)
    }

    async fn transition_once(
        &self,
        request: TransitionRequest,
        context: &RequestContext,
        idempotency: Option<&IdempotencyClaim>,
        render: Render<'_>,
    ) -> Result<Reply<Case>, Error> {
        let _in_flight = self.claim_key(idempotency)?;
        let now = Utc::now();
        let mut tx = self.store.begin().await?;
        let locked = match idempotency {
            Some(claim) => match tx
                .find_idempotency_or_lock(&claim.scope, &claim.key, now, request.case_id)
                .await?
            {
                KeyOrCase::Key(record) => return replayed(claim, record),
                KeyOrCase::Case(locked) => locked,
            },
            None => tx.lock_case(request.case_id).await?,
        };
        match self
            .step_locked(tx.as_mut(), locked, &request, context, now)
            .await
        {
            Ok((case, accepted)) => {
                self.save_response(tx.as_mut(), idempotency, render(Ok(&case)), now)
                    .await?;
                commit_keyed(tx).await?;
                self.metrics
                    .transition(accepted.from, accepted.to, request.event.as_str());
                match request.event {
                    Event::GateApproved => self.metrics.gate_decision("approved", "human"),
                    Event::GateRejected => self.metrics.gate_decision("rejected", "human"),
                    _ => {}
                }
                Ok(Reply::Fresh(case))
            }
            // The refused attempt is on the timeline: keep it, and answer it the same way again.
            Err(error @ Error::GuardFailed { .. }) => {
                self.save_response(tx.as_mut(), idempotency, render(Err(&error)), now)
                    .await?;
                commit_keyed(tx).await?;
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    pub(crate) fn redact_text(&self, text: &str) -> String {
        self.settings.redactor.text(text)
    }

    /// `meta` with secrets masked.
    pub(crate) fn redact_meta(&self, meta: Map<String, Value>) -> Map<String, Value> {
        let mut meta = Value::Object(meta);
        self.settings.redactor.json(&mut meta);
        match meta {
            Value::Object(meta) => meta,
            _ => Map::new(),
        }
    }

    /// The request with secrets masked in what the timeline and outbox will keep.
    pub(crate) fn redacted(&self, mut request: TransitionRequest) -> TransitionRequest {
        let redactor = &self.settings.redactor;
        request.reason = request.reason.map(|reason| redactor.text(&reason));
        let mut meta = Value::Object(std::mem::take(&mut request.meta));
        redactor.json(&mut meta);
        if let Value::Object(meta) = meta {
            request.meta = meta;
        }
        request
    }

    /// One event inside the caller's transaction: lock, check preconditions, decide, write.
    /// A guard refusal has already written its timeline row when it returns `GuardFailed`;
    /// every other error has written nothing the caller must keep.
    pub(crate) async fn step(
        &self,
        tx: &mut dyn Tx,
        request: &TransitionRequest,
        context: &RequestContext,
        now: DateTime<Utc>,
    ) -> Result<(Case, Accepted), Error> {
        let locked = tx.lock_case(request.case_id).await?;
        self.step_locked(tx, locked, request, context, now).await
    }

    /// [`step`](Self::step) on a case the transaction has locked already (`None`: not found).
    async fn step_locked(
        &self,
        tx: &mut dyn Tx,
        locked: Option<LockedCase>,
        request: &TransitionRequest,
        context: &RequestContext,
        now: DateTime<Utc>,
    ) -> Result<(Case, Accepted), Error> {
        let locked = locked.ok_or(Error::NotFound(request.case_id))?;
        let case = locked.case;
        if context
            .tenant_scope()
            .is_some_and(|tenant| tenant != case.tenant)
        {
            return Err(Error::NotFound(request.case_id));
        }
        if let Some(expected) = request
            .if_match
            .as_ref()
            .filter(|m| !m.matches(case.version))
        {
            return Err(Error::PreconditionFailed {
                expected: expected.clone(),
                case: Box::new(case),
            });
        }
        if let Some(expected) = request.expected_version.filter(|v| *v != case.version) {
            return Err(Error::VersionMismatch {
                case: Box::new(case),
                expected,
            });
        }
        let view = CaseView {
            status: case.status,
            version: case.version,
            auto: case.automation == crate::model::Automation::Auto,
            current_plan: case.current_plan_id.map(|id| PlanRef {
                id: id.to_string(),
                requested_by: locked.plan_requester.clone().unwrap_or_default(),
            }),
        };
        let input = EventInput {
            actor: context.identity_or(&request.actor),
            reason: request.reason.clone(),
            plan: request.plan.clone(),
            approval: request.approval.as_ref().map(|approval| ApprovalInput {
                plan_id: approval.plan_id.clone(),
                approver: context.identity_or(&approval.approver),
            }),
            results: request.results.clone(),
        };
        match workflow::evaluate(&view, request.event, &input) {
            Err(Rejection::Illegal(illegal)) => Err(Error::Illegal {
                case: Box::new(case),
                illegal,
            }),
            Err(Rejection::Guard { to, failures, .. }) => {
                let mut meta = request.meta.clone();
                meta.insert("guard_failures".into(), json!(failures));
                tx.record_timeline(&timeline_entry(
                    &case,
                    request,
                    Outcome::Rejected,
                    case.status,
                    to,
                    meta,
                    context,
                    now,
                ))
                .await?;
                Err(Error::GuardFailed {
                    case: Box::new(case),
                    event: request.event,
                    to,
                    failures,
                })
            }
            Ok(accepted) => {
                let span = tracing::Span::current();
                span.record("from", accepted.from.as_str());
                span.record("to", accepted.to.as_str());
                let case = apply(tx, case, request, &accepted, context, now).await?;
                Ok((case, accepted))
            }
        }
    }

    /// The case, if it exists and the caller may see it (another tenant's case is "not found").
    pub async fn get_case(&self, id: Uuid, context: &RequestContext) -> Result<Case, Error> {
        self.store
            .get_case(id)
            .await?
            .filter(|case| {
                context
                    .tenant_scope()
                    .is_none_or(|tenant| tenant == case.tenant)
            })
            .ok_or(Error::NotFound(id))
    }

    pub async fn list_cases(&self, filter: &CaseFilter) -> Result<Vec<Case>, Error> {
        Ok(self.store.list_cases(filter).await?)
    }

    /// The timeline after row `after`, oldest first; 404 when the case does not exist.
    pub async fn timeline(
        &self,
        case_id: Uuid,
        after: Option<i64>,
        limit: u32,
        context: &RequestContext,
    ) -> Result<Vec<TimelineEntry>, Error> {
        self.get_case(case_id, context).await?;
        Ok(self.store.timeline(case_id, after, limit).await?)
    }

    /// Timeline rows of every case after row `after`, in id order, with each case's tenant:
    /// unscoped, for a caller that scopes them itself (the all-cases event stream, which also
    /// needs the ids of rows it may not show to see that none is missing).
    pub async fn timeline_since(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(TimelineEntry, String)>, Error> {
        Ok(self.store.timeline_since(after, limit).await?)
    }

    /// The newest timeline row's id (0 when there is none).
    pub async fn last_timeline_id(&self) -> Result<i64, Error> {
        Ok(self.store.last_timeline_id().await?)
    }

    /// The case's timeline rows of these events, oldest first (the executor's step results and
    /// outcomes, the verifier's verdicts).
    pub async fn timeline_of(
        &self,
        case_id: Uuid,
        events: &[&str],
        context: &RequestContext,
    ) -> Result<Vec<TimelineEntry>, Error> {
        const PAGE: u32 = 500;
        self.get_case(case_id, context).await?;
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.timeline(case_id, after, PAGE).await?;
            after = page.last().map(|entry| entry.id);
            let full = page.len() == PAGE as usize;
            found.extend(
                page.into_iter()
                    .filter(|entry| events.contains(&entry.event.as_str())),
            );
            if !full {
                return Ok(found);
            }
        }
    }

    pub async fn plans(
        &self,
        case_id: Uuid,
        context: &RequestContext,
    ) -> Result<Vec<PlanRecord>, Error> {
        self.get_case(case_id, context).await?;
        Ok(self.store.plans(case_id).await?)
    }

    pub async fn decisions(
        &self,
        case_id: Uuid,
        context: &RequestContext,
    ) -> Result<Vec<DecisionRecord>, Error> {
        self.get_case(case_id, context).await?;
        Ok(self.store.decisions(case_id).await?)
    }

    /// The principal of a presented API key, if the key exists, is unexpired and unrevoked.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Principal>, Error> {
        let hash = access::hash_key(presented);
        let Some((key, stored_hash)) = self.store.find_key(&hash).await? else {
            return Ok(None);
        };
        let genuine = access::hashes_match(&hash, &stored_hash);
        Ok((genuine && key.is_usable(Utc::now())).then(|| key.principal()))
    }

    /// Create a key; the returned secret is the only copy there will ever be.
    pub async fn create_key(&self, new: NewApiKey) -> Result<(ApiKey, String), Error> {
        let secret = access::generate_key();
        let key = self.insert_key(new, &secret).await?;
        Ok((key, secret))
    }

    async fn insert_key(&self, new: NewApiKey, secret: &str) -> Result<ApiKey, Error> {
        if new.roles.is_empty() {
            return Err(Error::InvalidKey("a key needs at least one role".into()));
        }
        let key = ApiKey {
            id: Uuid::now_v7(),
            name: new.name,
            roles: new.roles,
            tenant: new.tenant,
            created_by: new.created_by,
            created_at: Utc::now(),
            expires_at: new.expires_at,
            revoked_at: None,
        };
        self.store
            .insert_key(&key, &access::hash_key(secret))
            .await?;
        Ok(key)
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, Error> {
        Ok(self.store.list_keys().await?)
    }

    /// Revoke a key: it is refused from the next request on.
    pub async fn revoke_key(&self, id: Uuid) -> Result<ApiKey, Error> {
        self.store
            .revoke_key(id, Utc::now())
            .await?
            .ok_or(Error::KeyNotFound(id))
    }

    /// On a store without keys, create the first admin key: `supplied` when given (it must be
    /// long enough), a generated one otherwise. Only a generated key is returned, to be shown
    /// once; nothing happens when keys exist.
    pub async fn bootstrap_admin_key(&self, supplied: Option<&str>) -> Result<Bootstrap, Error> {
        if self.store.count_keys().await? > 0 {
            return Ok(Bootstrap::KeysExist);
        }
        let admin = NewApiKey {
            name: "bootstrap-admin".into(),
            roles: vec![access::Role::Admin],
            tenant: None,
            expires_at: None,
            created_by: "bootstrap".into(),
        };
        match supplied {
            Some(key) if key.len() < MIN_SUPPLIED_KEY_LEN => Err(Error::InvalidKey(format!(
                "OPSCASE_BOOTSTRAP_ADMIN_KEY must be at least {MIN_SUPPLIED_KEY_LEN} characters"
            ))),
            Some(key) => {
                self.insert_key(admin, key).await?;
                Ok(Bootstrap::Supplied)
            }
            None => {
                let (_, secret) = self.create_key(admin).await?;
                Ok(Bootstrap::Generated(secret))
            }
        }
    }

    pub(crate) fn claim_key(
        &self,
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<Option<crate::idempotency::InFlightGuard>, Error> {
        idempotency
            .map(|claim| self.in_flight.claim(claim).ok_or(Error::InFlight))
            .transpose()
    }

    /// The stored response for this key, or a mismatch error; `None` when the key is new.
    async fn replay(
        &self,
        tx: &mut dyn Tx,
        idempotency: Option<&IdempotencyClaim>,
        now: DateTime<Utc>,
    ) -> Result<Option<Reply<Case>>, Error> {
        let Some(claim) = idempotency else {
            return Ok(None);
        };
        let Some(record) = tx.find_idempotency(&claim.scope, &claim.key, now).await? else {
            return Ok(None);
        };
        replayed(claim, record).map(Some)
    }

    pub(crate) async fn save_response(
        &self,
        tx: &mut dyn Tx,
        idempotency: Option<&IdempotencyClaim>,
        response: StoredResponse,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let Some(claim) = idempotency else {
            return Ok(());
        };
        let headers: Map<String, Value> = response
            .headers
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let saved = tx
            .save_idempotency(&IdempotencyRecord {
                scope: claim.scope.clone(),
                key: claim.key.clone(),
                fingerprint: claim.fingerprint.clone(),
                status_code: response.status,
                response: response.body,
                headers: Value::Object(headers),
                created_at: now,
                expires_at: now + self.settings.idempotency_ttl,
            })
            .await;
        match saved {
            // Another process committed this key since we looked: it is that request's key.
            Err(StoreError::UniqueViolation(_)) => Err(Error::InFlight),
            other => Ok(other?),
        }
    }

    fn observe<T>(&self, result: Result<Reply<T>, Error>) -> Result<Reply<T>, Error> {
        match &result {
            Ok(Reply::Replayed(_)) => self.metrics.replay(),
            Err(error) => {
                if let Some(reason) = error.conflict_reason() {
                    self.metrics.conflict(reason);
                }
            }
            Ok(Reply::Fresh(_)) => {}
        }
        result
    }
}

/// The stored answer for a key sent again, or a mismatch when the request differs.
fn replayed<T>(claim: &IdempotencyClaim, record: IdempotencyRecord) -> Result<Reply<T>, Error> {
    if record.fingerprint != claim.fingerprint {
        return Err(Error::IdempotencyMismatch);
    }
    let headers = record
        .headers
        .as_object()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Reply::Replayed(StoredResponse {
        status: record.status_code,
        body: record.response,
        headers,
    }))
}

/// Commit a transaction that saved an idempotent response. The save may have been deferred to
/// the commit, so the key's conflict (another process claimed it since we looked) may surface
/// here instead of from `save_idempotency`.
async fn commit_keyed(tx: Box<dyn Tx>) -> Result<(), Error> {
    match tx.commit().await {
        Err(StoreError::UniqueViolation(constraint)) if constraint == IDEMPOTENCY_KEY => {
            Err(Error::InFlight)
        }
        other => Ok(other?),
    }
}

/// Write an accepted transition: products, case row, timeline row, outbox messages.
async fn apply(
    tx: &mut dyn Tx,
    mut case: Case,
    request: &TransitionRequest,
    accepted: &Accepted,
    context: &RequestContext,
    now: DateTime<Utc>,
) -> Result<Case, Error> {
    let from = case.status;
    case.status = accepted.to;
    case.version = accepted.version;
    case.resolution = accepted.resolution.map(|r| r.as_str().to_string());
    case.updated_at = now;
    let mut recorded_plan = None;
    for effect in &accepted.effects {
        match effect {
            Effect::RecordPlan { plan } => {
                let record = PlanRecord {
                    id: Uuid::now_v7(),
                    case_id: case.id,
                    plan: plan.clone(),
                    digest: digest(plan),
                    requested_by: request.actor.clone(),
                    requested_by_key: request
                        .plan_requester
                        .clone()
                        .or_else(|| context.principal_identity()),
                    created_at: now,
                    references: request.plan_references.clone(),
                };
                tx.insert_plan(&record).await?;
                case.current_plan_id = Some(record.id);
                recorded_plan = Some(record);
            }
            Effect::RecordDecision {
                plan_id, approved, ..
            } => {
                let plan_id =
                    Uuid::parse_str(plan_id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                tx.insert_decision(&DecisionRecord {
                    id: Uuid::now_v7(),
                    case_id: case.id,
                    plan_id,
                    decision: if *approved { "approved" } else { "rejected" }.into(),
                    decided_by: request
                        .approval
                        .as_ref()
                        .map_or_else(|| request.actor.clone(), |a| a.approver.clone()),
                    decided_by_key: context.principal_identity(),
                    reason: request.reason.clone(),
                    policy_rev: request.policy_rev.clone(),
                    inputs: request
                        .decision_inputs
                        .clone()
                        .unwrap_or_else(|| json!({"source": "api", "actor": request.actor})),
                    created_at: now,
                })
                .await?;
            }
            Effect::Publish { .. } => {}
        }
    }
    tx.update_case(&case).await?;
    tx.record_timeline(&timeline_entry(
        &case,
        request,
        Outcome::Applied,
        from,
        accepted.to,
        request.meta.clone(),
        context,
        now,
    ))
    .await
    .map(|_| ())?;
    for effect in &accepted.effects {
        if let Effect::Publish { topic } = effect {
            let message = if *topic == TOPIC_CASE_TRANSITION || *topic == TOPIC_CASE_OUTCOME {
                transition_message(
                    topic,
                    &case,
                    request.event.as_str(),
                    Some(from),
                    &request.actor,
                    request.reason.as_deref(),
                    context,
                    now,
                )
            } else {
                let plan = match (&recorded_plan, case.current_plan_id) {
                    (Some(plan), _) => Some(plan.clone()),
                    (None, Some(id)) => tx.plan(id).await?,
                    (None, None) => None,
                };
                // The planner gets the findings: those this transition brings (the analyst's
                // answer ending ANALYZING), else the latest the case has.
                let findings = if *topic == workflow::messages::topic::PLAN_GENERATE {
                    match request.meta.get("findings") {
                        Some(Value::Array(findings)) => findings.clone(),
                        _ => tx.latest_findings(case.id).await?.unwrap_or_default(),
                    }
                } else {
                    Vec::new()
                };
                crate::commands::command_message(
                    message_id(&case, topic),
                    &case,
                    topic,
                    plan.as_ref(),
                    &context.identity_or(&request.actor),
                    &crate::commands::CommandOptions {
                        findings,
                        ..Default::default()
                    },
                    context,
                    now,
                )
            };
            tx.append_outbox(&message).await?;
        }
    }
    Ok(case)
}

/// The timeline row for `request` on `case`, which moved (or, refused, stayed) from `from` to
/// `to`; the row carries the case's version after the event.
#[allow(clippy::too_many_arguments)]
pub(crate) fn timeline_entry(
    case: &Case,
    request: &TransitionRequest,
    outcome: Outcome,
    from: Status,
    to: Status,
    meta: Map<String, Value>,
    context: &RequestContext,
    now: DateTime<Utc>,
) -> NewTimelineEntry {
    NewTimelineEntry {
        case_id: case.id,
        version: case.version,
        event: request.event.as_str().into(),
        outcome,
        from_status: Some(from),
        to_status: Some(to),
        actor: request.actor.clone(),
        principal_id: context.principal_identity(),
        principal_name: context.principal_name(),
        reason: request.reason.clone(),
        correlation_id: context.correlation_id.clone(),
        request_id: context.request_id.clone(),
        meta: server_meta(meta, context),
        created_at: now,
    }
}

/// Client meta plus the trace context; server keys win over client keys of the same name.
pub(crate) fn server_meta(mut meta: Map<String, Value>, context: &RequestContext) -> Value {
    if let Some(traceparent) = &context.traceparent {
        meta.insert("traceparent".into(), Value::String(traceparent.clone()));
    }
    if let Some(trace_id) = context.trace_id() {
        meta.insert("trace_id".into(), Value::String(trace_id.to_string()));
    }
    Value::Object(meta)
}

fn message_id(case: &Case, topic: &str) -> Uuid {
    Uuid::new_v5(
        &MESSAGE_ID_NAMESPACE,
        format!("{}/{}/{topic}", case.id, case.version).as_bytes(),
    )
}

/// The transition's fact (`evt.case.transition.v1`), or the outcome (`evt.case.outcome.v1`)
/// published beside it on entering CLOSED or PARKED: the same payload.
#[allow(clippy::too_many_arguments)]
fn transition_message(
    topic: &str,
    case: &Case,
    event: &str,
    from: Option<Status>,
    actor: &str,
    reason: Option<&str>,
    context: &RequestContext,
    now: DateTime<Utc>,
) -> OutboxMessage {
    OutboxMessage {
        message_id: message_id(case, topic),
        topic: topic.into(),
        key: case.id.to_string(),
        payload: json!({
            "case_id": case.id,
            "tenant": case.tenant,
            "event": event,
            "from": from,
            "to": case.status,
            "version": case.version,
            "actor": actor,
            "reason": reason,
            "resolution": case.resolution,
            "plan_id": case.current_plan_id,
            "occurred_at": now,
        }),
        headers: context.outbox_headers(),
        created_at: now,
    }
}

fn digest(value: &Value) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(value).expect("a JSON value serializes"),
    ))
}
