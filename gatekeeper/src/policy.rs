//! The gate policy: its keys, parsing (TOML or YAML), validation and revision.

use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::freeze::Freeze;

/// The built-in policy, used when no policy file is configured. Its revision is the hash of
/// this text.
pub const DEFAULT_POLICY_TOML: &str = r#"# Built-in gate policy of opscase (used when no policy file is configured).
max_auto_risk = 0.3
max_steps = 20
human_actions = []
forbidden_actions = []

[adhoc]
allow_scripts = ["echo"]
allow_actions = ["noop"]
"#;

/// What `origin` names for the built-in policy.
pub const BUILTIN_ORIGIN: &str = "<builtin>";

/// A gate policy. Every key is optional; an absent key takes the built-in policy's value
/// (`max_auto_risk` 0.3, `max_steps` 20, no human-only or forbidden action, no freeze, no
/// tenant rule, `adhoc.allow_scripts` `["echo"]`, `adhoc.allow_actions` `["noop"]`). Unknown
/// keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `max_auto_risk` (0..=1): a plan whose `risk_score` is above it needs a human (hold,
    /// rule `max_auto_risk`). A plan without `risk_score` counts as 1.0, unless all its steps
    /// (forward and rollback) are `noop`, when it counts as 0.0.
    #[serde(default = "default_max_auto_risk")]
    pub max_auto_risk: f64,
    /// `max_steps` (>= 1): a plan with more forward steps than this is rejected (rule
    /// `max_steps`). Rollback steps are not counted.
    #[serde(default = "default_max_steps")]
    pub max_steps: usize,
    /// `human_actions`: a plan with a step (forward or rollback) using one of these actions
    /// needs a human (hold, rule `human_actions`).
    #[serde(default)]
    pub human_actions: Vec<String>,
    /// `forbidden_actions`: a plan with a step (forward or rollback) using one of these
    /// actions is rejected (rule `forbidden_actions`); no ad-hoc step may use them either.
    #[serde(default)]
    pub forbidden_actions: Vec<String>,
    /// `[[freeze]]`: change-freeze windows; while one is active for the plan's tenant the plan
    /// is rejected (rule `freeze:<name>`) and no ad-hoc step runs. See [`Freeze`].
    #[serde(default, rename = "freeze", skip_serializing_if = "Vec::is_empty")]
    pub freezes: Vec<Freeze>,
    /// `[[tenant]]`: per-tenant overrides of the four limits above. See [`TenantRule`].
    #[serde(default, rename = "tenant", skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantRule>,
    /// `[adhoc]`: which single steps an operator may run in place of a plan's. See [`Adhoc`].
    #[serde(default)]
    pub adhoc: Adhoc,
}

/// One `[[tenant]]` entry: its keys replace (not extend) the top-level ones for that tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRule {
    /// `name`: the tenant (exact match on the case's tenant); unique among `[[tenant]]`s.
    pub name: String,
    /// `max_auto_risk`: replaces the top-level value for this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_auto_risk: Option<f64>,
    /// `max_steps`: replaces the top-level value for this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    /// `human_actions`: replaces the top-level list for this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_actions: Option<Vec<String>>,
    /// `forbidden_actions`: replaces the top-level list for this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbidden_actions: Option<Vec<String>>,
}

/// `[adhoc]`: single steps an operator may run in place of the plan's
/// (`POST /v1/adapter/exec` with an explicit adapter). Forbidden actions and active freezes
/// still block them; `human_actions` does not (the operator is the human).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adhoc {
    /// `allow_scripts`: a `script.exec` step whose `params.script` is one of these may run.
    #[serde(default = "default_allow_scripts")]
    pub allow_scripts: Vec<String>,
    /// `allow_actions`: steps with one of these actions may run with any params.
    #[serde(default = "default_allow_actions")]
    pub allow_actions: Vec<String>,
}

impl Default for Adhoc {
    fn default() -> Self {
        Self {
            allow_scripts: default_allow_scripts(),
            allow_actions: default_allow_actions(),
        }
    }
}

