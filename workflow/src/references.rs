//! What the Librarian attaches to a plan: the runbook chunks and the past cases that fit the
//! case, each past case with what its plan did, its rollback and how it ended ("rollback
//! hints"). Informative only: no guard and no gate decision reads them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// References for one case.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct References {
    /// The words searched: the case's title, labels, alert name and findings.
    pub query: String,
    /// Runbook chunks, best first; the runbook the alert's `runbook_url` names comes first.
    pub runbooks: Vec<RunbookRef>,
    /// The most similar past cases of the same tenant (never the case itself), best first.
    pub past_cases: Vec<PastCaseRef>,
}

/// One chunk of a runbook (or of any other document that is not a past case).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunbookRef {
    pub doc_id: String,
    pub title: String,
    /// The document's URL or path as imported.
    pub url: String,
    /// `KubePodCrashLooping › Mitigation`.
    pub heading_path: String,
    /// The chunk's text, clipped.
    pub excerpt: String,
    /// Higher is better; comparable within one answer only.
    pub score: f64,
    /// `runbook_url` when the alert names this document, else `search`.
    pub matched_by: String,
}

/// A past case like this one, with its rollback hints.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastCaseRef {
    pub case_id: String,
    /// Its knowledge-base document.
    pub doc_id: String,
    pub title: String,
    /// `CLOSED` or `PARKED` when the document was written.
    pub status: String,
    /// How it ended: `resolved` or `cancelled` (CLOSED), else the event that parked it:
    /// `plan_failed`, `gate_rejected`, `exec_failed` or `verify_failed`.
    pub outcome: String,
    /// Why, as the timeline says (the failure, the verdict, the cancel reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The verifier's verdict, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// What its plan did, step by step.
    pub plan_steps: Vec<StepHint>,
    /// Its plan's rollback steps: the rollback hints.
    pub rollback_hints: Vec<StepHint>,
    /// Higher is better; comparable within one answer only.
    pub score: f64,
}

/// A step of a past plan.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepHint {
    pub id: String,
    pub action: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: Value,
    /// How it went when the case ran it: `succeeded`, `failed`, `skipped`; absent when it
    /// did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

impl References {
    pub fn is_empty(&self) -> bool {
        self.runbooks.is_empty() && self.past_cases.is_empty()
    }

    /// What the timeline shows of them: each runbook chunk by its heading path, each past case
    /// by its id and outcome.
    pub fn summary(&self) -> Value {
        json!({
            "runbooks": self.runbooks.iter().map(|r| json!({
                "heading_path": r.heading_path,
                "url": r.url,
            })).collect::<Vec<_>>(),
            "past_cases": self.past_cases.iter().map(|c| json!({
                "case_id": c.case_id,
                "outcome": c.outcome,
                "rollback_hints": c.rollback_hints.len(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_each_reference_briefly() {
        let references = References {
            query: "KubePodCrashLooping checkout".into(),
            runbooks: vec![RunbookRef {
                doc_id: "d1".into(),
                title: "KubePodCrashLooping".into(),
                url: "kubernetes/KubePodCrashLooping.md".into(),
                heading_path: "KubePodCrashLooping › Mitigation".into(),
                excerpt: "long text".into(),
                score: 1.5,
                matched_by: "search".into(),
            }],
            past_cases: vec![PastCaseRef {
                case_id: "c1".into(),
                doc_id: "d2".into(),
                title: "t".into(),
                status: "PARKED".into(),
                outcome: "exec_failed".into(),
                reason: None,
                verdict: None,
                plan_steps: vec![],
                rollback_hints: vec![StepHint {
                    id: "undo".into(),
                    action: "noop".into(),
                    params: json!({}),
                    result: None,
                }],
                score: 0.5,
            }],
        };
        assert!(!references.is_empty());
        assert_eq!(
            references.summary(),
            json!({
                "runbooks": [{"heading_path": "KubePodCrashLooping › Mitigation",
                              "url": "kubernetes/KubePodCrashLooping.md"}],
                "past_cases": [{"case_id": "c1", "outcome": "exec_failed", "rollback_hints": 1}],
            })
        );
        assert!(References::default().is_empty());
    }
}
