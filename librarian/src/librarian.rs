//! The Librarian's thin part for cases: it reads a case's history (the orchestrator's tables
//! and the sensor's alerts, read only) to write the case's document when it closes or parks,
//! and to find any case's references. [`CaseDocuments`] is its consumer of
//! `evt.case.outcome.v1`.

use std::sync::Arc;

use async_trait::async_trait;
use bus::{Envelope, Handled, Handler};
use uuid::Uuid;

use orchestrator::store::{first_findings, FINDINGS_EVENTS};
use orchestrator::{Store, StoreError};
use sensor::store::SensorStore;
use workflow::references::References;
use workflow::{Status, TOPIC_CASE_OUTCOME};

use crate::cases::{case_document, CaseFacts, CaseHistory};
use crate::related::{references, Limits};
use crate::store::{KbStore, Upserted};

/// The consumer name of the case documents on the bus.
pub const CONSUMER: &str = "librarian";

/// Timeline rows read per page.
const TIMELINE_PAGE: u32 = 500;

#[derive(Clone)]
pub struct Librarian {
    cases: Arc<dyn Store>,
    kb: KbStore,
    alerts: SensorStore,
    limits: Limits,
}

impl Librarian {
    /// Over the orchestrator's store (whose database also holds the knowledge base and the
    /// sensor's alerts).
    pub fn new(cases: Arc<dyn Store>) -> Self {
        let pool = cases.pool();
        Self {
            kb: KbStore::new(pool.clone()),
            alerts: SensorStore::new(pool),
            cases,
            limits: Limits::default(),
        }
    }

    pub fn kb(&self) -> &KbStore {
        &self.kb
    }

    /// What the case is about, or `None` when there is no such case.
    pub async fn facts(&self, id: Uuid) -> Result<Option<CaseFacts>, StoreError> {
        let Some(case) = self.cases.get_case(id).await? else {
            return Ok(None);
        };
        let timeline = self.timeline(id).await?;
        Ok(Some(self.facts_of(&case, &timeline).await?))
    }

    async fn facts_of(
        &self,
        case: &orchestrator::model::Case,
        timeline: &[orchestrator::model::TimelineEntry],
    ) -> Result<CaseFacts, StoreError> {
        let mut annotations = std::collections::BTreeMap::new();
        for envelope in self.alerts.envelopes_of(case.id).await? {
            for (name, value) in envelope.annotations {
                annotations.entry(name).or_insert(value);
            }
        }
        let findings = first_findings(
            timeline
                .iter()
                .rev()
                .filter(|row| FINDINGS_EVENTS.contains(&row.event.as_str()))
                .map(|row| row.meta.clone()),
        )
        .unwrap_or_default();
        Ok(CaseFacts {
            id: case.id,
            tenant: case.tenant.clone(),
            title: case.title.clone(),
            labels: case.labels.clone(),
            annotations,
            findings,
        })
    }

    async fn timeline(
        &self,
        id: Uuid,
    ) -> Result<Vec<orchestrator::model::TimelineEntry>, StoreError> {
        let mut rows = Vec::new();
        loop {
            let page = self
                .cases
                .timeline(
                    id,
                    rows.last()
                        .map(|r: &orchestrator::model::TimelineEntry| r.id),
                    TIMELINE_PAGE,
                )
                .await?;
            let full = page.len() == TIMELINE_PAGE as usize;
            rows.extend(page);
            if !full {
                return Ok(rows);
            }
        }
    }

    /// The references of the case `id` (`None`: no such case).
    pub async fn references_of(&self, id: Uuid) -> Result<Option<References>, StoreError> {
        match self.facts(id).await? {
            Some(facts) => Ok(Some(references(&self.kb, &facts, self.limits).await?)),
            None => Ok(None),
        }
    }

    /// Write the document of case `id` if it is CLOSED or PARKED: what the upsert did, or
    /// `None` when there is nothing to write (no such case, or it is open).
    pub async fn write_case(&self, id: Uuid) -> Result<Option<Upserted>, StoreError> {
        let Some(case) = self.cases.get_case(id).await? else {
            return Ok(None);
        };
        if !matches!(case.status, Status::Closed | Status::Parked) {
            return Ok(None);
        }
        let timeline = self.timeline(id).await?;
        let facts = self.facts_of(&case, &timeline).await?;
        let plan = match case.current_plan_id {
            Some(plan_id) => self
                .cases
                .plans(id)
                .await?
                .into_iter()
                .find(|plan| plan.id == plan_id)
                .map(|plan| plan.plan),
            None => None,
        };
        let history = CaseHistory {
            case,
            facts,
            plan,
            timeline,
        };
        let Some(doc) = case_document(&history) else {
            return Ok(None);
        };
        // The document's time is the case's last change, so writing it again is a no-op.
        let upserted = self.kb.upsert(&doc, history.case.updated_at).await?;
        tracing::info!(case_id = %id, doc_id = %doc.id, result = ?upserted, "case document written");
        Ok(Some(upserted))
    }
}

/// What a sweep over the closed and parked cases did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

impl Librarian {
    /// Write (or confirm) the document of every CLOSED and PARKED case, of `tenant` or of
    /// all: the catch-up for cases that ended before the Librarian consumed transitions, or
    /// whose document was deleted. Idempotent: a second sweep finds everything unchanged.
    pub async fn sweep(&self, tenant: Option<&str>) -> Result<SweepReport, StoreError> {
        const PAGE: u32 = 200;
        let mut report = SweepReport::default();
        for status in [Status::Closed, Status::Parked] {
            let mut before = None;
            loop {
                let page = self
                    .cases
                    .list_cases(&orchestrator::model::CaseFilter {
                        status: Some(status),
                        tenant: tenant.map(str::to_string),
                        before,
                        limit: PAGE,
                        ..Default::default()
                    })
                    .await?;
                for case in &page {
                    match self.write_case(case.id).await? {
                        Some(Upserted::Created) => report.created += 1,
                        Some(Upserted::Updated) => report.updated += 1,
                        Some(Upserted::Unchanged) => report.unchanged += 1,
                        None => {}
                    }
                }
                if page.len() < PAGE as usize {
                    break;
                }
                before = page.last().map(|case| case.id);
            }
        }
        Ok(report)
    }
}

/// Writes a case's document on `evt.case.outcome.v1` (its transition to CLOSED or PARKED). The
/// case is read as it is then: if it moved on (resumed), there is nothing to write until its
/// next outcome.
pub struct CaseDocuments(pub Librarian);

#[async_trait]
impl Handler for CaseDocuments {
    async fn handle(&self, envelope: &Envelope) -> Handled {
        if envelope.kind != TOPIC_CASE_OUTCOME {
            return Handled::Done;
        }
        let Ok(case_id) = Uuid::parse_str(&envelope.subject) else {
            return Handled::Poison(format!("subject {:?} is not a case id", envelope.subject));
        };
        match self.0.write_case(case_id).await {
            Ok(_) => Handled::Done,
            // Retried, and dead-lettered (visibly) when it keeps failing.
            Err(error) => {
                tracing::warn!(%case_id, %error, "case document not written");
                Handled::Retry(error.to_string())
            }
        }
    }
}