fn default_max_auto_risk() -> f64 {
    0.3
}
fn default_max_steps() -> usize {
    20
}
fn default_allow_scripts() -> Vec<String> {
    vec!["echo".into()]
}
fn default_allow_actions() -> Vec<String> {
    vec!["noop".into()]
}

/// The limits that apply to one tenant: the top-level ones with its `[[tenant]]` rule on top.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// The `[[tenant]]` rule that applied, if any.
    pub tenant_rule: Option<String>,
    pub max_auto_risk: f64,
    pub max_steps: usize,
    pub human_actions: Vec<String>,
    pub forbidden_actions: Vec<String>,
    /// The keys the tenant rule overrode.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overridden: Vec<&'static str>,
}

impl Limits {
    /// `" (tenant X)"` when `key` comes from a tenant rule, for reasons.
    pub(crate) fn origin_of(&self, key: &str) -> String {
        match &self.tenant_rule {
            Some(t) if self.overridden.contains(&key) => format!(" (tenant {t})"),
            _ => String::new(),
        }
    }
}

impl Default for Policy {
    /// The built-in policy ([`DEFAULT_POLICY_TOML`]).
    fn default() -> Self {
        Policy::builtin()
    }
}

impl Policy {
    /// The built-in policy ([`DEFAULT_POLICY_TOML`]).
    pub fn builtin() -> Policy {
        Policy::from_toml_str(DEFAULT_POLICY_TOML, BUILTIN_ORIGIN)
            .expect("the built-in policy is valid")
    }

