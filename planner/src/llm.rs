//! The `llm` template: a model proposes the ChangePlan; opscase decides whether it is one.
//!
//! The prompt carries the case (brief, labels, findings, evidence titles), the adapters a step
//! may use with their params schemas, and the limits the gate will apply, so that the model
//! does not propose what will be refused; the ChangePlan schema goes as the response format.
//! An answer must pass the ChangePlan schema, every step's params schema, the plan guard, the
//! gate's hard limits (forbidden actions, maximum steps) and the executor's script allowlist;
//! if it does not, the model is asked again with every problem listed, up to
//! `llm.plan_attempts` times, and then the plan fails with all of them. Nothing the model says
//! changes a state: the plan goes to the orchestrator's guard and the gate like any other.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use uuid::Uuid;
use workflow::messages::PlanCommand;

use llm::{JsonRequest, LlmClient, LlmError, Section};

use crate::templates::PlanError;

/// The template name that asks the model.
pub const LLM_TEMPLATE: &str = "llm";

/// `metadata.generated_by` of a model's plan.
const GENERATED_BY: &str = "planner/llm";

const INSTRUCTIONS: &str = "You are a senior SRE. You propose one change plan (a ChangePlan) \
    for the incident case described in the data: the smallest safe change that is likely to \
    mitigate it, with a rollback that undoes every step, and verification checks that would \
    show it worked. Use only the adapters listed, with params that conform to each adapter's \
    params schema. Respect the policy limits: never use a forbidden action, never exceed the \
    maximum number of steps, and prefer actions that do not need a human. For script.exec, name \
    only scripts from the allowlist. Output a ChangePlan that conforms to the JSON Schema; no \
    prose.";

/// What the gate will apply to a tenant's plans, as far as a proposal can respect it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanLimits {
    pub max_steps: usize,
    pub forbidden_actions: Vec<String>,
    /// Allowed, but a human must approve.
    pub human_actions: Vec<String>,
}

/// Where the limits of a tenant come from (the gatekeeper's live policy).
pub type LimitsOf = Arc<dyn Fn(&str) -> PlanLimits + Send + Sync>;

/// A model's plan and what made it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPlan {
    pub plan: Value,
    /// `model`, `calls`, `attempts`.
    pub llm: Value,
}

/// A model's failure to plan, with the calls it made.
#[derive(Debug)]
pub struct ModelFailure {
    pub error: PlanError,
    pub llm: Value,
    /// The model could not be used at all (a fallback template may stand in).
    pub unavailable: bool,
}

pub struct LlmPlanner {
    client: Arc<LlmClient>,
    limits: LimitsOf,
    /// The executor's script allowlist directory, when this process can see it.
    script_dir: Option<PathBuf>,
}

impl LlmPlanner {
    pub fn new(client: Arc<LlmClient>, limits: LimitsOf, script_dir: Option<PathBuf>) -> Self {
        Self {
            client,
            limits,
            script_dir,
        }
    }

    pub fn fallback_template(&self) -> Option<&str> {
        self.client.settings().fallback_template.as_deref()
    }

