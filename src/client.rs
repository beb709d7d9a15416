//! The operator CLI: `opscase case|evidence|plan|kb search` speak the REST API of a running
//! service, as curl does in the demos, with what a person at a terminal wants on top: tables (or
//! `-o json` for scripts), a problem+json answer as one line on stderr and a non-zero exit code,
//! an `Idempotency-Key` on every write and an `If-Match` on every transition, so a retried
//! command never acts twice and a stale one is refused rather than applied.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use reqwest::header::{HeaderMap, ETAG, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// How a client command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Columns for people.
    Table,
    /// The API's JSON, as it answered.
    Json,
}

/// Where the service is and who is asking.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub key: Option<String>,
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum CaseAction {
    /// Cases, newest first.
    List {
        /// NEW, ANALYZING, PLANNING, WAIT_GATE, EXECUTING, VERIFYING, CLOSED or PARKED.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// `key=value`: cases carrying this label.
        #[arg(long)]
        label: Option<String>,
        /// What opened them: api, alertmanager, grafana, events, analyst.
        #[arg(long)]
        source: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One case.
    Show { id: Uuid },
    /// A case's history, oldest first.
    Timeline {
        id: Uuid,
        /// Keep following: print each new row as it comes, until the case is CLOSED (Ctrl-C
        /// stops earlier).
        #[arg(long)]
        watch: bool,
    },
    /// Open a case.
    Open {
        #[arg(long)]
        title: String,
        /// critical, high, medium, low or info.
        #[arg(long)]
        severity: Option<String>,
        /// `key=value`; repeat for several.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// manual (every step asked for) or auto.
        #[arg(long)]
        automation: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Apply one state-machine event (start_analysis, analysis_done, plan_ready, ...).
    Event {
        id: Uuid,
        event: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Approve the plan held at the gate (an approver other than the plan's requester).
    Approve {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject the plan held at the gate: the case parks.
    Reject {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Take a PARKED case back up.
    Resume {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Close a case without resolving it.
    Cancel {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EvidenceAction {
    /// Attach evidence to a case: a link, a note, a runbook.
    Add {
        id: Uuid,
        /// log, metric, trace, alert, runbook or url.
        #[arg(long)]
        kind: String,
        /// Where it is (its `url`; `--url` names the service).
        #[arg(long, value_name = "URL")]
        link: Option<String>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlanAction {
    /// Ask the planner for a plan (the case must be ANALYZING or PLANNING).
    Generate {
        id: Uuid,
        /// A template (`GET /v1/templates`); by default the case's `template` label.
        #[arg(long)]
        template: Option<String>,
        /// A template input, `key=value`; repeat for several.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
}

/// A client command's failure, said in one line.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The REST API, as one key sees it.
struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn new(target: &Target) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|error| ClientError(format!("cannot build the HTTP client: {error}")))?;
        Ok(Self {
            http,
            base: target.url.trim_end_matches('/').to_string(),
            key: target.key.clone(),
        })
    }

    /// Send one request; a 2xx answer's headers and JSON body, else the problem as one line.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        headers: &[(reqwest::header::HeaderName, String)],
    ) -> Result<(HeaderMap, Value), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).query(query);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if method != Method::GET {
            // Every write may be retried safely: the service answers a repeat from its record.
            request = request.header("Idempotency-Key", Uuid::new_v4().to_string());
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| ClientError(format!("cannot reach {}: {error}", self.base)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            Ok((headers, value))
        } else {
            Err(ClientError(problem_line(status, &value)))
        }
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        Ok(self.send(Method::GET, path, query, None, &[]).await?.1)
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        Ok(self.send(Method::POST, path, &[], Some(body), &[]).await?.1)
    }

    /// Apply `event` to the case at the version just read (`If-Match`): if anyone moved it in
    /// between, the service refuses with 412 instead of applying it to a case the operator has
    /// not seen.
    async fn transition(
        &self,
        id: Uuid,
        event: &str,
        reason: Option<&str>,
    ) -> Result<Value, ClientError> {
        let path = format!("/v1/cases/{id}");
        let (headers, _) = self.send(Method::GET, &path, &[], None, &[]).await?;
        let etag = headers
            .get(ETAG)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| ClientError(format!("the service sent no ETag for case {id}")))?
            .to_string();
        let mut body = json!({ "event": event });
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        let (_, case) = self
            .send(
                Method::PATCH,
                &format!("{path}/transition"),
                &[],
                Some(&body),
                &[(IF_MATCH, etag)],
            )
            .await?;
        Ok(case)
    }
}

/// `409 Conflict: transition not allowed: gate_approved is not allowed in NEW (field: event)`.
fn problem_line(status: StatusCode, body: &Value) -> String {
    let mut line = status.to_string();
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
    if let Some(title) = text("title") {
        let _ = write!(line, ": {title}");
    }
    if let Some(detail) = text("detail") {
        let _ = write!(line, ": {detail}");
    } else if let Value::String(raw) = body {
        let _ = write!(line, ": {}", raw.trim());
    }
    if let Some(field) = text("field") {
        let _ = write!(line, " (field: {field})");
    }
    // One line, whatever the server put in its strings.
    line.replace(['\n', '\r'], " ")
}

/// The options given, by name.
fn present<const N: usize>(
    options: [(&'static str, Option<String>); N],
) -> impl Iterator<Item = (&'static str, String)> {
    options
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
}

/// `key=value` pairs as a JSON object; a pair without `=` is named in the error.
fn pairs(items: &[String], flag: &str) -> Result<Map<String, Value>, ClientError> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(key, value)| (key.to_string(), Value::String(value.to_string())))
                .ok_or_else(|| ClientError(format!("{flag} {item:?}: expected KEY=VALUE")))
        })
        .collect()
}

/// Run a case command; what to print on stdout.
pub async fn case(target: &Target, action: CaseAction) -> Result<String, ClientError> {
    let api = Api::new(target)?;
    let json = target.output == Output::Json;
    match action {
        CaseAction::List {
            status,
            tenant,
            label,
            source,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(present([
                ("status", status),
                ("tenant", tenant),
                ("label", label),
                ("source", source),
            ]));
            let page = api.get("/v1/cases", &query).await?;
            Ok(if json {
                pretty(&page)
            } else {
                case_table(page["items"].as_array().map(Vec::as_slice).unwrap_or(&[]))
            })
        }
        CaseAction::Show { id } => {
            let case = api.get(&format!("/v1/cases/{id}"), &[]).await?;
            Ok(shown_case(&case, json))
        }
        CaseAction::Timeline { id, watch } => {
            if watch {
                follow_timeline(&api, id, json).await?;
                return Ok(String::new());
            }
            let rows = timeline(&api, id, None).await?;
            Ok(if json {
                pretty(&Value::Array(rows))
            } else {
                rows.iter().map(timeline_row).collect()
            })
        }
        CaseAction::Open {
            title,
            severity,
            labels,
            automation,
            tenant,
        } => {
            let mut body = json!({ "title": title, "labels": pairs(&labels, "--label")? });
            for (name, value) in present([
                ("severity", severity),
                ("automation", automation),
                ("tenant", tenant),
            ]) {
                body[name] = json!(value);
            }
            let case = api.post("/v1/cases", &body).await?;
            Ok(shown_case(&case, json))
        }
        CaseAction::Event { id, event, reason } => moved(&api, id, &event, reason, json).await,
        CaseAction::Approve { id, reason } => moved(&api, id, "gate_approved", reason, json).await,
        CaseAction::Reject { id, reason } => moved(&api, id, "gate_rejected", reason, json).await,
        CaseAction::Resume { id, reason } => moved(&api, id, "resume", reason, json).await,
        CaseAction::Cancel { id, reason } => moved(&api, id, "cancel", reason, json).await,
    }
}

async fn moved(
    api: &Api,
    id: Uuid,
    event: &str,
    reason: Option<String>,
    json: bool,
) -> Result<String, ClientError> {
    let case = api.transition(id, event, reason.as_deref()).await?;
    Ok(shown_case(&case, json))
}

/// A case as `-o` asks: the API's JSON, or a card for people.
fn shown_case(case: &Value, json: bool) -> String {
    if json {
        pretty(case)
    } else {
        case_card(case)
    }
}

pub async fn evidence(target: &Target, action: EvidenceAction) -> Result<String, ClientError> {
    let api = Api::new(target)?;
    let EvidenceAction::Add {
        id,
        kind,
        link,
        title,
        note,
    } = action;
    let mut body = json!({ "kind": kind });
    for (name, value) in present([("url", link), ("title", title), ("note", note)]) {
        body[name] = json!(value);
    }
    let added = api.post(&format!("/v1/cases/{id}/evidence"), &body).await?;
    Ok(if target.output == Output::Json {
        pretty(&added)
    } else {
        format!(
            "evidence {} added to case {id}\n",
            added["id"].as_str().unwrap_or("?")
        )
    })
}

pub async fn plan(target: &Target, action: PlanAction) -> Result<String, ClientError> {
    let api = Api::new(target)?;
    let PlanAction::Generate {
        id,
        template,
        params,
    } = action;
    let mut body = json!({ "case_id": id, "params": pairs(&params, "--param")? });
    if let Some(template) = template {
        body["template"] = json!(template);
    }
    let answer = api.post("/v1/plan/generate", &body).await?;
    Ok(if target.output == Output::Json {
        pretty(&answer)
    } else {
        // `cmd.plan.generate 01a2… applied`, then the case as it stands.
        let mut out = format!(
            "{} {} {}\n",
            scalar(&answer["topic"]),
            scalar(&answer["command_id"]),
            scalar(&answer["status"]),
        );
        if answer["case"].is_object() {
            out.push_str(&case_card(&answer["case"]));
        }
        out
    })
}

pub async fn kb_search(target: &Target, query: &str, k: u32) -> Result<String, ClientError> {
    let api = Api::new(target)?;
    let answer = api
        .get(
            "/v1/kb/search",
            &[("q", query.to_string()), ("k", k.to_string())],
        )
        .await?;
    if target.output == Output::Json {
        return Ok(pretty(&answer));
    }
    let mut out = String::new();
    for hit in answer["hits"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:>6.3}  {}  ({})",
            hit["score"].as_f64().unwrap_or_default(),
            hit["heading_path"].as_str().unwrap_or_default(),
            hit["url"].as_str().unwrap_or_default(),
        );
    }
    Ok(out)
}

/// The case's timeline rows after row `after`, oldest first, every page.
async fn timeline(api: &Api, id: Uuid, after: Option<i64>) -> Result<Vec<Value>, ClientError> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = after.map(|after| after.to_string());
    loop {
        let mut query = vec![("limit", "200".to_string())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let page = api.get(&format!("/v1/cases/{id}/timeline"), &query).await?;
        rows.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(rows),
        }
    }
}

/// Print the timeline, then each new row as it comes, until the case is CLOSED.
async fn follow_timeline(api: &Api, id: Uuid, json: bool) -> Result<(), ClientError> {
    use std::io::Write as _;
    let mut last: Option<i64> = None;
    loop {
        let rows = timeline(api, id, last).await?;
        let mut stdout = std::io::stdout().lock();
        for row in &rows {
            let line = if json {
                format!("{row}\n")
            } else {
                timeline_row(row)
            };
            let _ = stdout.write_all(line.as_bytes());
            last = row["id"].as_i64().or(last);
        }
        let _ = stdout.flush();
        drop(stdout);
        let case = api.get(&format!("/v1/cases/{id}"), &[]).await?;
        if case["status"] == "CLOSED" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pretty(value: &Value) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn case_table(cases: &[Value]) -> String {
    let mut out = format!(
        "{:<36}  {:<9}  {:<8}  {:>3}  {}\n",
        "ID", "STATUS", "SEVERITY", "VER", "TITLE"
    );
    for case in cases {
        let _ = writeln!(
            out,
            "{:<36}  {:<9}  {:<8}  {:>3}  {}",
            scalar(&case["id"]),
            scalar(&case["status"]),
            scalar(&case["severity"]),
            scalar(&case["version"]),
            scalar(&case["title"]),
        );
    }
    out
}

fn case_card(case: &Value) -> String {
    let mut out = String::new();
    for key in [
        "id",
        "title",
        "status",
        "version",
        "severity",
        "automation",
        "tenant",
        "source",
        "resolution",
        "current_plan_id",
        "created_at",
        "updated_at",
    ] {
        if let Some(value) = case.get(key) {
            let _ = writeln!(out, "{key:<16}{}", scalar(value));
        }
    }
    if let Some(labels) = case["labels"]
        .as_object()
        .filter(|labels| !labels.is_empty())
    {
        let labels: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}={}", scalar(value)))
            .collect();
        let _ = writeln!(out, "{:<16}{}", "labels", labels.join(", "));
    }
    out
}

/// `2026-12-02T10:00:00Z  NEW → ANALYZING  start_analysis  ok  by alice: reason`.
fn timeline_row(row: &Value) -> String {
    let moved = match (row["from_status"].as_str(), row["to_status"].as_str()) {
        (Some(from), Some(to)) => format!("{from} → {to}"),
        (None, Some(to)) => format!("→ {to}"),
        _ => "-".into(),
    };
    let mut line = format!(
        "{}  {:<22}  {:<14}  {:<8}  by {}",
        scalar(&row["created_at"]),
        moved,
        scalar(&row["event"]),
        scalar(&row["outcome"]),
        scalar(&row["actor"]),
    );
    if let Some(reason) = row["reason"].as_str() {
        let _ = write!(line, ": {reason}");
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_one_line_with_its_field() {
        let body = json!({
            "title": "transition not allowed",
            "detail": "gate_approved is not allowed\nin NEW",
            "field": "event",
        });
        assert_eq!(
            problem_line(StatusCode::CONFLICT, &body),
            "409 Conflict: transition not allowed: gate_approved is not allowed in NEW (field: event)"
        );
        assert_eq!(
            problem_line(StatusCode::BAD_GATEWAY, &json!("upstream\n down")),
            "502 Bad Gateway: upstream  down"
        );
    }

    #[test]
    fn pairs_name_the_one_without_an_equals_sign() {
        let labels = pairs(&["service=checkout".into(), "env=prod".into()], "--label").unwrap();
        assert_eq!(labels["service"], "checkout");
        let error = pairs(&["oops".into()], "--label").unwrap_err();
        assert_eq!(error.0, "--label \"oops\": expected KEY=VALUE");
    }
}
