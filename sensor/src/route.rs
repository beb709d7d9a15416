//! Routes: which signals go together into one case, and what that case looks like.
//!
//! `[[sensor.routes]]` in the configuration, first match wins; with none configured (or none
//! matching) the built-in default route applies: group by `alertname` plus `service` (or,
//! without one, `namespace`), a 4-hour window, manual automation.

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::signal::{Signal, Source};

/// What becomes of a case when every alert of its group has resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnResolved {
    /// A timeline row; the case goes on.
    #[default]
    Note,
    /// Cancel the case, unless it has started executing (or is parked, closed).
    Cancel,
}

/// One `[[sensor.routes]]` entry, as written in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Only signals from these sources (`alertmanager`, `grafana`, `events`, `analyst`).
    #[serde(default)]
    pub sources: Vec<Source>,
    /// Labels that must equal these values.
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, String>,
    /// Labels that must match these regular expressions (anchored at both ends, as in
    /// Alertmanager's routes).
    #[serde(default)]
    pub match_re: BTreeMap<String, String>,
    /// Labels whose values make a group; `a|b` takes the first of them present.
    pub group_by: Option<Vec<String>>,
    /// A group's open case is joined while its last signal is younger than this.
    pub window_s: Option<u64>,
    /// Case severity by signal severity (`critical = "critical"`, `warning = "medium"`).
    #[serde(default)]
    pub severity: BTreeMap<String, orchestrator::model::Severity>,
    pub automation: Option<orchestrator::model::Automation>,
    /// The planner template of the cases it opens (their `template` label).
    pub template: Option<String>,
    /// The signal's labels copied onto the case.
    pub copy_labels: Option<Vec<String>>,
    #[serde(default)]
    pub on_resolved: OnResolved,
}

/// A route ready to match.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    sources: Vec<Source>,
    matchers: BTreeMap<String, String>,
    match_re: Vec<(String, Regex)>,
    pub group_by: Vec<String>,
    pub window: Duration,
    severity: BTreeMap<String, orchestrator::model::Severity>,
    pub automation: orchestrator::model::Automation,
    pub template: Option<String>,
    pub copy_labels: Vec<String>,
    pub on_resolved: OnResolved,
}

/// Routes are equal when they say the same (regular expressions by their source).
impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        let patterns = |route: &Route| -> Vec<(String, String)> {
            route
                .match_re
                .iter()
                .map(|(label, regex)| (label.clone(), regex.as_str().to_string()))
                .collect()
        };
        self.name == other.name
            && self.sources == other.sources
            && self.matchers == other.matchers
            && patterns(self) == patterns(other)
            && self.group_by == other.group_by
            && self.window == other.window
            && self.severity == other.severity
            && self.automation == other.automation
            && self.template == other.template
            && self.copy_labels == other.copy_labels
            && self.on_resolved == other.on_resolved
    }
}

/// The default route's name.
pub const DEFAULT_ROUTE: &str = "default";
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(4 * 3600);

fn default_group_by() -> Vec<String> {
    vec!["alertname".into(), "service|namespace".into()]
}

fn default_copy_labels() -> Vec<String> {
    [
        "service",
        "namespace",
        "deployment",
        "alertname",
        "instance",
    ]
    .map(String::from)
    .to_vec()
}

impl Route {
    /// The built-in route: `alertname` plus `service` or `namespace`, 4 hours, manual.
    pub fn default_route() -> Self {
        Self {
            name: DEFAULT_ROUTE.into(),
            sources: Vec::new(),
            matchers: BTreeMap::new(),
            match_re: Vec::new(),
            group_by: default_group_by(),
            window: DEFAULT_WINDOW,
            severity: BTreeMap::new(),
            automation: orchestrator::model::Automation::Manual,
            template: None,
            copy_labels: default_copy_labels(),
            on_resolved: OnResolved::Note,
        }
    }

