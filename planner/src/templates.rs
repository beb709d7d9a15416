//! The plan templates: pure functions from a case brief and template params to a ChangePlan.
//!
//! Every template reads its inputs from `params` first and from the case's labels second, so
//! an operator can override what the alert said. The plan is deterministic (no clock, no
//! randomness): a redelivered command yields the same plan.

use serde::Serialize;
use serde_json::{json, Map, Number, Value};
use workflow::messages::{CaseBrief, PlanCommand};

/// The template used when neither the command nor the case label `template` names one.
pub const DEFAULT_TEMPLATE: &str = "noop.check";

/// `metadata.generated_by` of every template plan.
const GENERATED_BY: &str = "planner/templates";

/// Schema limits of the ChangePlan text fields (in characters).
const TITLE_MAX: usize = 200;
const SUMMARY_MAX: usize = 4000;
const DESCRIPTION_MAX: usize = 1000;

/// A template as served to clients: its name, what it does, and its params with their
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateInfo {
    pub name: &'static str,
    pub description: &'static str,
    /// `(param name, description)`, in the order a client would fill them in.
    pub params: Vec<(&'static str, &'static str)>,
}

/// Why no plan was made: a reason for humans, and the failures field by field
/// (`{"field": ..., "message": ...}`; for a plan the guard refused, the guard's own fields
/// such as `plan.verify.count`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct PlanError {
    pub reason: String,
    pub errors: Vec<Value>,
}

impl PlanError {
    fn one(reason: String, field: &str, message: String) -> Self {
        Self {
            reason,
            errors: vec![json!({"field": field, "message": message})],
        }
    }
}

struct Template {
    name: &'static str,
    description: &'static str,
    /// The params this template reads besides the verify schedule ([`VERIFY_PARAMS`]).
    params: &'static [(&'static str, &'static str)],
    build: fn(&Inputs) -> Result<Value, PlanError>,
}

/// The verify schedule params every template accepts.
const VERIFY_PARAMS: &[(&str, &str)] = &[
    (
        "window_s",
        "verify window in seconds (60..86400); default 300",
    ),
    (
        "interval_s",
        "seconds between verify evaluations (10..3600); default: the verifier's",
    ),
    ("count", "number of verify evaluations (1..100); default 1"),
    (
        "failure_limit",
        "failed evaluations tolerated (0..100); default: the verifier's",
    ),
];

const TEMPLATES: &[Template] = &[
    Template {
        name: "k8s.rollout.canary",
        description: "Roll one Kubernetes Deployment to a new image (or restart it when no image \
                      is known), roll back to the previous image (or restart), and verify p95 \
                      latency and error rate of the deployment.",
        params: &[
            (
                "namespace",
                "Kubernetes namespace; default: case label `namespace`, else `default`",
            ),
            (
                "deployment",
                "Deployment to roll; default: case label `deployment`, else case label \
                 `service`; required",
            ),
            (
                "container",
                "container whose image is set; default: the deployment name",
            ),
            (
                "image",
                "new image; default: case label `image`; when none is known the step restarts \
                 the deployment",
            ),
            (
                "previous_image",
                "image to roll back to; default: case label `previous_image`; when none is \
                 known the rollback restarts the deployment",
            ),
            ("p95_ms", "verify: p95 latency bound in ms; default 300"),
            ("err_rate", "verify: error-rate bound; default 0.01"),
        ],
        build: k8s_rollout_canary,
    },
    Template {
        name: "script.restart",
        description: "Run an allowlisted restart script for the service (script.exec); a \
                      restart has no rollback. Verify the error rate of the service.",
        params: &[
            (
                "service",
                "service to restart (the script's argument); default: case label `service`; \
                 required",
            ),
            (
                "script",
                "script name in the executor's allowlist; default `restart-service`",
            ),
            ("err_rate", "verify: error-rate bound; default 0.01"),
            (
                "p95_ms",
                "verify: p95 latency bound in ms; no latency check unless given",
            ),
        ],
        build: script_restart,
    },
    Template {
        name: "gateway.flip",
        description: "Shift the service's route at the gateway admin API to another upstream \
                      (PUT /routes/<service>), flip back on rollback, and verify p95 latency and \
                      error rate of the service.",
        params: &[
            (
                "service",
                "service whose route flips; default: case label `service`; required",
            ),
            ("to", "upstream to switch to; default `secondary`"),
            (
                "from",
                "upstream to switch back to on rollback; default `primary`",
            ),
            (
                "target",
                "configured gateway target name; default: the executor's `default` target",
            ),
            ("p95_ms", "verify: p95 latency bound in ms; default 300"),
            ("err_rate", "verify: error-rate bound; default 0.01"),
        ],
        build: gateway_flip,
    },
    Template {
        name: "noop.check",
        description: "Change nothing and verify only: the error rate of the service (e.g. \
                      after a fix made outside opscase).",
        params: &[
            (
                "resource",
                "resource whose metrics are checked; default: case label `service`; required",
            ),
            ("err_rate", "verify: error-rate bound; default 0.01"),
            (
                "p95_ms",
                "verify: p95 latency bound in ms; no latency check unless given",
            ),
        ],
        build: noop_check,
    },
];

