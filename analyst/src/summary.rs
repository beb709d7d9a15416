//! A model's summary of an analysis run's findings (`headline`, `suspected_cause`,
//! `confidence`, `evidence_ids`), after the findings are published: validated against its
//! schema and the case's evidence (every cited id must be the case's), stored beside the
//! findings, and noted on the timeline (`evt.analysis.summary.v1`). It never changes a state,
//! and a slow or failed model only means no summary.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;
use workflow::messages::{AnalysisCommand, AnalysisEvent};

use llm::{JsonRequest, LlmClient, Section};
use sensor::SensorStore;

use crate::store::{AnalysisStore, FindingsSummary};

/// The most a summary may hold up the analyst (its findings are out already).
pub const SUMMARY_BUDGET: Duration = Duration::from_secs(20);

const INSTRUCTIONS: &str = "You are a senior SRE. Summarise what opscase's analysis found about \
    an incident case: a one-line headline, the most likely cause as the findings support it, \
    your confidence from 0 to 1, and the ids of the evidence items that support it (only ids \
    listed in the evidence section). Do not invent facts that the data does not show.";

pub fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["headline", "suspected_cause", "confidence", "evidence_ids"],
        "additionalProperties": false,
        "properties": {
            "headline": {"type": "string", "minLength": 1, "maxLength": 200},
            "suspected_cause": {"type": "string", "minLength": 1, "maxLength": 1000},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "evidence_ids": {"type": "array", "maxItems": 20,
                             "items": {"type": "string", "format": "uuid"}}
        }
    })
}

static VALIDATOR: LazyLock<jsonschema::Validator> =
    LazyLock::new(|| jsonschema::draft202012::new(&schema()).expect("the summary schema is valid"));

pub struct Summarizer {
    client: Arc<LlmClient>,
    analysis: AnalysisStore,
    evidence: SensorStore,
}

impl Summarizer {
    pub fn new(client: Arc<LlmClient>, analysis: AnalysisStore, evidence: SensorStore) -> Self {
        Self {
            client,
            analysis,
            evidence,
        }
    }

    /// Summarise a run's findings; the data of the `evt.analysis.summary.v1` note (`actor`,
    /// `reason`, `run_id`, `summary` when there is one, `llm`).
    pub async fn summarize(&self, command: &AnalysisCommand, event: &AnalysisEvent) -> Value {
        let actor = format!("analyst/llm:{}", self.client.model());
        let outcome = tokio::time::timeout(SUMMARY_BUDGET, self.attempt(command, event)).await;
        let (summary, llm, reason) = match outcome {
            Err(_) => (
                None,
                json!({"model": self.client.model(), "outcome": "timeout"}),
                format!("no summary: the model took longer than {SUMMARY_BUDGET:?}"),
            ),
            Ok(Err((llm, reason))) => (None, llm, format!("no summary: {reason}")),
            Ok(Ok(summary)) => {
                let reason = format!("findings summarised: {}", summary.headline);
                let llm = json!({"model": summary.model, "call_id": summary.call_id,
                                 "outcome": "ok"});
                (Some(summary), llm, reason)
            }
        };
        let mut data = json!({"actor": actor, "reason": reason, "run_id": event.run_id,
                              "llm": llm});
        if let Some(summary) = summary {
            data["summary"] = json!({
                "headline": summary.headline, "suspected_cause": summary.suspected_cause,
                "confidence": summary.confidence, "evidence_ids": summary.evidence_ids,
            });
        }
        data
    }

    async fn attempt(
        &self,
        command: &AnalysisCommand,
        event: &AnalysisEvent,
    ) -> Result<FindingsSummary, (Value, String)> {
        let no_call = |reason: String| (json!({"model": self.client.model()}), reason);
        let case_id = Uuid::parse_str(&command.case.id)
            .map_err(|_| no_call(format!("case id {:?} is not a uuid", command.case.id)))?;
        let evidence = self
            .evidence
            .evidence(case_id)
            .await
            .map_err(|e| no_call(format!("the case's evidence cannot be read: {e}")))?;
        let known: BTreeSet<Uuid> = evidence.iter().map(|e| e.id).collect();
        let listed: Vec<Value> = evidence
            .iter()
            .map(|e| json!({"id": e.id, "kind": e.kind, "title": e.title, "note": e.note}))
            .collect();
        let request = JsonRequest {
            purpose: "findings_summary",
            case_id: Some(case_id),
            instructions: INSTRUCTIONS.into(),
            task: "Summarise the findings of this analysis.".into(),
            sections: vec![
                Section::json(
                    "case",
                    &json!({"title": command.case.title, "severity": command.case.severity,
                            "labels": command.case.labels}),
                ),
                Section::json(
                    "analysis",
                    &json!({"reason": event.reason, "window": event.window,
                            "findings": event.findings, "dependencies": event.dependencies}),
                ),
                Section::json("evidence", &json!(listed)),
            ],
            schema_name: "FindingsSummary".into(),
            schema: schema(),
        };
        let answer = self.client.json(&request, &[]).await.map_err(|error| {
            (
                json!({"model": self.client.model(), "call_id": error.call_id(),
                       "outcome": "error"}),
                error.to_string(),
            )
        })?;
        let invalid = |reason: String| {
            (
                json!({"model": answer.model, "call_id": answer.call_id, "outcome": "invalid"}),
                reason,
            )
        };
        let mut problems: Vec<String> = VALIDATOR
            .iter_errors(&answer.value)
            .map(|e| format!("{}: {e}", e.instance_path))
            .collect();
        let mut cited = Vec::new();
        for id in answer.value["evidence_ids"]
            .as_array()
            .into_iter()
            .flatten()
        {
            match id.as_str().map(Uuid::parse_str) {
                Some(Ok(id)) if known.contains(&id) => cited.push(id),
                _ => problems.push(format!("evidence_ids: {id} is not evidence of this case")),
            }
        }
        if !problems.is_empty() {
            return Err(invalid(format!(
                "the model's summary was refused ({})",
                problems.join("; ")
            )));
        }
        let summary = FindingsSummary {
            run_id: event.run_id.clone(),
            case_id,
            headline: answer.value["headline"].as_str().unwrap_or_default().into(),
            suspected_cause: answer.value["suspected_cause"]
                .as_str()
                .unwrap_or_default()
                .into(),
            confidence: answer.value["confidence"].as_f64().unwrap_or_default(),
            evidence_ids: cited,
            model: answer.model.clone(),
            call_id: answer.call_id,
            created_at: Utc::now(),
        };
        self.analysis.insert_summary(&summary).await.map_err(|e| {
            (
                json!({"model": answer.model, "call_id": answer.call_id, "outcome": "error"}),
                format!("the summary cannot be stored: {e}"),
            )
        })?;
        Ok(summary)
    }
}