    /// Parse and validate a TOML policy; `origin` (a file name) is quoted in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let de = toml::Deserializer::new(text);
        let policy: Policy = serde_path_to_error::deserialize(de).map_err(|e| {
            let line = e.inner().span().map(|span| line_of(text, span.start));
            PolicyError::parse(origin, e.path(), line, e.inner().message())
        })?;
        policy.validate(origin)?;
        Ok(policy)
    }

    /// Parse and validate a YAML policy; `origin` (a file name) is quoted in errors. An empty
    /// document is the all-defaults policy.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let blank = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
        let text = if blank { "{}" } else { text };
        let de = serde_norway::Deserializer::from_str(text);
        let policy: Policy = serde_path_to_error::deserialize(de).map_err(|e| {
            let line = e.inner().location().map(|l| l.line());
            let message = strip_yaml_location(&e.inner().to_string());
            PolicyError::parse(origin, e.path(), line, &message)
        })?;
        policy.validate(origin)?;
        Ok(policy)
    }

    /// Parse `text` in `format`.
    pub fn parse(text: &str, format: Format, origin: &str) -> Result<Policy, PolicyError> {
        match format {
            Format::Toml => Policy::from_toml_str(text, origin),
            Format::Yaml => Policy::from_yaml_str(text, origin),
        }
    }

    /// The limits for `tenant`: top-level values with its `[[tenant]]` rule applied.
    pub fn limits_for(&self, tenant: &str) -> Limits {
        let rule = self.tenants.iter().find(|t| t.name == tenant);
        let mut overridden = Vec::new();
        let mut pick = |key: &'static str, set: bool| {
            if set {
                overridden.push(key);
            }
        };
        let max_auto_risk = rule.and_then(|r| r.max_auto_risk);
        pick("max_auto_risk", max_auto_risk.is_some());
        let max_steps = rule.and_then(|r| r.max_steps);
        pick("max_steps", max_steps.is_some());
        let human_actions = rule.and_then(|r| r.human_actions.clone());
        pick("human_actions", human_actions.is_some());
        let forbidden_actions = rule.and_then(|r| r.forbidden_actions.clone());
        pick("forbidden_actions", forbidden_actions.is_some());
        Limits {
            tenant_rule: rule.map(|r| r.name.clone()),
            max_auto_risk: max_auto_risk.unwrap_or(self.max_auto_risk),
            max_steps: max_steps.unwrap_or(self.max_steps),
            human_actions: human_actions.unwrap_or_else(|| self.human_actions.clone()),
            forbidden_actions: forbidden_actions.unwrap_or_else(|| self.forbidden_actions.clone()),
            overridden,
        }
    }

    /// The freezes active for `tenant` at `now`, in file order.
    pub fn active_freezes(&self, tenant: &str, now: chrono::DateTime<chrono::Utc>) -> Vec<&Freeze> {
        self.freezes
            .iter()
            .filter(|f| f.is_active(tenant, now))
            .collect()
    }

    /// Checks the types cannot express; errors name the key.
    fn validate(&self, origin: &str) -> Result<(), PolicyError> {
        let invalid = |key: String, message: String| PolicyError::Invalid {
            file: origin.to_string(),
            key,
            message,
        };
        check_risk(self.max_auto_risk).map_err(|m| invalid("max_auto_risk".into(), m))?;
        if self.max_steps == 0 {
            return Err(invalid("max_steps".into(), "must be at least 1".into()));
        }
        check_actions(&self.human_actions).map_err(|m| invalid("human_actions".into(), m))?;
        check_actions(&self.forbidden_actions)
            .map_err(|m| invalid("forbidden_actions".into(), m))?;

        let mut names = HashSet::new();
        for (i, f) in self.freezes.iter().enumerate() {
            let key = |k: &str| format!("freeze[{i}].{k}");
            if f.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty".into()));
            }
            if !names.insert(f.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is used by an earlier freeze", f.name),
                ));
            }
            if let (Some(start), Some(end)) = (f.start, f.end) {
                if end < start {
                    return Err(invalid(
                        key("end"),
                        format!("{end} is before start {start}"),
                    ));
                }
            }
            if f.start.is_none() && f.end.is_none() && !f.is_weekly() {
                return Err(invalid(
                    format!("freeze[{i}]"),
                    format!(
                        "freeze {:?} needs start/end or a weekly window (days, from, to)",
                        f.name
                    ),
                ));
            }
            if f.from.is_some_and(|t| t.0 >= 24 * 60) {
                return Err(invalid(key("from"), "must be before 24:00".into()));
            }
            if f.utc_offset.is_some() && !f.is_weekly() {
                return Err(invalid(
                    key("utc_offset"),
                    "only applies to a weekly window (days, from, to)".into(),
                ));
            }
            if let Some(tenants) = &f.tenants {
                if tenants.is_empty() {
                    return Err(invalid(
                        key("tenants"),
                        "is empty; leave the key out to freeze every tenant".into(),
                    ));
                }
            }
        }

        let mut names = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let key = |k: &str| format!("tenant[{i}].{k}");
            if t.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty".into()));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} has an earlier [[tenant]] rule", t.name),
                ));
            }
            if let Some(risk) = t.max_auto_risk {
                check_risk(risk).map_err(|m| invalid(key("max_auto_risk"), m))?;
            }
            if t.max_steps == Some(0) {
                return Err(invalid(key("max_steps"), "must be at least 1".into()));
            }
            for (k, list) in [
                ("human_actions", &t.human_actions),
                ("forbidden_actions", &t.forbidden_actions),
            ] {
                if let Some(list) = list {
                    check_actions(list).map_err(|m| invalid(key(k), m))?;
                }
            }
        }

        check_actions(&self.adhoc.allow_actions)
            .map_err(|m| invalid("adhoc.allow_actions".into(), m))?;
        check_actions(&self.adhoc.allow_scripts)
            .map_err(|m| invalid("adhoc.allow_scripts".into(), m))?;
        Ok(())
    }
}

fn check_risk(risk: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&risk) {
        Ok(())
    } else {
        Err(format!("{risk} is not between 0 and 1"))
    }
}

fn check_actions(list: &[String]) -> Result<(), String> {
    match list.iter().find(|a| a.trim().is_empty()) {
        Some(_) => Err("contains an empty name".into()),
        None => Ok(()),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// serde_norway appends " at line L column C" (and may prefix the path); the error carries
/// both separately.
fn strip_yaml_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Which syntax a policy file is in, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    /// `.toml` → TOML; `.yaml` / `.yml` → YAML (any case); anything else is an error.
    pub fn from_path(path: &Path) -> Result<Format, PolicyError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("toml") => Ok(Format::Toml),
            Some("yaml" | "yml") => Ok(Format::Yaml),
            _ => Err(PolicyError::Extension {
                file: path.display().to_string(),
            }),
        }
    }
}

