//! The worker roles (analyst, planner, gatekeeper, executor, verifier) wired to a bus:
//! in-process on the embedded bus (`opscase serve`), or as durable JetStream consumers on
//! `OPS_CMD` (`opscase worker --role ...`). Their events go to the outbox (embedded) or straight
//! to JetStream.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bus::{Claims, Envelope, Handled, Handler, Publisher, Worker, WorkerError};
use executor::adapters::http::{HttpCall, HttpConfig};
use executor::adapters::k8s::{K8sConfig, K8sRollout};
use executor::adapters::noop::Noop;
use executor::adapters::script::{ScriptConfig, ScriptExec};
use executor::{Adapters, Runner};
use orchestrator::{Orchestrator, SqlPool};
use serde_json::Value;
use verifier::{Metric1mSource, Metric1mStore, PrometheusSource, Verifier, VerifierWorker};

use crate::config::Config;

/// A worker role, as `opscase worker --role` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Analyst,
    Planner,
    Gatekeeper,
    Executor,
    Verifier,
    All,
}

impl Role {
    /// Whether `roles` runs the verifier, the analyst or the planner, which read the service's
    /// database (the planner: the knowledge base, for the references of its plans).
    pub fn reads_database(roles: &[Role]) -> bool {
        Role::expand(roles)
            .iter()
            .any(|role| matches!(role, Role::Verifier | Role::Analyst | Role::Planner))
    }

    /// Whether `roles` runs a role that asks the model when one is configured (the planner's
    /// `llm` template, the gatekeeper's explanations, the analyst's summaries), whose calls are
    /// audited in the service's database.
    pub fn uses_model(roles: &[Role]) -> bool {
        Role::expand(roles)
            .iter()
            .any(|role| matches!(role, Role::Planner | Role::Gatekeeper | Role::Analyst))
    }

    fn expand(roles: &[Role]) -> Vec<Role> {
        if roles.contains(&Role::All) || roles.is_empty() {
            vec![
                Role::Analyst,
                Role::Planner,
                Role::Gatekeeper,
                Role::Executor,
                Role::Verifier,
            ]
        } else {
            // `--role planner --role executor --role planner` runs one planner.
            let mut unique = Vec::new();
            for role in roles {
                if !unique.contains(role) {
                    unique.push(*role);
                }
            }
            unique
        }
    }
}

/// Build the workers of `roles` from the configuration.
pub fn build(
    config: &Config,
    roles: &[Role],
    orchestrator: &Orchestrator,
    claims: Arc<dyn Claims>,
) -> anyhow::Result<Vec<Arc<dyn Worker>>> {
    let mut workers: Vec<Arc<dyn Worker>> = Vec::new();
    // One client for every purpose: one concurrency limit, one breaker.
    let model = model_client(config, orchestrator)?;
    for role in Role::expand(roles) {
        workers.push(match role {
            Role::Analyst => {
                let mut analyst = analyst::worker::AnalystWorker::new(
                    orchestrator.store().pool(),
                    config.analyst.analysis.settings(),
                );
                if let Some(client) = &model {
                    analyst = analyst.with_model(client.clone());
                }
                Arc::new(analyst)
            }
            Role::Planner => Arc::new(PlannerWithDefaults {
                planner: planner_worker(config, model.clone())?,
                defaults: config.planner.defaults.clone(),
                librarian: librarian::Librarian::new(orchestrator.store().clone()),
            }),
            Role::Gatekeeper => {
                let mut gate = gatekeeper::Gatekeeper::new(policy_source(config)?);
                if let Some(client) = &model {
                    let explainer = gatekeeper::explain::Explainer::new(client.clone());
                    gate = gate.with_explainer(Arc::new(explainer));
                }
                Arc::new(gate)
            }
            Role::Executor => {
                let mut executor =
                    executor::Executor::new(runner(config)?, claims.clone(), "opscase/executor");
                if config.sensor.loki.push_url.is_some() {
                    executor = executor
                        .with_output_store(Arc::new(LokiOutputs(crate::log_stores(config))));
                }
                Arc::new(executor)
            }
            Role::Verifier => Arc::new(verifier_worker(config, orchestrator)),
            Role::All => unreachable!("expanded above"),
        });
    }
    Ok(workers)
}

