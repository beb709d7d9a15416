//! The signal → case path, shared by every intake and by the analyst's anomalies: each signal
//! is routed, deduplicated and joined to its group's open case or opens one, in one
//! transaction with its envelope, the case's timeline rows and outbox messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map};
use utoipa::ToSchema;
use uuid::Uuid;
use workflow::{Event, Status as CaseStatus};

use orchestrator::model::{Automation, NewCase};
use orchestrator::{Note, Orchestrator, RequestContext, StoreError, TransitionRequest, Tx};

use crate::correlate::{self, Decision, Group};
use crate::evidence::LinkSettings;
use crate::intake::{IntakeError, Limits};
use crate::metrics::SensorMetrics;
use crate::route::{clip, Route, Routes};
use crate::signal::{Signal, Source, Status};
use crate::store::{self, capped_raw, Envelope, Evidence, Seen};

/// Why a delivery was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The payload, or one of its values, cannot be used (400).
    #[error(transparent)]
    Invalid(#[from] IntakeError),
    /// The caller may not post into the tenant a signal names (403).
    #[error("{field}: {message}")]
    Forbidden { field: String, message: String },
    #[error(transparent)]
    Orchestrator(#[from] orchestrator::Error),
}

impl From<StoreError> for IngestError {
    fn from(error: StoreError) -> Self {
        IngestError::Orchestrator(error.into())
    }
}

/// What became of one signal.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SignalOutcome {
    pub fingerprint: String,
    /// `firing`, `resolved` or `acknowledged`.
    pub status: String,
    /// `opened`, `joined`, `resolved`, `cancelled`, `acknowledged`, `recorded` or `duplicate`.
    pub outcome: String,
    /// The case it went to (absent when there was none: `recorded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_id: Option<Uuid>,
    /// The envelope written (absent for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope_id: Option<Uuid>,
}

/// Who delivers: the tenant the caller's key is confined to, and the request's ids.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub tenant: Option<String>,
    pub context: RequestContext,
}

/// The sensor's settings.
#[derive(Debug, Clone, Default)]
pub struct SensorSettings {
    pub routes: Routes,
    pub limits: Limits,
    pub links: LinkSettings,
}

pub struct Sensor {
    orchestrator: Arc<Orchestrator>,
    settings: SensorSettings,
    metrics: SensorMetrics,
}

/// The case changes of a delivery, reported after its commit.
#[derive(Default)]
struct Changes {
    opened: Vec<Source>,
    transitions: Vec<(CaseStatus, CaseStatus, Event)>,
}

impl Sensor {
    pub fn new(orchestrator: Arc<Orchestrator>, settings: SensorSettings) -> Self {
        let metrics = SensorMetrics::register(&orchestrator.metrics().registry);
        Self {
            orchestrator,
            settings,
            metrics,
        }
    }

    pub fn settings(&self) -> &SensorSettings {
        &self.settings
    }

    pub fn metrics(&self) -> &SensorMetrics {
        &self.metrics
    }

    pub fn orchestrator(&self) -> &Arc<Orchestrator> {
        &self.orchestrator
    }

    /// The route a signal takes: its own (an analyst rule's), else the first configured one
    /// that matches, else the default.
    fn route_of<'a>(&'a self, signal: &'a Signal) -> &'a Route {
        signal
            .route
            .as_ref()
            .unwrap_or_else(|| self.settings.routes.route(signal))
    }

    /// Take in a payload's signals, all or nothing: one transaction, answered once committed.
    /// `fields` names each signal's place in the payload (`alerts[3]`) for errors.
    pub async fn ingest(
        &self,
        source: Source,
        signals: Vec<Signal>,
        fields: &[String],
        caller: &Caller,
    ) -> Result<Vec<SignalOutcome>, IngestError> {
        let timer = self.metrics.ingest_timer(source).start_timer();
        let mut tenants = signals
            .iter()
            .zip(fields)
            .map(|(signal, field)| tenant_of(signal, field, caller))
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|_| self.metrics.received(source, "invalid"))?;
        // A resolution that names no tenant (PagerDuty's carries only the dedup_key) goes to
        // the tenant its alert fired in, when the key is not confined to one.
        for (signal, tenant) in signals.iter().zip(&mut tenants) {
            let names_none = signal.tenant_label().is_none() && caller.tenant.is_none();
            if names_none && signal.status != Status::Firing {
                let found = self
                    .store()
                    .tenant_of_alert(source.as_str(), &signal.fingerprint)
                    .await?;
                if let Some(found) = found {
                    *tenant = found;
                }
            }
        }