/// Why a policy could not be loaded. Every variant names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read the gate policy: {message}")]
    Io { file: String, message: String },
    #[error("{file}: a gate policy file must end in .toml, .yaml or .yml")]
    Extension { file: String },
    /// Syntax or type error; `key` is the dotted path (`freeze[0].start`), `line` 1-based.
    #[error("{}", display_parse(file, key.as_deref(), *line, message))]
    Parse {
        file: String,
        key: Option<String>,
        line: Option<usize>,
        message: String,
    },
    /// A value of the right type that makes no sense (risk 1.5, end before start, ...).
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

impl PolicyError {
    fn parse(
        file: &str,
        path: &serde_path_to_error::Path,
        line: Option<usize>,
        message: &str,
    ) -> PolicyError {
        let mut key = path.to_string();
        if key == "." {
            key.clear();
        }
        // An unknown key may be reported at its parent: name the key itself.
        if let Some(rest) = message.strip_prefix("unknown field `") {
            if let Some(end) = rest.find('`') {
                let field = &rest[..end];
                if key != field && !key.ends_with(&format!(".{field}")) {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(field);
                }
            }
        }
        // serde_norway prefixes the message with the path (of the key or of its parent).
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.is_empty() && key.starts_with(prefix) => rest,
            _ => message,
        };
        let message = message
            .trim()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        PolicyError::Parse {
            file: file.to_string(),
            key: (!key.is_empty()).then_some(key),
            line,
            message,
        }
    }

    /// The key the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            PolicyError::Parse { key, .. } => key.as_deref(),
            PolicyError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

fn display_parse(file: &str, key: Option<&str>, line: Option<usize>, message: &str) -> String {
    let mut out = file.to_string();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
    }
    if let Some(key) = key {
        out.push_str(&format!(": {key}"));
    }
    out.push_str(&format!(": {message}"));
    out
}

/// The revision of a policy: the first 16 hex characters (64 bits) of the SHA-256 of the
/// file's bytes (of [`DEFAULT_POLICY_TOML`] for the built-in policy).
pub fn policy_rev(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

/// A parsed policy with where it came from and its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedPolicy {
    pub policy: Policy,
    /// [`policy_rev`] of the source bytes.
    pub rev: String,
    /// The file path, or [`BUILTIN_ORIGIN`].
    pub origin: String,
}

impl LoadedPolicy {
    /// The built-in policy.
    pub fn builtin() -> LoadedPolicy {
        LoadedPolicy {
            policy: Policy::builtin(),
            rev: policy_rev(DEFAULT_POLICY_TOML.as_bytes()),
            origin: BUILTIN_ORIGIN.to_string(),
        }
    }

    /// Parse `bytes` (UTF-8) in `format`.
    pub fn from_bytes(
        bytes: &[u8],
        format: Format,
        origin: &str,
    ) -> Result<LoadedPolicy, PolicyError> {
        let text = std::str::from_utf8(bytes).map_err(|e| PolicyError::Parse {
            file: origin.to_string(),
            key: None,
            line: Some(line_of(
                &String::from_utf8_lossy(&bytes[..e.valid_up_to()]),
                usize::MAX,
            )),
            message: format!("not UTF-8: {e}"),
        })?;
        Ok(LoadedPolicy {
            policy: Policy::parse(text, format, origin)?,
            rev: policy_rev(bytes),
            origin: origin.to_string(),
        })
    }

    /// Read and parse a policy file (format from its extension).
    pub fn load(path: &Path) -> Result<LoadedPolicy, PolicyError> {
        let format = Format::from_path(path)?;
        let bytes = std::fs::read(path).map_err(|e| PolicyError::Io {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        LoadedPolicy::from_bytes(&bytes, format, &path.display().to_string())
    }
}

impl Deref for LoadedPolicy {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        &self.policy
    }
}

impl fmt::Display for LoadedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (rev {})", self.origin, self.rev)
    }
}