/// The planner, with the model behind its `llm` template when `[llm]` is configured: the
/// gate's live limits and the executor's script allowlist go into the model's prompt and
/// checks.
fn planner_worker(
    config: &Config,
    model: Option<Arc<llm::LlmClient>>,
) -> anyhow::Result<planner::Planner> {
    let planner = planner::Planner::default();
    let Some(client) = model else {
        return Ok(planner);
    };
    let policy = policy_source(config)?;
    let limits: planner::llm::LimitsOf = Arc::new(move |tenant: &str| {
        let limits = policy.current().policy.limits_for(tenant);
        planner::PlanLimits {
            max_steps: limits.max_steps,
            forbidden_actions: limits.forbidden_actions,
            human_actions: limits.human_actions,
        }
    });
    let model = planner::LlmPlanner::new(client, limits, config.executor.script_dir.clone());
    Ok(planner.with_model(Arc::new(model)))
}

/// The model client, when `[llm]` names a server and a model; its calls are audited in the
/// service's database.
fn model_client(
    config: &Config,
    orchestrator: &Orchestrator,
) -> anyhow::Result<Option<Arc<llm::LlmClient>>> {
    let Some(settings) = config.llm.settings(&config.redaction.patterns) else {
        return Ok(None);
    };
    let client = llm::LlmClient::new(
        settings,
        orchestrator.store().pool(),
        &orchestrator.metrics().registry,
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Some(Arc::new(client)))
}

/// The gate policy from `gatekeeper.policy_file`, or the built-in one.
pub fn policy_source(config: &Config) -> anyhow::Result<gatekeeper::PolicySource> {
    gatekeeper::PolicySource::from_optional_file(config.gatekeeper.policy_file.as_deref())
        .with_context(|| "gatekeeper.policy_file (OPSCASE_POLICY_FILE)".to_string())
}

/// The `metric_1m` table on the orchestrator's own database.
pub fn metric_store(orchestrator: &Orchestrator) -> Metric1mStore {
    match orchestrator.store().pool() {
        SqlPool::Sqlite(pool) => Metric1mStore::sqlite(pool),
        SqlPool::Postgres(pool) => Metric1mStore::postgres(pool),
    }
}

fn runner(config: &Config) -> anyhow::Result<Runner> {
    let settings = &config.executor;
    // Absolute, since scripts run with the allowlist directory as their working directory.
    let script_dir = settings
        .script_dir
        .as_ref()
        .map(|dir| {
            std::fs::canonicalize(dir).with_context(|| {
                format!(
                    "executor.script_dir (OPSCASE_SCRIPT_DIR): cannot use {}",
                    dir.display()
                )
            })
        })
        .transpose()?;
    let script = ScriptExec::new(ScriptConfig {
        dir: script_dir,
        output_cap: settings.output_cap_bytes,
        ..ScriptConfig::default()
    });
    let http = Arc::new(
        HttpCall::new(HttpConfig {
            targets: settings.http_targets.clone(),
        })
        .context("executor.http_targets")?,
    );
    let k8s = &settings.k8s;
    let ca_cert_pem = k8s
        .ca_file
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("executor.k8s.ca_file: cannot read {}", path.display()))
        })
        .transpose()?;
    let mut adapters = Adapters::new()
        .with(Arc::new(Noop), &[])
        .with(Arc::new(script), &[])
        .with(http, &["gateway.flip"]);
    if let Some(api_url) = &k8s.api_url {
        let rollout = K8sRollout::new(K8sConfig {
            token: k8s.token.as_ref().map(|t| t.expose().to_string()),
            ca_cert_pem,
            insecure_skip_tls_verify: k8s.insecure_skip_tls_verify,
            ..K8sConfig::new(api_url.clone())
        })
        .context("executor.k8s")?;
        adapters = adapters.with(Arc::new(rollout), &[]);
    }
    let redactor = config.redactor();
    Ok(Runner::new(adapters)
        .with_backoff(Duration::from_millis(settings.retry_backoff_ms))
        .with_redact(Arc::new(move |text: &str| redactor.text(text))))
}

fn verifier_worker(config: &Config, orchestrator: &Orchestrator) -> VerifierWorker {
    let mut verifier = Verifier::new(vec![]).with_source(
        "metric_1m",
        Arc::new(Metric1mSource::new(metric_store(orchestrator))),
    );
    if let Some(url) = &config.verifier.prometheus_url {
        verifier = verifier.with_source("prometheus", Arc::new(PrometheusSource::new(url.clone())));
    }
    VerifierWorker::new(verifier)
}