        // Alertmanager resends every group on each `repeat_interval`, and an HA pair sends
        // everything twice: states the store holds already are answered from a read, without
        // the writer. (A state taken concurrently is caught again under the group's lock.)
        let seen = self.seen(source, &signals, &tenants).await?;
        let mut outcomes: Vec<Option<SignalOutcome>> = vec![None; signals.len()];
        let mut pending: Vec<(String, usize)> = Vec::new();
        for (index, signal) in signals.iter().enumerate() {
            let before = seen.get(&(tenants[index].as_str(), signal.fingerprint.as_str()));
            match before {
                Some(before) if before.state_key == signal.state_key() => {
                    outcomes[index] = Some(duplicate_outcome(signal, before.case_id));
                }
                // A resolution goes to the group its alert fired in, even if it carries no
                // labels.
                Some(before) if signal.status != Status::Firing => {
                    pending.push((before.group_key.clone(), index));
                }
                _ => pending.push((
                    self.route_of(signal).group_key(&tenants[index], signal),
                    index,
                )),
            }
        }

        let mut changes = Changes::default();
        if !pending.is_empty() {
            // Groups are locked in one order by every delivery, so two never wait on each
            // other; the stable sort keeps each group's signals in the order they came.
            pending.sort_by(|a, b| a.0.cmp(&b.0));
            let now = Utc::now();
            let mut tx = self.orchestrator.store().begin().await?;
            for members in pending.chunk_by(|a, b| a.0 == b.0) {
                let group = Members {
                    key: &members[0].0,
                    indices: members.iter().map(|(_, index)| *index).collect(),
                };
                self.take_group(
                    tx.as_mut(),
                    &group,
                    &signals,
                    &tenants,
                    caller,
                    now,
                    &mut changes,
                    &mut outcomes,
                )
                .await?;
            }
            tx.commit().await?;
        }
        timer.observe_duration();