    /// Ask for a plan until one passes every check or the attempts are used up.
    pub async fn plan(&self, command: &PlanCommand) -> Result<ModelPlan, ModelFailure> {
        let limits = (self.limits)(&command.case.tenant);
        let scripts = self.scripts();
        let request = self.request(command, &limits, scripts.as_ref());
        let attempts = self.client.settings().plan_attempts.max(1);
        let mut calls: Vec<Value> = Vec::new();
        let mut history: Vec<(String, String)> = Vec::new();
        let mut problems: Vec<Value> = Vec::new();
        // Every attempt's problems, each marked with its attempt, for the failed plan.
        let mut every: Vec<Value> = Vec::new();
        let keep = |every: &mut Vec<Value>, problems: &[Value], attempt: u32| {
            every.extend(problems.iter().map(|p| {
                let mut p = p.clone();
                p["attempt"] = json!(attempt);
                p
            }));
        };
        for attempt in 1..=attempts {
            let record = |calls: &mut Vec<Value>, id: Option<Uuid>, outcome: &str| {
                if let Some(id) = id {
                    calls.push(json!({"id": id, "attempt": attempt, "outcome": outcome}));
                }
            };
            let answer = match self.client.json(&request, &history).await {
                Ok(answer) => answer,
                Err(LlmError::NotJson {
                    call_id,
                    text,
                    message,
                }) => {
                    record(&mut calls, Some(call_id), "invalid");
                    problems = vec![json!({"field": "plan", "message": message})];
                    keep(&mut every, &problems, attempt);
                    history.push((text, describe(&problems)));
                    continue;
                }
                Err(error) => {
                    record(&mut calls, error.call_id(), "unavailable");
                    let unavailable = error.is_unavailable();
                    let reason = if calls.len() > 1 || !problems.is_empty() {
                        format!(
                            "the model stopped answering after {} attempts: {error}",
                            attempt - 1
                        )
                    } else {
                        error.to_string()
                    };
                    return Err(ModelFailure {
                        error: PlanError {
                            reason,
                            errors: every,
                        },
                        llm: self.summary(&calls, attempt),
                        unavailable: unavailable && history.is_empty(),
                    });
                }
            };
            let mut plan = answer.value;
            problems = check(&plan, &limits, scripts.as_ref());
            if problems.is_empty() {
                record(&mut calls, Some(answer.call_id), "ok");
                let llm = self.summary(&calls, attempt);
                if let Some(fields) = plan.as_object_mut() {
                    fields.insert("template".into(), json!(LLM_TEMPLATE));
                    let metadata = fields
                        .entry("metadata")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(metadata) = metadata.as_object_mut() {
                        metadata.insert("generated_by".into(), json!(GENERATED_BY));
                        metadata.insert("llm".into(), llm.clone());
                    }
                }
                // The schema allows `template` and `metadata` as set here; checked again so
                // that nothing added after the checks slips through.
                let again = check(&plan, &limits, scripts.as_ref());
                if again.is_empty() {
                    return Ok(ModelPlan { plan, llm });
                }
                problems = again;
            }
            record(&mut calls, Some(answer.call_id), "refused");
            keep(&mut every, &problems, attempt);
            history.push((plan.to_string(), describe(&problems)));
        }
        Err(ModelFailure {
            error: PlanError {
                reason: format!(
                    "the model's plan was refused {attempts} times; the last answer's problems: {}",
                    describe(&problems)
                ),
                errors: every,
            },
            llm: self.summary(&calls, attempts),
            unavailable: false,
        })
    }

    fn summary(&self, calls: &[Value], attempts: u32) -> Value {
        json!({"model": self.client.model(), "calls": calls, "attempts": attempts})
    }

    /// The scripts in the allowlist directory, when it is configured and readable.
    fn scripts(&self) -> Option<BTreeSet<String>> {
        let dir = self.script_dir.as_ref()?;
        let entries = std::fs::read_dir(dir).ok()?;
        Some(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
        )
    }

    fn request(
        &self,
        command: &PlanCommand,
        limits: &PlanLimits,
        scripts: Option<&BTreeSet<String>>,
    ) -> JsonRequest {
        let case = &command.case;
        let evidence: Vec<Value> = case
            .evidence
            .iter()
            .map(|e| {
                json!({
                    "kind": e.get("kind").cloned().unwrap_or(Value::Null),
                    "title": e.get("title").cloned().unwrap_or_else(|| e.clone()),
                })
            })
            .collect();
        let adapters: Vec<Value> = workflow::adapters::ADAPTERS
            .iter()
            .map(|spec| {
                json!({
                    "action": spec.action,
                    "description": spec.description,
                    "params_schema": workflow::adapters::params_schema(spec.action),
                })
            })
            .collect();
        let mut policy = json!({
            "max_steps": limits.max_steps,
            "forbidden_actions": limits.forbidden_actions,
            "human_actions": limits.human_actions,
        });
        if let Some(scripts) = scripts {
            policy["script_allowlist"] = json!(scripts);
        }
        let mut sections = vec![
            Section::json(
                "case",
                &json!({
                    "id": case.id, "tenant": case.tenant, "title": case.title,
                    "severity": case.severity, "labels": case.labels,
                }),
            ),
            Section::json("findings", &json!(case.findings)),
            Section::json("evidence", &json!(evidence)),
        ];
        if !command.params.is_empty() {
            sections.push(Section::json("operator_params", &json!(command.params)));
        }
        if let Some(references) = &command.references {
            // Runbooks and similar past cases, with what their plans did and how they ended.
            sections.push(Section::json("references", &json!(references)));
        }
        let mut instructions = INSTRUCTIONS.to_string();
        instructions.push_str(&format!(
            "\n\nAdapters (action, what it does, params schema):\n{}\n\nPolicy limits:\n{}",
            serde_json::to_string_pretty(&adapters).unwrap_or_default(),
            serde_json::to_string_pretty(&policy).unwrap_or_default(),
        ));
        JsonRequest {
            purpose: "plan",
            case_id: Uuid::parse_str(&case.id).ok(),
            instructions,
            task: "Propose a ChangePlan for this case.".into(),
            sections,
            schema_name: "ChangePlan".into(),
            schema: workflow::plan::schema(),
        }
    }
}