/// Every template, with its params (the verify schedule params included).
pub fn templates() -> Vec<TemplateInfo> {
    TEMPLATES
        .iter()
        .map(|template| TemplateInfo {
            name: template.name,
            description: template.description,
            params: template
                .params
                .iter()
                .chain(VERIFY_PARAMS)
                .copied()
                .collect(),
        })
        .chain([TemplateInfo {
            name: crate::llm::LLM_TEMPLATE,
            description: "A model proposes the plan from the case, its findings and evidence, \
                          the adapters and the gate's limits ([llm] must be configured); the \
                          plan passes the same schema, guard and gate as a template's.",
            params: Vec::new(),
        }])
        .collect()
}

/// The template a command asks for: its `template`, else the case label `template`, else
/// [`DEFAULT_TEMPLATE`].
pub fn chosen_template(command: &PlanCommand) -> &str {
    chosen(command).0
}

/// The chosen template and the field that chose it (for errors).
fn chosen(command: &PlanCommand) -> (&str, &'static str) {
    let requested = non_empty(command.template.as_deref()).map(|name| (name, "template"));
    let labelled = non_empty(command.case.labels.get("template").map(String::as_str))
        .map(|name| (name, "case.labels.template"));
    requested
        .or(labelled)
        .unwrap_or((DEFAULT_TEMPLATE, "template"))
}

/// The ChangePlan for `command`, with the name of the template that made it. The plan has
/// passed [`workflow::plan::check_change_plan`]; anything else is a [`PlanError`].
///
/// The template is `command.template`, else the case label `template`, else
/// [`DEFAULT_TEMPLATE`].
pub fn generate(command: &PlanCommand) -> Result<(String, Value), PlanError> {
    let (name, field) = chosen(command);
    if name == crate::llm::LLM_TEMPLATE {
        let message = "the llm template needs a model: configure [llm] base_url and model \
                       (OPSCASE_LLM_BASE_URL, OPSCASE_LLM_MODEL)"
            .to_string();
        return Err(PlanError::one(message.clone(), field, message));
    }

    let Some(template) = TEMPLATES.iter().find(|template| template.name == name) else {
        let known = TEMPLATES
            .iter()
            .map(|template| template.name)
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!(
            "unknown template {:?}; known templates: {known}",
            clip(name, 100)
        );
        return Err(PlanError::one(message.clone(), field, message));
    };

    let ignored: Vec<&str> = command
        .params
        .keys()
        .map(String::as_str)
        .filter(|key| {
            !template
                .params
                .iter()
                .chain(VERIFY_PARAMS)
                .any(|(name, _)| name == key)
        })
        .collect();
    let inputs = Inputs {
        template: template.name,
        case: &command.case,
        params: &command.params,
        ignored,
    };
    let plan = (template.build)(&inputs)?;

    let failures = workflow::plan::check_change_plan(&plan);
    if !failures.is_empty() {
        let fields = failures
            .iter()
            .map(|failure| failure.field.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PlanError {
            reason: format!(
                "the {} plan does not pass the ChangePlan guard ({fields})",
                template.name
            ),
            errors: failures
                .into_iter()
                .map(|failure| json!({"field": failure.field, "message": failure.message}))
                .collect(),
        });
    }
    Ok((template.name.to_string(), plan))
}