        for source in &changes.opened {
            self.metrics.opened(*source);
        }
        if !pending.is_empty() {
            self.orchestrator
                .committed(changes.opened.len(), &changes.transitions);
        }
        let outcomes: Vec<SignalOutcome> = outcomes.into_iter().flatten().collect();
        for (signal, outcome) in signals.iter().zip(&outcomes) {
            self.metrics.received(signal.source, signal.status.as_str());
            if outcome.outcome == "duplicate" {
                self.metrics.duplicate(signal.source);
            }
        }
        Ok(outcomes)
    }

    /// What the store holds of the delivery's alerts, by tenant and fingerprint.
    async fn seen<'a>(
        &self,
        source: Source,
        signals: &'a [Signal],
        tenants: &'a [String],
    ) -> Result<HashMap<(&'a str, &'a str), Seen>, IngestError> {
        let mut by_tenant: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (signal, tenant) in signals.iter().zip(tenants) {
            by_tenant
                .entry(tenant.as_str())
                .or_default()
                .push(signal.fingerprint.as_str());
        }
        let mut seen = HashMap::new();
        for (tenant, fingerprints) in by_tenant {
            let states = self
                .store()
                .latest_states(tenant, source.as_str(), &fingerprints)
                .await?;
            for fingerprint in fingerprints {
                if let Some(state) = states.get(fingerprint) {
                    seen.insert((tenant, fingerprint), state.clone());
                }
            }
        }
        Ok(seen)
    }

    /// The signals of one group, inside the delivery's transaction: the group's row and case
    /// are locked once, each signal is decided in turn, and their envelopes and evidence go
    /// with the transaction's commit.
    #[allow(clippy::too_many_arguments)]
    async fn take_group(
        &self,
        tx: &mut dyn Tx,
        members: &Members<'_>,
        signals: &[Signal],
        tenants: &[String],
        caller: &Caller,
        now: DateTime<Utc>,
        changes: &mut Changes,
        outcomes: &mut [Option<SignalOutcome>],
    ) -> Result<(), IngestError> {
        // The group key holds the tenant and the route: every member's are the same.
        let first = &signals[members.indices[0]];
        let tenant = tenants[members.indices[0]].as_str();
        let source = first.source.as_str();
        let route = self.route_of(first);
        let mut group = store::lock_group(
            &mut tx.connection().await?,
            members.key,
            tenant,
            &route.name,
            &route.group_labels(first),
        )
        .await?;
        // Read again under the group's lock: a racing delivery of the same state is seen now.
        let fingerprints: Vec<&str> = members
            .indices
            .iter()
            .map(|&index| signals[index].fingerprint.as_str())
            .collect();
        let mut states: HashMap<String, String> =
            store::latest_states_in(&mut tx.connection().await?, tenant, source, &fingerprints)
                .await?
                .into_iter()
                .map(|(fingerprint, seen)| (fingerprint, seen.state_key))
                .collect();
        let mut case = match group.case_id {
            Some(id) => tx.lock_case(id).await?.map(|locked| locked.case),
            None => None,
        };
        let actor = format!("sensor/{source}");
        let mut envelopes = Vec::with_capacity(members.indices.len());
        let mut evidence = Vec::new();
        for &index in &members.indices {
            let signal = &signals[index];
            let route = self.route_of(signal);
            let duplicate = states.get(&signal.fingerprint) == Some(&signal.state_key());
            let (decision, firing) = correlate::decide(
                signal.status,
                &signal.fingerprint,
                duplicate,
                route,
                &Group {
                    case_id: group.case_id,
                    firing: group.firing.clone(),
                    touched_at: group.touched_at,
                },
                case.as_ref().map(|c| c.status),
                now,
            );
            if decision == Decision::Duplicate {
                outcomes[index] = Some(duplicate_outcome(signal, group.case_id));
                continue;
            }
            let envelope_id = Uuid::now_v7();
            let context = RequestContext {
                correlation_id: Some(envelope_id.to_string()),
                ..caller.context.clone()
            };
            let taken = Taken {
                signal,
                envelope_id,
                actor: &actor,
                route,
                context: &context,
                now,
            };
            let (outcome, case_id) = match decision {
                Decision::Duplicate => unreachable!("answered above"),
                Decision::Open => {
                    let opened = self.open(tx, &taken, tenant, changes).await?;
                    self.note(tx, &opened, "signal", &taken).await?;
                    let id = opened.id;
                    case = Some(opened);
                    ("opened", Some(id))
                }
                Decision::Join(id) => {
                    let joined = case.as_ref().expect("a joined case is locked");
                    self.note(tx, joined, "signal", &taken).await?;
                    ("joined", Some(id))
                }
                Decision::Resolve { case_id, cancel } => {
                    let resolved = case.as_ref().expect("a resolved case is locked");
                    self.note(tx, resolved, "signal_resolved", &taken).await?;
                    if cancel {
                        let request = cancel_request(case_id, &actor, route);
                        let (moved, accepted) = self
                            .orchestrator
                            .apply_in(tx, request, &context, now)
                            .await?;
                        changes
                            .transitions
                            .push((accepted.from, accepted.to, Event::Cancel));
                        case = Some(moved);
                        ("cancelled", Some(case_id))
                    } else {
                        ("resolved", Some(case_id))
                    }
                }
                Decision::Acknowledge(case_id) => {
                    let acknowledged = case.as_ref().expect("an acknowledged case is locked");
                    self.note(tx, acknowledged, "signal_acknowledged", &taken)
                        .await?;
                    ("acknowledged", Some(case_id))
                }
                Decision::Record => ("recorded", None),
            };
            let envelope = Envelope {
                id: envelope_id,
                tenant: tenant.to_string(),
                source: source.to_string(),
                kind: signal.source.kind().to_string(),
                severity: signal.severity.clone(),
                title: signal.title.clone(),
                summary: signal.summary.clone(),
                labels: signal.labels.clone(),
                annotations: signal.annotations.clone(),
                fingerprint: signal.fingerprint.clone(),
                status: signal.status.as_str().to_string(),
                starts_at: signal.starts_at,
                ends_at: signal.ends_at,
                generator_url: signal.generator_url.clone(),
                route: route.name.clone(),
                outcome: outcome.to_string(),
                case_id,
                received_at: now,
                raw: capped_raw(&signal.raw),
                state_key: signal.state_key(),
                group_key: members.key.to_string(),
            };
            if let (Some(case_id), "opened" | "joined") = (case_id, outcome) {
                evidence.push(alert_evidence(signal, &envelope, case_id, &actor, now));
                for link in &signal.links {
                    evidence.push(link_evidence(link, case_id, &actor, now));
                }
                for reference in &signal.references {
                    evidence.push(reference_evidence(reference, case_id, &actor, now));
                }
            }
            if outcome == "opened" {
                group.case_id = case_id;
            }
            group.firing = firing;
            group.touched_at = Some(now);
            states.insert(signal.fingerprint.clone(), signal.state_key());
            outcomes[index] = Some(SignalOutcome {
                fingerprint: signal.fingerprint.clone(),
                status: signal.status.as_str().into(),
                outcome: outcome.into(),
                case_id,
                envelope_id: Some(envelope_id),
            });
            envelopes.push(envelope);
        }
        store::defer_envelopes(tx, &envelopes);
        store::defer_evidence(tx, &evidence)?;
        store::defer_group_update(tx, members.key, &group);
        Ok(())
    }

    /// Open the group's case; an `auto` route's case goes on by itself.
    async fn open(
        &self,
        tx: &mut dyn Tx,
        taken: &Taken<'_>,
        tenant: &str,
        changes: &mut Changes,
    ) -> Result<orchestrator::model::Case, IngestError> {
        let Taken {
            signal,
            route,
            actor,
            context,
            now,
            ..
        } = *taken;
        let new = NewCase {
            tenant: tenant.to_string(),
            title: case_title(signal),
            severity: route.case_severity(&signal.severity),
            labels: route.case_labels(signal),
            automation: route.automation,
            evidence: Vec::new(),
            source: signal.source.as_str().to_string(),
            created_by: actor.to_string(),
        };
        let mut case = self
            .orchestrator
            .open_case_in(tx, new, context, now)
            .await?;
        changes.opened.push(signal.source);
        if route.automation == Automation::Auto {
            // ANALYZING asks the analyst (`cmd.analysis.run`); its findings move the case on.
            let event = Event::StartAnalysis;
            let request = plain_request(case.id, event, actor, None);
            let (moved, accepted) = self
                .orchestrator
                .apply_in(tx, request, context, now)
                .await?;
            changes
                .transitions
                .push((accepted.from, accepted.to, event));
            case = moved;
        }
        Ok(case)
    }

    /// A timeline row on the signal's case that moves nothing.
    async fn note(
        &self,
        tx: &mut dyn Tx,
        case: &orchestrator::model::Case,
        event: &str,
        taken: &Taken<'_>,
    ) -> Result<(), IngestError> {
        let signal = taken.signal;
        let mut meta = Map::new();
        meta.insert("envelope_id".into(), json!(taken.envelope_id));
        meta.insert("fingerprint".into(), json!(signal.fingerprint));
        meta.insert("status".into(), json!(signal.status.as_str()));
        meta.insert("route".into(), json!(taken.route.name));
        meta.insert("labels".into(), json!(signal.labels));
        if let Some(url) = &signal.generator_url {
            meta.insert("generator_url".into(), json!(url));
        }
        let reason = format!(
            "{} {}: {}",
            signal.name(),
            signal.status.as_str(),
            clip(&signal.title, 512)
        );
        self.orchestrator
            .note_in(
                tx,
                case,
                Note {
                    event: event.into(),
                    actor: taken.actor.into(),
                    reason: Some(reason),
                    meta,
                },
                taken.context,
                taken.now,
            )
            .await?;
        Ok(())
    }
}

