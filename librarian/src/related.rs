//! A case's references: the runbook chunks that fit it (the one its alert's `runbook_url`
//! names first) and the most similar past cases of its tenant, each with its rollback hints.

use orchestrator::StoreError;
use serde_json::Value;
use workflow::references::{PastCaseRef, References, RunbookRef, StepHint};

use crate::cases::{case_doc_id, CaseFacts, CASES_SOURCE};
use crate::store::{Hit, KbStore, SearchFilter};

/// How many of each kind a case gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub runbooks: usize,
    pub past_cases: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            runbooks: 5,
            past_cases: 3,
        }
    }
}

/// The longest a runbook excerpt gets, in characters.
pub const EXCERPT_MAX_CHARS: usize = 800;

/// Why a runbook chunk is among the references.
pub const BY_RUNBOOK_URL: &str = "runbook_url";
pub const BY_SEARCH: &str = "search";

/// Chunks searched per past case wanted: a case's document has several chunks.
const CHUNKS_PER_CASE: usize = 8;

/// The references of the case `facts` describes, as its tenant may see them.
pub async fn references(
    store: &KbStore,
    facts: &CaseFacts,
    limits: Limits,
) -> Result<References, StoreError> {
    let query = facts.query();
    let tenant = Some(facts.tenant.clone());
    let mut runbooks: Vec<RunbookRef> = Vec::new();
    if limits.runbooks > 0 {
        let hits = store
            .search(
                &query,
                limits.runbooks as i64,
                &SearchFilter {
                    tenant: tenant.clone(),
                    not_source: Some(CASES_SOURCE.into()),
                    ..SearchFilter::default()
                },
            )
            .await?;
        let named = match facts.runbook_url() {
            Some(url) => store
                .by_runbook_url(url, &facts.tenant)
                .await?
                .into_iter()
                .find(|doc| doc.source != CASES_SOURCE),
            None => None,
        };
        if let Some(doc) = &named {
            // The named runbook's own best chunks for this case first; its opening chunk when
            // none of its chunks matched the words.
            let mut own: Vec<RunbookRef> = hits
                .iter()
                .filter(|hit| hit.doc_id == doc.id)
                .map(|hit| runbook_ref(hit, BY_RUNBOOK_URL))
                .collect();
            if own.is_empty() {
                if let Some(stored) = store.get(&doc.id).await? {
                    if let Some(chunk) = stored.chunks.first() {
                        own.push(RunbookRef {
                            doc_id: doc.id.clone(),
                            title: doc.title.clone(),
                            url: doc.url.clone(),
                            heading_path: chunk.heading_path.clone(),
                            excerpt: excerpt(&chunk.content),
                            score: 0.0,
                            matched_by: BY_RUNBOOK_URL.into(),
                        });
                    }
                }
            }
            runbooks.extend(own);
        }
        runbooks.extend(
            hits.iter()
                .filter(|hit| named.as_ref().is_none_or(|doc| doc.id != hit.doc_id))
                .map(|hit| runbook_ref(hit, BY_SEARCH)),
        );
        runbooks.truncate(limits.runbooks);
    }

    let mut past_cases = Vec::new();
    if limits.past_cases > 0 {
        let own_doc = case_doc_id(&facts.tenant, facts.id);
        let hits = store
            .search(
                &query,
                (limits.past_cases * CHUNKS_PER_CASE) as i64,
                &SearchFilter {
                    tenant: tenant.clone(),
                    source: Some(CASES_SOURCE.into()),
                    ..SearchFilter::default()
                },
            )
            .await?;
        let mut seen: Vec<&str> = Vec::new();
        for hit in &hits {
            // Case documents always belong to a tenant: a global one is not a past case.
            if hit.doc_id == own_doc
                || hit.tenant.as_deref() != Some(facts.tenant.as_str())
                || seen.contains(&hit.doc_id.as_str())
            {
                continue;
            }
            seen.push(&hit.doc_id);
            let Some(doc) = store.summary(&hit.doc_id).await? else {
                continue;
            };
            past_cases.push(past_case_ref(hit, &doc.metadata));
            if past_cases.len() == limits.past_cases {
                break;
            }
        }
    }
    Ok(References {
        query,
        runbooks,
        past_cases,
    })
}

fn excerpt(content: &str) -> String {
    if content.chars().count() <= EXCERPT_MAX_CHARS {
        content.to_string()
    } else {
        let mut clipped: String = content.chars().take(EXCERPT_MAX_CHARS).collect();
        clipped.push('…');
        clipped
    }
}

fn runbook_ref(hit: &Hit, matched_by: &str) -> RunbookRef {
    RunbookRef {
        doc_id: hit.doc_id.clone(),
        title: hit.title.clone(),
        url: hit.url.clone(),
        heading_path: hit.heading_path.clone(),
        excerpt: excerpt(&hit.content),
        score: hit.score,
        matched_by: matched_by.into(),
    }
}

fn hints(value: &Value) -> Vec<StepHint> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_string)
}

/// A past case from its best chunk and its document's metadata (see
/// [`crate::cases::case_document`]).
fn past_case_ref(hit: &Hit, metadata: &Value) -> PastCaseRef {
    PastCaseRef {
        case_id: text(&metadata["case_id"]).unwrap_or_default(),
        doc_id: hit.doc_id.clone(),
        title: hit.title.clone(),
        status: text(&metadata["status"]).unwrap_or_default(),
        outcome: text(&metadata["outcome"]).unwrap_or_default(),
        reason: text(&metadata["reason"]),
        verdict: text(&metadata["verdict"]),
        plan_steps: hints(&metadata["plan_steps"]),
        rollback_hints: hints(&metadata["rollback"]),
        score: hit.score,
    }
}