/// What a template reads: the case and the params, with labels as fallbacks.
struct Inputs<'a> {
    template: &'static str,
    case: &'a CaseBrief,
    params: &'a Map<String, Value>,
    /// Params the template does not know (recorded in the plan's metadata).
    ignored: Vec<&'a str>,
}

/// A resolved text input and where it came from (`params.x`, `label x`, `default`).
struct Text {
    value: String,
    origin: String,
}

impl Inputs<'_> {
    /// `params.<param>` if given (must be a string), else the first of `labels` that is set.
    /// Empty strings count as unset.
    fn text(&self, param: &str, labels: &[&str]) -> Result<Option<Text>, PlanError> {
        match self.params.get(param) {
            None | Some(Value::Null) => {}
            Some(Value::String(value)) => {
                if let Some(value) = non_empty(Some(value)) {
                    return Ok(Some(Text {
                        value: value.to_string(),
                        origin: format!("params.{param}"),
                    }));
                }
            }
            Some(other) => {
                return Err(PlanError::one(
                    format!(
                        "{}: params.{param} must be a string, not {other}",
                        self.template
                    ),
                    &format!("params.{param}"),
                    "must be a string".into(),
                ))
            }
        }
        Ok(labels.iter().find_map(|label| {
            non_empty(self.case.labels.get(*label).map(String::as_str)).map(|value| Text {
                value: value.to_string(),
                origin: format!("label {label}"),
            })
        }))
    }

    fn text_or(&self, param: &str, labels: &[&str], default: &str) -> Result<Text, PlanError> {
        Ok(self.text(param, labels)?.unwrap_or_else(|| Text {
            value: default.to_string(),
            origin: "default".into(),
        }))
    }

    /// Like [`Self::text`], but one way or the other the input must be there.
    fn required(&self, param: &str, labels: &[&str], what: &str) -> Result<Text, PlanError> {
        self.text(param, labels)?.ok_or_else(|| {
            let labels = labels
                .iter()
                .map(|label| format!("`{label}`"))
                .collect::<Vec<_>>()
                .join(" or ");
            let message =
                format!("required: pass params.{param} or set the case label {labels} ({what})");
            PlanError::one(
                format!(
                    "{} needs {param}: pass params.{param} or set the case label {labels}",
                    self.template
                ),
                &format!("params.{param}"),
                message,
            )
        })
    }

    /// `params.<param>` as a JSON number (a numeric string is accepted). Ranges are left to
    /// the ChangePlan guard, so a bad value is reported under the plan field it lands in.
    fn number(&self, param: &str) -> Result<Option<Number>, PlanError> {
        let not_a_number = |shown: &dyn std::fmt::Display| {
            PlanError::one(
                format!(
                    "{}: params.{param} must be a number, not {shown}",
                    self.template
                ),
                &format!("params.{param}"),
                "must be a number".into(),
            )
        };
        match self.params.get(param) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(number)) => Ok(Some(number.clone())),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => text
                .trim()
                .parse::<Number>()
                .map(Some)
                .map_err(|_| not_a_number(&format!("{text:?}"))),
            Some(other) => Err(not_a_number(other)),
        }
    }

    /// The verify section: metric_1m checks on `resource=<resource>` (p95 when a default or
    /// `params.p95_ms` is given, error rate always), a 300 s window evaluated once, and the
    /// schedule overrides of [`VERIFY_PARAMS`].
    fn verify(&self, resource: &str, p95_default: Option<Number>) -> Result<Value, PlanError> {
        let query = format!("resource={resource}");
        let mut checks = Vec::new();
        if let Some(p95) = self.number("p95_ms")?.or(p95_default) {
            checks.push(json!({
                "name": "p95 latency",
                "source": "metric_1m",
                "query": query,
                "threshold": format!("p95_ms < {p95}"),
            }));
        }
        let err_rate = self.number("err_rate")?.unwrap_or_else(default_err_rate);
        checks.push(json!({
            "name": "error rate",
            "source": "metric_1m",
            "query": query,
            "threshold": format!("err_rate < {err_rate}"),
        }));
        let mut verify = json!({"checks": checks, "window_s": 300, "count": 1});
        for (param, _) in VERIFY_PARAMS {
            if let Some(value) = self.number(param)? {
                verify[*param] = Value::Number(value);
            }
        }
        Ok(verify)
    }

    /// The plan around the template's parts, with the fields every template plan carries.
    fn plan(&self, parts: Parts) -> Value {
        let case_title = non_empty(Some(&self.case.title)).unwrap_or(&self.case.id);
        let mut metadata = json!({"case_id": self.case.id, "generated_by": GENERATED_BY});
        if !self.ignored.is_empty() {
            metadata["ignored_params"] = json!(self.ignored);
        }
        let summary = format!(
            "Case {} ({} severity): {}. {}",
            self.case.id,
            non_empty(Some(&self.case.severity)).unwrap_or("unknown"),
            case_title,
            parts.summary
        );
        json!({
            "template": self.template,
            "title": clip(&format!("{} for case \"{case_title}\"", parts.title), TITLE_MAX),
            "summary": clip(&summary, SUMMARY_MAX),
            "risk_score": parts.risk_score,
            "steps": parts.steps,
            "rollback": {"steps": parts.rollback},
            "verify": parts.verify,
            "metadata": metadata,
        })
    }
}