/// The signals of one group in a delivery: its key and their places in the payload, in the
/// order they came.
struct Members<'a> {
    key: &'a str,
    indices: Vec<usize>,
}

/// A signal being taken: what its case's rows and its envelope are written with.
#[derive(Clone, Copy)]
struct Taken<'a> {
    signal: &'a Signal,
    envelope_id: Uuid,
    actor: &'a str,
    route: &'a Route,
    context: &'a RequestContext,
    now: DateTime<Utc>,
}

fn duplicate_outcome(signal: &Signal, case_id: Option<Uuid>) -> SignalOutcome {
    SignalOutcome {
        fingerprint: signal.fingerprint.clone(),
        status: signal.status.as_str().into(),
        outcome: "duplicate".into(),
        case_id,
        envelope_id: None,
    }
}

/// The tenant a signal goes to: its `tenant` label, else the key's tenant, else `default`. A
/// key confined to a tenant cannot post into another one.
fn tenant_of(signal: &Signal, field: &str, caller: &Caller) -> Result<String, IngestError> {
    resolve_tenant(
        signal.tenant_label(),
        &format!("{field}.labels.tenant"),
        caller,
    )
}

/// The tenant a signal or change goes to: the one it names (`field`), else the key's, else
/// `default`; a key confined to a tenant may not name another.
fn resolve_tenant(
    named: Option<&str>,
    field: &str,
    caller: &Caller,
) -> Result<String, IngestError> {
    let tenant = match (named, caller.tenant.as_deref()) {
        (Some(named), Some(own)) if named != own => {
            return Err(IngestError::Forbidden {
                field: field.to_string(),
                message: format!(
                    "this key is scoped to tenant {own:?} and cannot post signals for {named:?}"
                ),
            })
        }
        (Some(named), _) => named.to_string(),
        (None, Some(own)) => own.to_string(),
        (None, None) => "default".to_string(),
    };
    let valid = (1..=64).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        return Err(IntakeError::new(field, "a tenant is 1 to 64 of A-Z a-z 0-9 - _ .").into());
    }
    Ok(tenant)
}

