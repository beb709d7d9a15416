//! The `analyst` worker role: `cmd.analysis.run` in, `evt.analysis.findings.v1` out. It reads
//! the case's service's metrics, calls and recent changes, runs the pure [`analyse`], stores the
//! findings under the run (the command's id) and answers with them.

use std::collections::BTreeSet;

use async_trait::async_trait;
use bus::{Envelope, Publisher, Worker, WorkerError};
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;
use workflow::messages::{topic, AnalysisCommand, AnalysisEvent};

use orchestrator::SqlPool;
use sensor::SensorStore;
use verifier::Metric1mStore;

use crate::analysis::{analyse, service_of, AnalysisSettings, Change, Inputs, MetricSeries};
use crate::store::AnalysisStore;
use crate::summary::Summarizer;

/// The role's name, and the actor of its events.
pub const ROLE: &str = "analyst";
/// The envelope `source` of its events.
pub const SOURCE: &str = "opscase/analyst";
/// Changes read at most per analysis.
const MAX_CHANGES: i64 = 200;
/// The longest window `POST /v1/analysis/run` may ask for (a day).
pub const MAX_WINDOW_MINUTES: u32 = 24 * 60;

pub struct AnalystWorker {
    settings: AnalysisSettings,
    metrics: Metric1mStore,
    analysis: AnalysisStore,
    changes: SensorStore,
    /// The model that summarises findings, when one is configured.
    summarizer: Option<Summarizer>,
}

impl AnalystWorker {
    /// On the service's database (the worker reads `metric_1m`, `service_call_5m` and
    /// `event_envelope`, and writes `analysis_finding`).
    pub fn new(pool: SqlPool, settings: AnalysisSettings) -> Self {
        let metrics = match &pool {
            SqlPool::Sqlite(pool) => Metric1mStore::sqlite(pool.clone()),
            SqlPool::Postgres(pool) => Metric1mStore::postgres(pool.clone()),
        };
        Self {
            settings,
            metrics,
            analysis: AnalysisStore::new(pool.clone()),
            changes: SensorStore::new(pool),
            summarizer: None,
        }
    }

    /// Have `client` summarise each run's findings after they are published.
    pub fn with_model(mut self, client: std::sync::Arc<llm::LlmClient>) -> Self {
        self.summarizer = Some(Summarizer::new(
            client,
            self.analysis.clone(),
            self.changes.clone(),
        ));
        self
    }

    /// Analyse the case of `command` as of `now`: the event to publish, its findings stored.
    pub async fn run(
        &self,
        command: &AnalysisCommand,
        run_id: &str,
        now: DateTime<Utc>,
    ) -> Result<AnalysisEvent, String> {
        let mut settings = self.settings.clone();
        if let Some(minutes) = command.window_minutes {
            settings.window = std::time::Duration::from_secs(u64::from(minutes) * 60);
        }
        let window = json!({
            "from": now - chrono::Duration::from_std(settings.window).unwrap_or_default(),
            "to": now,
        });
        let case = &command.case;
        let Some(service) = service_of(&case.labels) else {
            return Ok(AnalysisEvent {
                actor: ROLE.into(),
                run_id: run_id.into(),
                service: None,
                reason: format!(
                    "nothing analysed: the case names no service (labels {})",
                    crate::analysis::SERVICE_LABELS.join(", ")
                ),
                window,
                findings: Vec::new(),
                dependencies: Vec::new(),
            });
        };
        let tenant = case.tenant.as_str();
        let from = now
            - chrono::Duration::from_std(settings.window + settings.baseline).unwrap_or_default();
        let metrics = self.metric_series(tenant, service, from, now).await?;
        let calls = self
            .analysis
            .calls_from(tenant, service, from, now)
            .await
            .map_err(|e| format!("service_call_5m: {e}"))?;
        let since = now - chrono::Duration::from_std(settings.change_lookback).unwrap_or_default();
        let changes: Vec<Change> = self
            .changes
            .changes_since(tenant, since, MAX_CHANGES)
            .await
            .map_err(|e| format!("event_envelope: {e}"))?
            .into_iter()
            .filter_map(|envelope| {
                Some(Change {
                    id: envelope.id.to_string(),
                    service: envelope.labels.get("service")?.clone(),
                    summary: envelope.summary.unwrap_or(envelope.title),
                    at: envelope.starts_at.unwrap_or(envelope.received_at),
                    kind: envelope.kind,
                })
            })
            .collect();
        let report = analyse(
            &Inputs {
                tenant,
                service,
                now,
                metrics: &metrics,
                calls: &calls,
                changes: &changes,
            },
            &settings,
        );
        let case_id = Uuid::parse_str(&case.id).map_err(|e| format!("case id: {e}"))?;
        self.analysis
            .insert_findings(run_id, case_id, tenant, &report.findings, now)
            .await
            .map_err(|e| format!("analysis_finding: {e}"))?;
        Ok(AnalysisEvent {
            actor: ROLE.into(),
            run_id: run_id.into(),
            service: Some(service.to_string()),
            reason: report.reason,
            window,
            findings: report
                .findings
                .iter()
                .map(|f| serde_json::to_value(f).unwrap_or_default())
                .collect(),
            dependencies: report
                .dependencies
                .iter()
                .map(|d| serde_json::to_value(d).unwrap_or_default())
                .collect(),
        })
    }