/// What a template decides; [`Inputs::plan`] adds the rest.
struct Parts {
    title: String,
    summary: String,
    risk_score: f64,
    steps: Vec<Value>,
    rollback: Vec<Value>,
    verify: Value,
}

fn step(
    id: &str,
    action: &str,
    description: &str,
    params: Value,
    timeout_s: u32,
    retry: u32,
) -> Value {
    json!({
        "id": id,
        "action": action,
        "description": clip(description, DESCRIPTION_MAX),
        "params": params,
        "timeout_s": timeout_s,
        "retry": retry,
    })
}

fn k8s_rollout_canary(inputs: &Inputs) -> Result<Value, PlanError> {
    let namespace = inputs.text_or("namespace", &["namespace"], "default")?;
    let deployment = inputs.required(
        "deployment",
        &["deployment", "service"],
        "the Kubernetes Deployment to roll",
    )?;
    let container = inputs
        .text("container", &[])?
        .map(|text| text.value)
        .unwrap_or_else(|| deployment.value.clone());
    let image = inputs.text("image", &["image"])?;
    let previous = inputs.text("previous_image", &["previous_image"])?;

    let (ns, name) = (&namespace.value, &deployment.value);
    let change = |image: Option<&Text>| {
        match image {
        Some(image) => (
            json!({"namespace": ns, "deployment": name, "container": container, "image": image.value}),
            format!(
                "set the image of container {container} in deployment {ns}/{name} to {} and wait for the rollout",
                image.value
            ),
        ),
        None => (
            json!({"namespace": ns, "deployment": name, "restart": true}),
            format!("restart deployment {ns}/{name} and wait for the rollout"),
        ),
    }
    };
    let (forward, forward_text) = change(image.as_ref());
    let (backward, backward_text) = change(previous.as_ref());

    let origins = format!(
        "deployment from {}, namespace from {}{}{}",
        deployment.origin,
        namespace.origin,
        image
            .as_ref()
            .map(|image| format!(", image from {}", image.origin))
            .unwrap_or_default(),
        previous
            .as_ref()
            .map(|image| format!(", previous image from {}", image.origin))
            .unwrap_or_default(),
    );
    let title = match &image {
        Some(image) => format!("Canary rollout of {ns}/{name} to {}", image.value),
        None => format!("Canary restart of {ns}/{name}"),
    };
    Ok(inputs.plan(Parts {
        title,
        summary: format!(
            "Plan: {forward_text}. Rollback: {backward_text}. Verify p95 latency and error rate \
             of {name} afterwards ({origins})."
        ),
        risk_score: 0.2,
        steps: vec![step(
            "rollout",
            "k8s.rollout",
            &forward_text,
            forward,
            600,
            1,
        )],
        rollback: vec![step(
            "rollback",
            "k8s.rollout",
            &backward_text,
            backward,
            600,
            1,
        )],
        verify: inputs.verify(name, Some(Number::from(300)))?,
    }))
}