/// At most 200 characters, as a case title may hold.
fn case_title(signal: &Signal) -> String {
    let title: String = signal.title.trim().chars().take(200).collect();
    if title.is_empty() {
        signal.name().chars().take(200).collect()
    } else {
        title
    }
}

fn alert_evidence(
    signal: &Signal,
    envelope: &Envelope,
    case_id: Uuid,
    actor: &str,
    now: DateTime<Utc>,
) -> Evidence {
    let mut evidence = Evidence {
        id: Uuid::now_v7(),
        case_id,
        kind: "alert".into(),
        title: case_title(signal),
        note: signal.summary.clone().map(|s| clip(&s, 4096)),
        locator: None,
        reference: Some(json!({"table": "event_envelope", "keys": {"id": envelope.id}})),
        url: signal.generator_url.clone(),
        href: None,
        created_by: actor.to_string(),
        created_at: now,
        content_hash: String::new(),
    };
    evidence.content_hash = crate::evidence::content_hash(&evidence);
    evidence
}

/// A row that backs the signal up (the analyst's metric window).
fn reference_evidence(
    reference: &crate::signal::Reference,
    case_id: Uuid,
    actor: &str,
    now: DateTime<Utc>,
) -> Evidence {
    let mut evidence = Evidence {
        id: Uuid::now_v7(),
        case_id,
        kind: reference.kind.clone(),
        title: reference.title.chars().take(200).collect(),
        note: None,
        locator: None,
        reference: Some(reference.reference.clone()),
        url: None,
        href: None,
        created_by: actor.to_string(),
        created_at: now,
        content_hash: String::new(),
    };
    evidence.content_hash = crate::evidence::content_hash(&evidence);
    evidence
}

/// A link the sender attached (Grafana's dashboard, PagerDuty's `links`).
fn link_evidence(
    link: &crate::signal::Link,
    case_id: Uuid,
    actor: &str,
    now: DateTime<Utc>,
) -> Evidence {
    let mut evidence = Evidence {
        id: Uuid::now_v7(),
        case_id,
        kind: "url".into(),
        title: link.text.chars().take(200).collect(),
        note: None,
        locator: None,
        reference: None,
        url: Some(link.href.clone()),
        href: None,
        created_by: actor.to_string(),
        created_at: now,
        content_hash: String::new(),
    };
    evidence.content_hash = crate::evidence::content_hash(&evidence);
    evidence
}

fn plain_request(
    case_id: Uuid,
    event: Event,
    actor: &str,
    reason: Option<String>,
) -> TransitionRequest {
    TransitionRequest {
        case_id,
        event,
        actor: actor.to_string(),
        reason,
        meta: Map::new(),
        plan: None,
        approval: None,
        results: Vec::new(),
        if_match: None,
        expected_version: None,
        policy_rev: None,
        decision_inputs: None,
        plan_requester: None,
        plan_references: None,
    }
}

fn cancel_request(case_id: Uuid, actor: &str, route: &Route) -> TransitionRequest {
    plain_request(
        case_id,
        Event::Cancel,
        actor,
        Some(format!(
            "every alert of the case's group resolved (route {:?}, on_resolved = cancel)",
            route.name
        )),
    )
}