/// Step output pushed to Loki (`[sensor.loki] push_url`), one stream per attempt labelled
/// `job="opscase", case_id, step, attempt, phase`, one line per output line.
struct LokiOutputs(sensor::logs::LogStores);

#[async_trait]
impl executor::OutputStore for LokiOutputs {
    async fn store(
        &self,
        case_id: &str,
        attempt: &workflow::messages::StepAttempt,
    ) -> Option<Value> {
        let output = attempt.output.as_deref()?;
        let labels: std::collections::BTreeMap<String, String> = [
            ("job", "opscase".to_string()),
            ("case_id", case_id.to_string()),
            ("step", attempt.step.clone()),
            ("attempt", attempt.attempt.to_string()),
            ("phase", attempt.phase.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // One nanosecond apart, so Loki keeps the lines in their order.
        let start = chrono::Utc::now();
        let lines: Vec<(chrono::DateTime<chrono::Utc>, String)> = output
            .lines()
            .enumerate()
            .map(|(i, line)| {
                (
                    start + chrono::Duration::nanoseconds(i as i64),
                    line.to_string(),
                )
            })
            .collect();
        match self.0.push_to_loki(&labels, &lines).await? {
            Ok(locator) => serde_json::to_value(locator).ok(),
            Err(error) => {
                // The step result still carries its capped inline output.
                tracing::warn!(case_id, step = %attempt.step, %error, "pushing step output to Loki failed");
                None
            }
        }
    }
}

/// The planner, with the configured template inputs filled in below the case's labels, and
/// the Librarian's references for the case attached to the plan it proposes.
struct PlannerWithDefaults {
    planner: planner::Planner,
    defaults: std::collections::BTreeMap<String, serde_json::Map<String, Value>>,
    librarian: librarian::Librarian,
}

impl PlannerWithDefaults {
    /// The case's references; none (said in the log) when they cannot be read: they inform a
    /// plan, they never hold one up.
    async fn references(&self, command: &Envelope) -> Option<workflow::references::References> {
        let case_id = uuid::Uuid::parse_str(&command.subject).ok()?;
        match self.librarian.references_of(case_id).await {
            Ok(references) => references,
            Err(error) => {
                tracing::warn!(%case_id, %error, "plan proposed without references");
                None
            }
        }
    }
}

/// Publishes through `out`, with `references` added to a proposed plan.
struct WithReferences<'a> {
    out: &'a dyn Publisher,
    references: workflow::references::References,
}

#[async_trait]
impl Publisher for WithReferences<'_> {
    async fn publish(&self, mut envelope: Envelope) -> Result<(), bus::BusError> {
        if envelope.kind == workflow::messages::topic::PLAN_PROPOSED {
            if let (Value::Object(data), Ok(references)) =
                (&mut envelope.data, serde_json::to_value(&self.references))
            {
                data.insert("references".into(), references);
            }
        }
        self.out.publish(envelope).await
    }
}

#[async_trait]
impl Worker for PlannerWithDefaults {
    fn role(&self) -> &'static str {
        self.planner.role()
    }

    fn commands(&self) -> &'static [&'static str] {
        self.planner.commands()
    }

    async fn handle(&self, command: &Envelope, out: &dyn Publisher) -> Result<(), WorkerError> {
        let mut command = command.clone();
        fill_defaults(&mut command.data, &self.defaults);
        match self.references(&command).await {
            Some(references) => {
                // The `llm` template shows them to the model; the event carries them on.
                if let (Value::Object(data), Ok(value)) =
                    (&mut command.data, serde_json::to_value(&references))
                {
                    data.insert("references".into(), value);
                }
                let out = WithReferences { out, references };
                self.planner.handle(&command, &out).await
            }
            None => self.planner.handle(&command, out).await,
        }
    }
}

/// Add the template's configured inputs as params where neither the request's params nor the
/// case's labels give them: request params win over labels, labels over configured defaults.
fn fill_defaults(
    data: &mut Value,
    defaults: &std::collections::BTreeMap<String, serde_json::Map<String, Value>>,
) {
    let template = data["template"]
        .as_str()
        .or_else(|| data["case"]["labels"]["template"].as_str())
        .unwrap_or(planner::DEFAULT_TEMPLATE)
        .to_string();
    let Some(inputs) = defaults.get(&template) else {
        return;
    };
    let labelled: Vec<String> = data["case"]["labels"]
        .as_object()
        .map(|labels| labels.keys().cloned().collect())
        .unwrap_or_default();
    let Some(params) = data
        .as_object_mut()
        .map(|command| {
            command
                .entry("params")
                .or_insert_with(|| Value::Object(Default::default()))
        })
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (name, value) in inputs {
        if !labelled.contains(name) && !params.contains_key(name) {
            params.insert(name.clone(), value.clone());
        }
    }
}