    /// A route of the service's own making (an analyst rule's): the default route's grouping
    /// and window under `name`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Self::default_route()
        }
    }

    /// Check a configured route; errors name the key (`sensor.routes[2].match_re.service`).
    pub fn from_config(config: &RouteConfig, index: usize) -> Result<Self, String> {
        let at = |key: &str| format!("sensor.routes[{index}].{key}");
        if config.name.is_empty()
            || config.name.len() > 64
            || !config
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!("{}: 1 to 64 of A-Z a-z 0-9 - _ .", at("name")));
        }
        let match_re = config
            .match_re
            .iter()
            .map(|(label, pattern)| {
                Regex::new(&format!("^(?:{pattern})$"))
                    .map(|regex| (label.clone(), regex))
                    .map_err(|e| format!("{}: {e}", at(&format!("match_re.{label}"))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let group_by = config.group_by.clone().unwrap_or_else(default_group_by);
        if group_by.iter().any(|label| label.is_empty()) {
            return Err(format!("{}: label names must not be empty", at("group_by")));
        }
        let window_s = config.window_s.unwrap_or(DEFAULT_WINDOW.as_secs());
        if window_s == 0 {
            return Err(format!("{}: must be at least 1", at("window_s")));
        }
        if let Some(template) = &config.template {
            if template.is_empty() || template.len() > 256 {
                return Err(format!("{}: 1 to 256 bytes", at("template")));
            }
        }
        Ok(Self {
            name: config.name.clone(),
            sources: config.sources.clone(),
            matchers: config.matchers.clone(),
            match_re,
            group_by,
            window: Duration::from_secs(window_s),
            severity: config.severity.clone(),
            automation: config.automation.unwrap_or_default(),
            template: config.template.clone(),
            copy_labels: config
                .copy_labels
                .clone()
                .unwrap_or_else(default_copy_labels),
            on_resolved: config.on_resolved,
        })
    }

    pub fn matches(&self, signal: &Signal) -> bool {
        (self.sources.is_empty() || self.sources.contains(&signal.source))
            && self
                .matchers
                .iter()
                .all(|(label, value)| signal.labels.get(label) == Some(value))
            && self.match_re.iter().all(|(label, regex)| {
                regex.is_match(signal.labels.get(label).map_or("", String::as_str))
            })
    }

    /// The values of the group labels (`a|b`: the first present), in `group_by` order.
    pub fn group_labels(&self, signal: &Signal) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for entry in &self.group_by {
            let found = entry
                .split('|')
                .find_map(|label| signal.labels.get(label).map(|value| (label, value)));
            match found {
                Some((label, value)) => out.insert(label.to_string(), value.clone()),
                None => out.insert(entry.clone(), String::new()),
            };
        }
        out
    }

    /// The group a signal belongs to in `tenant`: a stable key of the route and its group
    /// label values.
    pub fn group_key(&self, tenant: &str, signal: &Signal) -> String {
        let mut hasher = Sha256::new();
        for part in [tenant, &self.name] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        for (label, value) in self.group_labels(signal) {
            hasher.update(label.as_bytes());
            hasher.update([0]);
            hasher.update(value.as_bytes());
            hasher.update([0]);
        }
        hex::encode(&hasher.finalize()[..16])
    }

    /// The case severity for a signal severity: the route's mapping, else the usual one.
    pub fn case_severity(&self, severity: &str) -> orchestrator::model::Severity {
        use orchestrator::model::Severity;
        if let Some(mapped) = self.severity.get(severity) {
            return *mapped;
        }
        match severity {
            "critical" | "page" | "emergency" | "fatal" => Severity::Critical,
            "error" | "high" | "major" => Severity::High,
            "warning" | "warn" | "medium" | "minor" => Severity::Medium,
            "low" => Severity::Low,
            "info" | "informational" | "none" => Severity::Info,
            _ => Severity::Medium,
        }
    }

    /// The labels a case opened by `signal` carries: the copied ones (values cut to the 256
    /// bytes a case label may hold), the route's template, and the alert name.
    pub fn case_labels(&self, signal: &Signal) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        for name in &self.copy_labels {
            if let Some(value) = signal.labels.get(name).filter(|v| !v.is_empty()) {
                if case_label_key(name) {
                    labels.insert(name.clone(), clip(value, 256));
                }
            }
        }
        if let Some(template) = &self.template {
            labels.insert("template".into(), template.clone());
        }
        labels
    }
}

