//! Past cases as knowledge (pure): what a case is about ([`CaseFacts`]: title, labels, its
//! alerts' annotations, findings) and, once it is CLOSED or PARKED, the document written from
//! its history ([`case_document`]): alert and findings, the plan's steps and rollback, what ran
//! and how it ended, the verdict and the resolution or failure. The document's metadata keeps
//! the same in structured form, so a reference to it can give the rollback hints as data.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};
use uuid::Uuid;

use orchestrator::model::{Case, Outcome, TimelineEntry};
use workflow::references::StepHint;
use workflow::Status;

use crate::chunk::search_title;
use crate::store::DocInput;

/// The source of the documents written from cases.
pub const CASES_SOURCE: &str = "cases";

/// The label that names an alert, and the annotation that names its runbook.
pub const ALERTNAME: &str = "alertname";
pub const RUNBOOK_URL: &str = "runbook_url";

/// The longest a finding's or a reason's text gets in a document.
const TEXT_MAX_CHARS: usize = 600;

/// What a case is about: the words its references are searched with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaseFacts {
    pub id: Uuid,
    pub tenant: String,
    pub title: String,
    pub labels: BTreeMap<String, String>,
    /// The annotations of the alerts that went to the case (the first alert's value wins).
    pub annotations: BTreeMap<String, String>,
    /// The latest findings of the analyst (`kind`, `title`, `score`, `detail`, ...).
    pub findings: Vec<Value>,
}

impl CaseFacts {
    pub fn alertname(&self) -> Option<&str> {
        self.labels.get(ALERTNAME).map(String::as_str)
    }

    pub fn runbook_url(&self) -> Option<&str> {
        self.annotations
            .get(RUNBOOK_URL)
            .map(String::as_str)
            .filter(|url| !url.trim().is_empty())
    }

    /// The search query: the title, the alert name, the other label values and the findings'
    /// titles, each once.
    pub fn query(&self) -> String {
        let mut words: Vec<&str> = vec![self.title.as_str()];
        words.extend(self.alertname());
        words.extend(
            self.labels
                .iter()
                .filter(|(name, _)| name.as_str() != ALERTNAME)
                .map(|(_, value)| value.as_str()),
        );
        words.extend(
            self.findings
                .iter()
                .filter_map(|finding| finding["title"].as_str()),
        );
        let mut query = String::new();
        for word in words {
            let word = word.trim();
            if !word.is_empty() && !query.split(" ").any(|seen| seen == word) {
                if !query.is_empty() {
                    query.push(' ');
                }
                query.push_str(word);
            }
        }
        query
    }
}