    /// Every metric of the service with a bucket in the window, over baseline and window.
    async fn metric_series(
        &self,
        tenant: &str,
        service: &str,
        from: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<MetricSeries>, String> {
        let window_from =
            now - chrono::Duration::from_std(self.settings.window).unwrap_or_default();
        let names: BTreeSet<String> = self
            .metrics
            .recent_series(window_from)
            .await
            .map_err(|e| format!("metric_1m: {e}"))?
            .into_iter()
            .filter(|row| row.tenant == tenant && row.resource == service)
            .map(|row| row.metric)
            .collect();
        let mut series = Vec::new();
        for metric in names {
            let stat = verifier::Stat::default_for(&metric);
            let points = self
                .metrics
                .query(
                    tenant,
                    service,
                    &metric,
                    stat,
                    from,
                    now + chrono::Duration::minutes(1),
                )
                .await
                .map_err(|e| format!("metric_1m: {e}"))?;
            series.push(MetricSeries {
                metric,
                stat: stat.as_str().to_string(),
                points,
            });
        }
        Ok(series)
    }
}

#[async_trait]
impl Worker for AnalystWorker {
    fn role(&self) -> &'static str {
        ROLE
    }

    fn commands(&self) -> &'static [&'static str] {
        &[topic::ANALYSIS_RUN]
    }

    async fn handle(&self, command: &Envelope, out: &dyn Publisher) -> Result<(), WorkerError> {
        let request: AnalysisCommand = serde_json::from_value(command.data.clone())
            .map_err(|e| WorkerError::Poison(format!("{}: data: {e}", command.kind)))?;
        let run_id = command.id.to_string();
        let event = self.run(&request, &run_id, Utc::now()).await.map_err(|e| {
            WorkerError::Retry(format!("analysis of case {}: {e}", request.case.id))
        })?;
        tracing::info!(case = %request.case.id, run = %run_id, findings = event.findings.len(),
            reason = %event.reason, "analysis finished");
        let data = serde_json::to_value(&event)
            .map_err(|e| WorkerError::Poison(format!("the findings do not serialize: {e}")))?;
        out.publish(bus::answer(
            command,
            SOURCE,
            topic::ANALYSIS_FINDINGS,
            "",
            data,
        ))
        .await
        .map_err(|e| WorkerError::Retry(format!("publishing the findings: {e}")))?;
        // The findings are out; a summary, if any, follows them.
        if let (Some(summarizer), false) = (&self.summarizer, event.findings.is_empty()) {
            let data = summarizer.summarize(&request, &event).await;
            let note = bus::answer(command, SOURCE, topic::ANALYSIS_SUMMARY, "", data);
            if let Err(error) = out.publish(note).await {
                tracing::warn!(case = %request.case.id, %error, "the summary was not published");
            }
        }
        Ok(())
    }
}