/// Commands a long-running worker (executor, verifier) handles at once from JetStream.
const LONG_RUNNING_CONCURRENCY: usize = 16;

/// Feeds bus messages to a worker and settles each by its outcome. A long-running worker's
/// commands are kept in progress around this by the bus: JetStream's in-progress acks, or the
/// embedded bus's `InProgress`.
pub struct WorkerHandler {
    worker: Arc<dyn Worker>,
    publisher: Arc<dyn Publisher>,
}

impl WorkerHandler {
    pub fn new(worker: Arc<dyn Worker>, publisher: Arc<dyn Publisher>) -> Self {
        Self { worker, publisher }
    }

    pub fn role(&self) -> &'static str {
        self.worker.role()
    }

    /// Whether the worker's commands take long (steps, verification windows).
    pub fn long_running(&self) -> bool {
        self.worker.detached()
    }

    /// The topics to subscribe to on the embedded bus.
    pub fn topics(&self) -> Vec<String> {
        self.worker
            .commands()
            .iter()
            .map(|t| t.to_string())
            .collect()
    }

    pub fn consumer_settings(&self, max_deliver: i64) -> bus::ConsumerSettings {
        consumer_settings(self.worker.as_ref(), max_deliver)
    }
}

#[async_trait]
impl Handler for WorkerHandler {
    async fn handle(&self, envelope: &Envelope) -> Handled {
        if !self.worker.commands().contains(&envelope.kind.as_str()) {
            return Handled::Done;
        }
        match self.worker.handle(envelope, self.publisher.as_ref()).await {
            Ok(()) => Handled::Done,
            Err(WorkerError::Poison(reason)) => Handled::Poison(reason),
            Err(WorkerError::Retry(reason)) => Handled::Retry(reason),
        }
    }
}

/// The JetStream consumer of a worker: its durable name is the role and it takes the command
/// family (`cmd.exec.>` for `cmd.exec.run` and `cmd.exec.rollback`).
pub fn consumer_settings(worker: &dyn Worker, max_deliver: i64) -> bus::ConsumerSettings {
    let first = worker.commands().first().copied().unwrap_or("cmd.>");
    let family = match first.rsplit_once('.') {
        Some((prefix, _)) => format!("{prefix}.>"),
        None => first.to_string(),
    };
    let mut settings = bus::ConsumerSettings::new(worker.role(), bus::STREAM_COMMANDS, &family);
    settings.max_deliver = max_deliver;
    if worker.detached() {
        settings.concurrency = LONG_RUNNING_CONCURRENCY;
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_role_named_twice_runs_once_and_all_means_the_four() {
        use Role::*;
        assert_eq!(
            Role::expand(&[Planner, Executor, Planner]),
            [Planner, Executor]
        );
        assert_eq!(
            Role::expand(&[Verifier, All]),
            [Analyst, Planner, Gatekeeper, Executor, Verifier]
        );
        assert!(Role::reads_database(&[All]));
        assert!(Role::reads_database(&[Analyst]));
        assert!(Role::reads_database(&[Planner]));
        assert!(!Role::reads_database(&[Gatekeeper, Executor]));
    }

    #[test]
    fn configured_defaults_fill_only_what_params_and_labels_leave_open() {
        let defaults = [(
            "k8s.rollout.canary".to_string(),
            json!({"deployment": "checkout", "namespace": "shop"})
                .as_object()
                .unwrap()
                .clone(),
        )]
        .into();
        let mut data = json!({"template": "k8s.rollout.canary",
                              "case": {"labels": {"namespace": "prod"}}});
        fill_defaults(&mut data, &defaults);
        assert_eq!(data["params"], json!({"deployment": "checkout"}));
        let mut asked = json!({"template": "k8s.rollout.canary", "case": {"labels": {}},
                               "params": {"deployment": "cart"}});
        fill_defaults(&mut asked, &defaults);
        assert_eq!(
            asked["params"],
            json!({"deployment": "cart", "namespace": "shop"})
        );
        let mut other = json!({"template": "noop.check", "case": {"labels": {}}});
        fill_defaults(&mut other, &defaults);
        assert_eq!(other.get("params"), None);
    }
}