/// A case's history, as the orchestrator stored it.
#[derive(Debug, Clone)]
pub struct CaseHistory {
    pub case: Case,
    pub facts: CaseFacts,
    /// The current plan, if one was proposed.
    pub plan: Option<Value>,
    /// The whole timeline, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

/// The address a case's document is known by (and replaced under).
pub fn case_url(id: Uuid) -> String {
    format!("/v1/cases/{id}")
}

/// The id of a case's document.
pub fn case_doc_id(tenant: &str, id: Uuid) -> String {
    crate::store::doc_id(Some(tenant), CASES_SOURCE, &case_url(id))
}

/// How a case ended: `resolved`/`cancelled` when CLOSED, else the event that parked it.
fn outcome_of(history: &CaseHistory) -> (String, Option<String>) {
    let ending =
        history.timeline.iter().rev().find(|row| {
            row.outcome == Outcome::Applied && row.to_status == Some(history.case.status)
        });
    let reason = ending.and_then(|row| row.reason.clone());
    let outcome = match (history.case.status, &history.case.resolution) {
        (Status::Closed, Some(resolution)) => resolution.clone(),
        _ => ending
            .map(|row| row.event.clone())
            .unwrap_or_else(|| history.case.status.to_string().to_lowercase()),
    };
    (outcome, reason)
}

/// The step results of the last execution (`exec_done` / `exec_failed`): forward and rollback.
fn last_execution(timeline: &[TimelineEntry]) -> Option<&TimelineEntry> {
    timeline
        .iter()
        .rev()
        .find(|row| matches!(row.event.as_str(), "exec_done" | "exec_failed"))
}

fn results_of(meta: &Value, key: &str) -> BTreeMap<String, String> {
    meta[key]
        .as_array()
        .map(|results| {
            results
                .iter()
                .filter_map(|r| {
                    Some((
                        r["step"].as_str()?.to_string(),
                        r["status"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The steps of a plan section (`steps`, or `rollback.steps`), with how each ran.
pub fn step_hints(steps: &Value, results: &BTreeMap<String, String>) -> Vec<StepHint> {
    steps
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|step| {
                    let id = step["id"].as_str().unwrap_or_default().to_string();
                    StepHint {
                        result: results.get(&id).cloned(),
                        id,
                        action: step["action"].as_str().unwrap_or_default().to_string(),
                        params: step.get("params").cloned().unwrap_or_else(|| json!({})),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn clip(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= TEXT_MAX_CHARS {
        text.to_string()
    } else {
        let mut clipped: String = text.chars().take(TEXT_MAX_CHARS).collect();
        clipped.push('…');
        clipped
    }
}

fn step_lines(out: &mut String, hints: &[StepHint]) {
    for hint in hints {
        let _ = write!(out, "- `{}`: {} {}", hint.id, hint.action, hint.params);
        if let Some(result) = &hint.result {
            let _ = write!(out, " ({result})");
        }
        out.push('\n');
    }
}

/// The document of a CLOSED or PARKED case (`None` in any other state). It is a function of
/// the history only, so writing it again for the same history changes nothing.
pub fn case_document(history: &CaseHistory) -> Option<DocInput> {
    let case = &history.case;
    if !matches!(case.status, Status::Closed | Status::Parked) {
        return None;
    }
    let facts = &history.facts;
    let (outcome, reason) = outcome_of(history);
    let execution = last_execution(&history.timeline);
    let empty = Value::Null;
    let exec_meta = execution.map(|row| &row.meta).unwrap_or(&empty);
    let forward_results = results_of(exec_meta, "results");
    let rollback_results = results_of(exec_meta, "rollback");
    let plan = history.plan.as_ref().unwrap_or(&empty);
    let plan_steps = step_hints(&plan["steps"], &forward_results);
    let rollback = step_hints(&plan["rollback"]["steps"], &rollback_results);
    let verification = history
        .timeline
        .iter()
        .rev()
        .find(|row| matches!(row.event.as_str(), "verify_pass" | "verify_failed"));
    let verdict = verification.and_then(|row| row.meta["verdict"].as_str().map(str::to_string));

    let mut text = String::new();
    let _ = writeln!(text, "# {}\n", case.title.trim());
    let _ = writeln!(
        text,
        "Case {} of {}, severity {}: {} ({outcome}).\n",
        case.id,
        case.tenant,
        case.severity.as_str(),
        case.status
    );
    text.push_str("## Alert\n\n");
    if let Some(alertname) = facts.alertname() {
        let _ = writeln!(text, "Alert: {alertname}\n");
    }
    for (name, value) in &case.labels {
        let _ = writeln!(text, "- {name}: {value}");
    }
    for (name, value) in &facts.annotations {
        let _ = writeln!(text, "- {name}: {}", clip(value));
    }
    text.push('\n');
    if !facts.findings.is_empty() {
        text.push_str("## Findings\n\n");
        for finding in &facts.findings {
            let _ = writeln!(
                text,
                "- {} ({}): {}",
                finding["title"].as_str().unwrap_or("finding"),
                finding["kind"].as_str().unwrap_or("?"),
                clip(
                    finding["detail"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| finding["detail"].to_string())
                        .as_str()
                )
            );
        }
        text.push('\n');
    }
    if !plan.is_null() {
        let _ = writeln!(
            text,
            "## Plan\n\n{}\n",
            plan["title"].as_str().unwrap_or("(untitled plan)")
        );
        step_lines(&mut text, &plan_steps);
        text.push_str("\n## Rollback\n\n");
        if rollback.is_empty() {
            text.push_str("No rollback steps.\n");
        }
        step_lines(&mut text, &rollback);
        text.push('\n');
    }
    if let Some(row) = execution {
        let _ = writeln!(text, "## Execution\n\n{}", row.event);
        if let Some(reason) = &row.reason {
            let _ = writeln!(text, "\n{}", clip(reason));
        }
        text.push('\n');
    }
    if let Some(row) = verification {
        let _ = writeln!(
            text,
            "## Verdict\n\n{}\n",
            clip(
                row.reason
                    .as_deref()
                    .or(verdict.as_deref())
                    .unwrap_or(&row.event)
            )
        );
    }
    let _ = writeln!(text, "## Outcome\n\n{outcome}");
    if let Some(reason) = &reason {
        let _ = writeln!(text, "\n{}", clip(reason));
    }

    let metadata = json!({
        "case_id": case.id,
        "status": case.status,
        "outcome": outcome,
        "reason": reason.as_deref().map(clip),
        "verdict": verdict,
        "alertname": facts.alertname(),
        "labels": case.labels,
        "plan_steps": plan_steps,
        "rollback": rollback,
    });
    let url = case_url(case.id);
    let mut doc = DocInput::markdown(
        Some(case.tenant.clone()),
        CASES_SOURCE,
        &url,
        &text,
        &case.title,
        Some(&metadata),
    );
    // The title field (weighted above headings and body) also carries the alert name.
    doc.search_title = search_title(
        &format!("{} {}", doc.title, facts.alertname().unwrap_or_default()),
        None,
    );
    Some(doc)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use orchestrator::model::{Automation, Severity};

    use super::*;

    fn case(status: Status, resolution: Option<&str>) -> Case {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        Case {
            id: Uuid::from_u128(7),
            tenant: "t-1".into(),
            title: "Pod checkout is crash looping".into(),
            severity: Severity::High,
            labels: [
                ("alertname", "KubePodCrashLooping"),
                ("service", "checkout"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            automation: Automation::Manual,
            evidence: vec![],
            status,
            version: 9,
            resolution: resolution.map(str::to_string),
            current_plan_id: None,
            source: "alertmanager".into(),
            created_by: "sensor".into(),
            created_at: at,
            updated_at: at,
        }
    }

    fn row(id: i64, event: &str, to: Status, reason: Option<&str>, meta: Value) -> TimelineEntry {
        TimelineEntry {
            id,
            case_id: Uuid::from_u128(7),
            version: id,
            event: event.into(),
            outcome: Outcome::Applied,
            from_status: None,
            to_status: Some(to),
            actor: "x".into(),
            principal_id: None,
            principal_name: None,
            reason: reason.map(str::to_string),
            correlation_id: None,
            request_id: None,
            meta,
            created_at: Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap(),
        }
    }

    fn history(
        status: Status,
        resolution: Option<&str>,
        timeline: Vec<TimelineEntry>,
    ) -> CaseHistory {
        let case = case(status, resolution);
        CaseHistory {
            facts: CaseFacts {
                id: case.id,
                tenant: case.tenant.clone(),
                title: case.title.clone(),
                labels: case.labels.clone(),
                annotations: [("runbook_url".to_string(), "https://r/x".to_string())].into(),
                findings: vec![
                    json!({"kind": "deviation", "title": "restarts up", "detail": "5 in 10m"}),
                ],
            },
            case,
            plan: Some(json!({
                "title": "restart checkout",
                "steps": [{"id": "restart", "action": "script.exec", "params": {"script": "restart.sh"}}],
                "rollback": {"steps": [{"id": "undo", "action": "noop", "params": {"note": "scale back"}}]},
            })),
            timeline,
        }
    }

    #[test]
    fn only_a_closed_or_parked_case_is_written_and_its_document_says_how_it_ended() {
        assert!(case_document(&history(Status::Executing, None, vec![])).is_none());
        let failed = history(
            Status::Parked,
            None,
            vec![row(
                5,
                "exec_failed",
                Status::Parked,
                Some("step restart failed: exit 1"),
                json!({"results": [{"step": "restart", "status": "failed"}],
                       "rollback": [{"step": "undo", "status": "succeeded"}]}),
            )],
        );
        let doc = case_document(&failed).unwrap();
        assert_eq!(doc.source, "cases");
        assert_eq!(doc.tenant.as_deref(), Some("t-1"));
        assert_eq!(doc.id, case_doc_id("t-1", Uuid::from_u128(7)));
        assert_eq!(doc.metadata["outcome"], "exec_failed");
        assert_eq!(doc.metadata["reason"], "step restart failed: exit 1");
        assert_eq!(doc.metadata["rollback"][0]["id"], "undo");
        assert_eq!(doc.metadata["rollback"][0]["result"], "succeeded");
        assert_eq!(doc.metadata["plan_steps"][0]["result"], "failed");
        assert!(doc.search_title.contains("KubePodCrashLooping"));
        let headings: Vec<String> = doc.chunks.iter().map(|c| c.heading_path_text()).collect();
        for heading in [
            "Alert",
            "Findings",
            "Plan",
            "Rollback",
            "Execution",
            "Outcome",
        ] {
            assert!(
                headings.iter().any(|h| h.ends_with(heading)),
                "{heading} in {headings:?}"
            );
        }
        // The same history writes the same document; closing it changes it.
        assert_eq!(
            case_document(&failed).unwrap().content_hash,
            doc.content_hash
        );
        let mut closed = failed.clone();
        closed.case.status = Status::Closed;
        closed.case.resolution = Some("cancelled".into());
        closed.timeline.push(row(
            6,
            "cancel",
            Status::Closed,
            Some("handled by hand"),
            json!({}),
        ));
        let closed = case_document(&closed).unwrap();
        assert_eq!(closed.id, doc.id);
        assert_ne!(closed.content_hash, doc.content_hash);
        assert_eq!(closed.metadata["outcome"], "cancelled");
        assert_eq!(closed.metadata["reason"], "handled by hand");
    }

    #[test]
    fn the_query_has_the_title_the_alert_the_labels_and_the_findings_once() {
        let facts = history(Status::Closed, Some("resolved"), vec![]).facts;
        assert_eq!(
            facts.query(),
            "Pod checkout is crash looping KubePodCrashLooping restarts up"
        );
        assert_eq!(facts.runbook_url(), Some("https://r/x"));
    }
}