fn script_restart(inputs: &Inputs) -> Result<Value, PlanError> {
    let service = inputs.required("service", &["service"], "the service to restart")?;
    let script = inputs.text_or("script", &[], "restart-service")?;
    let (service, script) = (&service.value, &script.value);
    let description = format!("run {script} {service}");
    Ok(inputs.plan(Parts {
        title: format!("Restart {service}"),
        summary: format!(
            "Plan: {description} (script.exec from the executor's allowlist). Rollback: none, a \
             restart cannot be undone. Verify the error rate of {service} afterwards."
        ),
        risk_score: 0.3,
        steps: vec![step(
            "restart",
            "script.exec",
            &description,
            json!({"script": script, "args": [service]}),
            120,
            2,
        )],
        rollback: vec![],
        verify: inputs.verify(service, None)?,
    }))
}

fn gateway_flip(inputs: &Inputs) -> Result<Value, PlanError> {
    let service = inputs.required("service", &["service"], "the service whose route flips")?;
    let to = inputs.text_or("to", &[], "secondary")?.value;
    let from = inputs.text_or("from", &[], "primary")?.value;
    let target = inputs.text("target", &[])?;
    if to == from {
        return Err(PlanError::one(
            format!("gateway.flip: params.to and params.from are both {to:?}; nothing would flip"),
            "params.to",
            "must differ from params.from".into(),
        ));
    }
    // From the label, the executor fills the route in; from params, it is written out.
    let path = if service.origin.starts_with("label") {
        "/routes/{{labels.service}}".to_string()
    } else if service
        .value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        format!("/routes/{}", service.value)
    } else {
        return Err(PlanError::one(
            format!(
                "gateway.flip: params.service {:?} is not a route name",
                clip(&service.value, 100)
            ),
            "params.service",
            "must be letters, digits, '-', '_' or '.'".into(),
        ));
    };
    let request = |upstream: &str| {
        let mut params = json!({"method": "PUT", "path": path, "body": {"upstream": upstream}});
        if let Some(target) = &target {
            params["target"] = json!(target.value);
        }
        params
    };
    let name = &service.value;
    let forward_text = format!("route {name} to upstream {to} at the gateway");
    let backward_text = format!("route {name} back to upstream {from} at the gateway");
    Ok(inputs.plan(Parts {
        title: format!("Flip {name} from {from} to {to}"),
        summary: format!(
            "Plan: {forward_text}. Rollback: {backward_text}. Verify p95 latency and error rate \
             of {name} afterwards."
        ),
        risk_score: 0.25,
        steps: vec![step(
            "flip",
            "gateway.flip",
            &forward_text,
            request(&to),
            30,
            2,
        )],
        rollback: vec![step(
            "flip-back",
            "gateway.flip",
            &backward_text,
            request(&from),
            30,
            2,
        )],
        verify: inputs.verify(name, Some(Number::from(300)))?,
    }))
}

fn noop_check(inputs: &Inputs) -> Result<Value, PlanError> {
    let resource = inputs
        .required(
            "resource",
            &["service"],
            "the resource whose metrics are checked",
        )?
        .value;
    Ok(inputs.plan(Parts {
        title: format!("Verify {resource} without a change"),
        summary: format!(
            "Plan: no change; verify the error rate of {resource}. Rollback: none needed."
        ),
        risk_score: 0.0,
        steps: vec![step(
            "check",
            "noop",
            "no change; verify only",
            json!({"message": "no change; verify only"}),
            10,
            0,
        )],
        rollback: vec![],
        verify: inputs.verify(&resource, None)?,
    }))
}

fn default_err_rate() -> Number {
    Number::from_f64(0.01).expect("0.01 is finite")
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.map(str::trim).filter(|text| !text.is_empty())
}

/// `text` cut to at most `max` characters (an ellipsis marks the cut).
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut clipped: String = text.chars().take(max.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

#[cfg(test)]
mod tests;