/// A label name a case may carry (1 to 63 of A-Z a-z 0-9 - _ . /).
fn case_label_key(key: &str) -> bool {
    (1..=63).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// At most `max` bytes, cut at a character boundary.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The configured routes, in order, then the default route.
#[derive(Debug, Clone)]
pub struct Routes(Vec<Route>);

impl Routes {
    pub fn new(configured: &[RouteConfig]) -> Result<Self, String> {
        let mut routes = configured
            .iter()
            .enumerate()
            .map(|(index, config)| Route::from_config(config, index))
            .collect::<Result<Vec<_>, _>>()?;
        for (index, route) in routes.iter().enumerate() {
            if routes[..index].iter().any(|r| r.name == route.name) {
                return Err(format!(
                    "sensor.routes[{index}].name: {:?} is used by an earlier route",
                    route.name
                ));
            }
        }
        routes.push(Route::default_route());
        Ok(Self(routes))
    }

    /// The first route that matches (the default route matches everything).
    pub fn route(&self, signal: &Signal) -> &Route {
        self.0
            .iter()
            .find(|route| route.matches(signal))
            .unwrap_or_else(|| self.0.last().expect("the default route is always there"))
    }

    /// The route named `name`, if it is still configured.
    pub fn named(&self, name: &str) -> Option<&Route> {
        self.0.iter().find(|route| route.name == name)
    }
}

impl Default for Routes {
    fn default() -> Self {
        Self(vec![Route::default_route()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Status;
    use serde_json::Value;

    fn signal(labels: &[(&str, &str)]) -> Signal {
        Signal {
            source: Source::Alertmanager,
            status: Status::Firing,
            severity: "warning".into(),
            title: "t".into(),
            summary: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
            fingerprint: "f".into(),
            starts_at: None,
            ends_at: None,
            generator_url: None,
            links: Vec::new(),
            references: Vec::new(),
            route: None,
            raw: Value::Null,
        }
    }

    /// Routes as serde reads them from the configuration (JSON here: the crate has no TOML).
    fn config(json_text: &str) -> Vec<RouteConfig> {
        #[derive(Deserialize)]
        struct File {
            routes: Vec<RouteConfig>,
        }
        serde_json::from_str::<File>(json_text).unwrap().routes
    }

    #[test]
    fn the_default_route_groups_by_alertname_and_service_or_namespace() {
        let routes = Routes::default();
        let a = signal(&[
            ("alertname", "Latency"),
            ("service", "checkout"),
            ("pod", "a"),
        ]);
        let b = signal(&[
            ("alertname", "Latency"),
            ("service", "checkout"),
            ("pod", "b"),
        ]);
        let c = signal(&[("alertname", "Latency"), ("namespace", "shop")]);
        let route = routes.route(&a);
        assert_eq!(route.name, DEFAULT_ROUTE);
        assert_eq!(route.group_key("t", &a), route.group_key("t", &b));
        assert_ne!(route.group_key("t", &a), route.group_key("t", &c));
        assert_ne!(
            route.group_key("t", &a),
            route.group_key("u", &a),
            "tenants never share a group"
        );
        assert_eq!(
            route.group_labels(&c),
            [
                ("alertname".to_string(), "Latency".to_string()),
                ("namespace".to_string(), "shop".to_string())
            ]
            .into()
        );
        assert_eq!(route.window, DEFAULT_WINDOW);
    }

    #[test]
    fn the_first_matching_route_wins_and_regexes_are_anchored() {
        let routes = Routes::new(&config(
            r#"{"routes": [
                {"name": "pages", "match_re": {"severity": "critical|page"}, "automation": "auto",
                 "template": "script.restart", "window_s": 600, "on_resolved": "cancel"},
                {"name": "checkout", "match": {"service": "checkout"}, "group_by": ["alertname"]}
            ]}"#,
        ))
        .unwrap();
        let page = signal(&[("severity", "critical"), ("service", "checkout")]);
        let route = routes.route(&page);
        assert_eq!(route.name, "pages");
        assert_eq!(route.on_resolved, OnResolved::Cancel);
        assert_eq!(route.case_labels(&page)["template"], "script.restart");
        let not_anchored = signal(&[("severity", "noncritical"), ("service", "checkout")]);
        assert_eq!(routes.route(&not_anchored).name, "checkout");
        assert_eq!(
            routes.route(&signal(&[("service", "cart")])).name,
            DEFAULT_ROUTE
        );
    }

    #[test]
    fn bad_routes_are_refused_naming_the_key() {
        for (json, key) in [
            (
                r#"{"routes": [{"name": "a", "match_re": {"x": "("}}]}"#,
                "sensor.routes[0].match_re.x",
            ),
            (
                r#"{"routes": [{"name": "a"}, {"name": "a"}]}"#,
                "sensor.routes[1].name",
            ),
            (r#"{"routes": [{"name": "a b"}]}"#, "sensor.routes[0].name"),
            (
                r#"{"routes": [{"name": "a", "window_s": 0}]}"#,
                "sensor.routes[0].window_s",
            ),
        ] {
            let error = Routes::new(&config(json)).unwrap_err();
            assert!(error.starts_with(key), "{error}");
        }
    }

    #[test]
    fn severities_map_by_route_then_by_the_usual_names() {
        use orchestrator::model::Severity;
        let routes = Routes::new(&config(
            r#"{"routes": [{"name": "a", "severity": {"warning": "high"}}]}"#,
        ))
        .unwrap();
        let route = routes.route(&signal(&[]));
        assert_eq!(route.case_severity("warning"), Severity::High);
        assert_eq!(route.case_severity("critical"), Severity::Critical);
        assert_eq!(route.case_severity("bogus"), Severity::Medium);
    }

    #[test]
    fn copied_labels_are_cut_to_what_a_case_holds() {
        let route = Route::default_route();
        let long = "x".repeat(600);
        let labels = route.case_labels(&signal(&[("service", &long), ("pod", "p")]));
        assert_eq!(labels["service"].len(), 256);
        assert!(!labels.contains_key("pod"));
    }
}