/// Labels as `k=v, ...` (for titles and logs).
pub fn describe(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Sensor {
    /// Add evidence to a case the caller may see, unless the same content is there already:
    /// the evidence (with its link) and whether it is new. A new one is a timeline row too, in
    /// the same transaction.
    pub async fn add_evidence(
        &self,
        case_id: Uuid,
        new: crate::evidence::NewEvidence,
        context: &RequestContext,
    ) -> Result<(Evidence, bool), IngestError> {
        // 404 for a case the key's tenant may not see, before anything is written.
        self.orchestrator.get_case(case_id, context).await?;
        let now = Utc::now();
        let who = context
            .principal
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_else(|| "opscase".into());
        let evidence = new.into_evidence(case_id, &who, now)?;
        let mut tx = self.orchestrator.store().begin().await?;
        let case = tx
            .lock_case(case_id)
            .await?
            .ok_or(orchestrator::Error::NotFound(case_id))?
            .case;
        let (mut kept, created) =
            store::insert_evidence(&mut tx.connection().await?, &evidence).await?;
        if created {
            let mut meta = Map::new();
            meta.insert("evidence_id".into(), json!(kept.id));
            meta.insert("kind".into(), json!(kept.kind));
            self.orchestrator
                .note_in(
                    tx.as_mut(),
                    &case,
                    Note {
                        event: "evidence".into(),
                        actor: who.clone(),
                        reason: Some(format!("{} evidence: {}", kept.kind, kept.title)),
                        meta,
                    },
                    context,
                    now,
                )
                .await?;
        }
        tx.commit().await?;
        kept.href = self.settings.links.href(&kept);
        Ok((kept, created))
    }

    /// A case's evidence, each with its link.
    pub async fn evidence_of(
        &self,
        case_id: Uuid,
        context: &RequestContext,
    ) -> Result<Vec<Evidence>, IngestError> {
        self.orchestrator.get_case(case_id, context).await?;
        let mut items = self.store().evidence(case_id).await?;
        for item in &mut items {
            item.href = self.settings.links.href(item);
        }
        Ok(items)
    }

    /// One piece of evidence, if its case is one the caller may see.
    pub async fn evidence_by_id(
        &self,
        id: Uuid,
        context: &RequestContext,
    ) -> Result<Option<Evidence>, IngestError> {
        let Some(mut evidence) = self.store().evidence_by_id(id).await? else {
            return Ok(None);
        };
        match self.orchestrator.get_case(evidence.case_id, context).await {
            Ok(_) => {}
            Err(orchestrator::Error::NotFound(_)) => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        evidence.href = self.settings.links.href(&evidence);
        Ok(Some(evidence))
    }

    /// Record a deploy or configuration change as an envelope (no case is opened or joined;
    /// the analyst reads recent changes when it examines a case).
    pub async fn record_change(
        &self,
        change: crate::intake::ChangeEvent,
        caller: &Caller,
    ) -> Result<Envelope, IngestError> {
        let tenant = resolve_tenant(
            change.tenant_label(),
            "payload.custom_details.tenant",
            caller,
        )?;
        let now = Utc::now();
        let id = Uuid::now_v7();
        let mut labels = BTreeMap::from([
            ("service".to_string(), change.service.clone()),
            ("kind".to_string(), change.kind.clone()),
        ]);
        if let Some(source) = &change.source {
            labels.insert("source".into(), clip(source, 1024));
        }
        let envelope = Envelope {
            id,
            tenant,
            source: "changes".into(),
            kind: change.kind.clone(),
            severity: "info".into(),
            title: change.summary.chars().take(200).collect(),
            summary: Some(change.summary.clone()),
            labels,
            annotations: change.details.clone(),
            fingerprint: id.simple().to_string(),
            state_key: "-|recorded".into(),
            status: "recorded".into(),
            starts_at: Some(change.at.unwrap_or(now)),
            ends_at: None,
            generator_url: change.links.first().map(|link| link.href.clone()),
            route: "changes".into(),
            group_key: String::new(),
            outcome: "recorded".into(),
            case_id: None,
            received_at: now,
            raw: capped_raw(&change.raw),
        };
        let mut tx = self.orchestrator.store().begin().await?;
        store::defer_envelopes(tx.as_mut(), std::slice::from_ref(&envelope));
        tx.commit().await?;
        self.metrics.change(&envelope.kind);
        Ok(envelope)
    }

    pub fn store(&self) -> crate::store::SensorStore {
        crate::store::SensorStore::new(self.orchestrator.store().pool())
    }
}