/// Every reason the plan cannot go forward, as `{"field", "message"}`.
pub fn check(plan: &Value, limits: &PlanLimits, scripts: Option<&BTreeSet<String>>) -> Vec<Value> {
    let mut problems: Vec<Value> = workflow::plan::check_change_plan(plan)
        .into_iter()
        .map(|failure| json!({"field": failure.field, "message": failure.message}))
        .collect();
    if !problems.is_empty() {
        return problems;
    }
    let groups = [
        ("steps", &plan["steps"]),
        ("rollback.steps", &plan["rollback"]["steps"]),
    ];
    for (group, steps) in groups {
        for (index, step) in steps.as_array().into_iter().flatten().enumerate() {
            let action = step["action"].as_str().unwrap_or_default();
            let field = format!("plan.{group}[{index}]");
            if limits.forbidden_actions.iter().any(|f| f == action) {
                problems.push(json!({
                    "field": format!("{field}.action"),
                    "message": format!("{action} is a forbidden action for this tenant"),
                }));
            }
            if action == "script.exec" {
                if let (Some(scripts), Some(script)) = (scripts, step["params"]["script"].as_str())
                {
                    if !scripts.contains(script) {
                        problems.push(json!({
                            "field": format!("{field}.params.script"),
                            "message": format!(
                                "{script:?} is not in the executor's script allowlist ({})",
                                scripts.iter().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        }));
                    }
                }
            }
        }
    }
    let steps = plan["steps"].as_array().map_or(0, Vec::len);
    if limits.max_steps > 0 && steps > limits.max_steps {
        problems.push(json!({
            "field": "plan.steps",
            "message": format!("{steps} steps > max_steps {}", limits.max_steps),
        }));
    }
    problems
}

fn describe(problems: &[Value]) -> String {
    problems
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p["field"].as_str().unwrap_or("plan"),
                p["message"].as_str().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(action: &str, params: Value) -> Value {
        json!({
            "title": "t",
            "risk_score": 0.2,
            "steps": [{"action": action, "params": params, "timeout_s": 60, "retry": 0}],
            "rollback": {"steps": [{"action": "noop", "timeout_s": 60, "retry": 0}]},
            "verify": {"checks": [{"source": "metric_1m", "query": "svc", "threshold": "p95_ms < 300"}]}
        })
    }

    fn limits() -> PlanLimits {
        PlanLimits {
            max_steps: 5,
            forbidden_actions: vec!["k8s.rollout".into()],
            human_actions: vec![],
        }
    }

    #[test]
    fn a_forbidden_action_and_a_script_outside_the_allowlist_are_problems() {
        let scripts: BTreeSet<String> = ["restart.sh".to_string()].into();
        assert_eq!(
            check(&plan("noop", json!({})), &limits(), Some(&scripts)),
            Vec::<Value>::new()
        );
        let problems = check(
            &plan("script.exec", json!({"script": "rm", "args": ["-rf", "/"]})),
            &limits(),
            Some(&scripts),
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0]["field"], "plan.steps[0].params.script");
        let problems = check(
            &plan(
                "k8s.rollout",
                json!({"namespace": "shop", "deployment": "checkout", "restart": true}),
            ),
            &limits(),
            None,
        );
        assert!(
            problems
                .iter()
                .any(|p| p["field"] == "plan.steps[0].action"),
            "{problems:?}"
        );
    }

    #[test]
    fn schema_failures_come_first_and_name_the_field() {
        let problems = check(&json!({"title": "t"}), &limits(), None);
        assert!(!problems.is_empty());
        assert!(problems
            .iter()
            .all(|p| p["field"].as_str().unwrap().starts_with("plan")));
    }
}
