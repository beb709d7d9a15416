//! The shipped monitoring (`deploy/monitoring/`) fits what the service exports: `/metrics`
//! after some traffic passes `promtool check metrics`, and every metric the alert rules and
//! the Grafana dashboard name is exported (or is `probe_success`, from a blackbox exporter, or
//! a model's metric, exported once `[llm]` is configured),
//! so renaming a metric without updating them fails here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use async_trait::async_trait;
use bus::{Envelope, Handled, Handler};
use orchestrator::{EmbeddedTransport, Relay, RelaySettings, Role, Subscription};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::helpers::{
    client_with, create_key, eventually, without_relay, Backend, TestApp, TestDatabase,
};

const ALERTS: &str = "deploy/monitoring/prometheus/opscase-alerts.yml";
const DASHBOARD: &str = "deploy/monitoring/grafana/opscase-dashboard.json";

/// Metrics the monitoring names that the service does not export (`probe_success` comes from
/// the blackbox exporter). A histogram here also allows its `_bucket`, `_sum` and `_count`.
const PLANNED: &[&str] = &["probe_success"];

/// A consumer that refuses every message, so the relay dead-letters it.
struct Poison;

#[async_trait]
impl Handler for Poison {
    async fn handle(&self, _envelope: &Envelope) -> Handled {
        Handled::Poison("monitoring test: refused".into())
    }
}

/// Start a service, drive every metric family the monitoring reads, and scrape `/metrics`
/// with a key holding only the `metrics` role (as Prometheus does).
async fn scrape_after_traffic() -> String {
    let database = TestDatabase::create(Backend::Sqlite)
        .await
        .expect("SQLite needs no server");
    let mut config = database.config();
    // The test relays the outbox itself, through a consumer that dead-letters.
    without_relay(&mut config);
    let app = TestApp::start(config).await;

    let case = app.open_case("t-001").await;
    app.advance(case, json!({"event": "start_analysis"})).await;
    let illegal = app.transition(case, json!({"event": "exec_done"})).await;
    assert_eq!(illegal.status(), StatusCode::CONFLICT);
    let (status, _) = app.get_json(&format!("/v1/cases/{}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get_json("/v1/no-such-route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let transport = EmbeddedTransport::new(
        app.orchestrator.store().clone(),
        vec![Subscription {
            consumer: "monitoring-test".into(),
            topics: vec!["evt.case.>".into()],
            handler: Arc::new(Poison),
        }],
        app.orchestrator.metrics().clone(),
        1,
    );
    let relay = Relay::new(
        app.orchestrator.store().clone(),
        Arc::new(transport),
        app.orchestrator.metrics().clone(),
        Arc::new(Notify::new()),
        RelaySettings::default(),
    );
    let relayed = relay.relay_batch().await.expect("the relay publishes");
    assert!(
        relayed >= 2,
        "open and start_analysis relayed, got {relayed}"
    );
    assert!(!app
        .orchestrator
        .store()
        .dead_letters()
        .await
        .unwrap()
        .is_empty());

    // A knowledge base search (lexical: no embeddings configured) times itself.
    let (status, _) = app.get_json("/v1/kb/search?q=pod+crash+looping&k=1").await;
    assert_eq!(status, StatusCode::OK);

    let scraper =
        client_with(&create_key(&app.orchestrator, "prometheus", &[Role::Metrics], None).await);
    let response = scraper.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "a metrics key scrapes");
    let text = response.text().await.unwrap();
    drop(app);
    database.drop_database().await;
    text
}

/// The model's metrics as `llm::metrics::LlmMetrics` exports them once `[llm]` is configured
/// and called (the test's service has no model): one call recorded on a registry of their own.
fn model_metric_names() -> Vec<String> {
    let registry = prometheus::Registry::new();
    let metrics = llm::metrics::LlmMetrics::register(&registry);
    metrics.request("plan", "ok");
    metrics.observe("plan", 0.2);
    metrics.tokens("plan", Some(10), Some(5));
    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut text)
        .unwrap();
    let names = exported_names(&text);
    assert!(
        names.iter().any(|n| n == "llm_request_seconds_bucket"),
        "{names:?}"
    );
    names
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool() -> Option<PathBuf> {
    let standard = PathBuf::from("/usr/bin/promtool");
    if standard.is_file() {
        return Some(standard);
    }
    crate::helpers::on_path(&["promtool"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_exposition_passes_promtool_check_metrics() {
    let Some(promtool) = promtool() else {
        assert!(
            !crate::helpers::in_ci(),
            "promtool is required in CI (apt-get install prometheus; .ci/run installs it)"
        );
        eprintln!("SKIPPED: promtool not installed (apt-get install prometheus)");
        return;
    };
    let text = scrape_after_traffic().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.prom");
    std::fs::write(&file, &text).unwrap();
    let output = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_name_only_exported_or_planned_metrics() {
    // The extractor itself: label matchers, grouping labels, functions, durations, strings,
    // keywords and numbers are not metric names.
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{status=~"x|y}"}[5m]))) > 1
               and on (job) b unless ignoring(le) c offset 15m or vector(1) + Inf * on (job) group_left d"#
        ),
        ["a_bucket", "b", "c", "d"]
    );

    let text = scrape_after_traffic().await;
    let mut exported = exported_names(&text);
    exported.extend(model_metric_names());

    let alerts = std::fs::read_to_string(repo_file(ALERTS)).unwrap();
    let rules = alert_exprs(&alerts);
    let alert_count = alerts
        .lines()
        .filter(|line| {
            line.trim_start()
                .trim_start_matches("- ")
                .starts_with("alert:")
        })
        .count();
    assert!(
        alert_count >= 6,
        "{ALERTS}: found only {alert_count} alerts"
    );
    assert_eq!(
        rules.len(),
        alert_count,
        "{ALERTS}: one expr per alert expected, found {rules:#?}"
    );

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file(DASHBOARD)).unwrap()).unwrap();
    let mut queries = Vec::new();
    dashboard_exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "{DASHBOARD}: found only {queries:?}");

    let mut unknown = Vec::new();
    for (file, expr) in rules
        .iter()
        .map(|e| (ALERTS, e))
        .chain(queries.iter().map(|e| (DASHBOARD, e)))
    {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{file}: no metric in {expr}");
        for name in names {
            if !exported.contains(&name) && !planned(&name) {
                unknown.push(format!("{file}: {name} in {}", expr.trim()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics neither exported nor planned:\n{}\n--- exported ---\n{exported:?}",
        unknown.join("\n")
    );
}

fn planned(name: &str) -> bool {
    PLANNED.iter().any(|base| {
        name.strip_prefix(base)
            .is_some_and(|rest| ["", "_bucket", "_sum", "_count"].contains(&rest))
    })
}

/// Every sample name and every `# TYPE` name (a histogram's base name) in an exposition.
fn exported_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The `expr:` of each rule: an inline value, or a block scalar (`|`, `>`) whose lines are
/// indented deeper than the key.
fn alert_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if !value.starts_with(['|', '>']) {
            exprs.push(value.trim_matches(['"', '\'']).to_string());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while i < lines.len() {
            let next = lines[i];
            let deeper = next.len() - next.trim_start().len() > indent;
            if !next.trim().is_empty() && !deeper {
                break;
            }
            block.push_str(next.trim());
            block.push('\n');
            i += 1;
        }
        exprs.push(block);
    }
    exprs
}

/// Every `expr` string anywhere in the dashboard (panels, rows, variables).
fn dashboard_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match inner {
                    Value::String(expr) if key == "expr" => out.push(expr.clone()),
                    _ => dashboard_exprs(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_exprs(item, out)),
        _ => {}
    }
}

/// PromQL words that are never metrics: operators, literals, and the aggregations (which may
/// stand before `by (...)` rather than their parenthesis).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

/// Modifiers that may be followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers outside label matchers (`{}`),
/// ranges (`[]`), strings and grouping lists, not called as functions and not keywords.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' || c == '[' {
            let close = if c == '{' { '}' } else { ']' };
            i += 1;
            while i < chars.len() && chars[i] != close {
                i = if matches!(chars[i], '"' | '\'' | '`') {
                    skip_string(&chars, i)
                } else {
                    i + 1
                };
            }
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '_'))
            {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let next = chars[i..].iter().position(|c| !c.is_whitespace());
            let call = next.is_some_and(|n| chars[i + n] == '(');
            if GROUPING.contains(&lower.as_str()) {
                // by (...), on (...), group_left (...): a list of label names.
                if let (true, Some(n)) = (call, next) {
                    i += n;
                    while i < chars.len() && chars[i] != ')' {
                        i += 1;
                    }
                    i += 1;
                }
            } else if !call && !KEYWORDS.contains(&lower.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index after the string literal that starts at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' && quote != '`' {
            2
        } else {
            1
        };
    }
    i + 1
}

crate::on_both_backends!(a_scripted_sequence_is_counted_exactly);
/// One of each: accepted transitions, a replay, and every kind of conflict; then every counter
/// equals what happened, to the unit.
async fn a_scripted_sequence_is_counted_exactly(app: TestApp) {
    let first = app.open_case("t-001").await;
    let second = app.open_case("t-001").await;
    let patch = |case: Uuid, key: &str, if_match: Option<&str>, body: Value| {
        let mut request = app
            .client
            .patch(app.url(&format!("/v1/cases/{case}/transition")))
            .header("Idempotency-Key", key.to_string())
            .json(&body);
        if let Some(version) = if_match {
            request = request.header("If-Match", version.to_string());
        }
        async move { request.send().await.unwrap().status() }
    };
    let start = json!({"event": "start_analysis", "actor": "a"});
    let steps = [
        (first, "k1", None, start.clone(), StatusCode::OK),
        (first, "k1", None, start.clone(), StatusCode::OK), // replay
        (
            first,
            "k1",
            None,
            json!({"event": "analysis_done"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ), // key reused
        (
            second,
            "k2",
            Some("\"7\""),
            start.clone(),
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            second,
            "k3",
            None,
            json!({"event": "start_analysis", "expected_version": 9}),
            StatusCode::CONFLICT,
        ),
        (
            second,
            "k4",
            None,
            json!({"event": "verify_pass"}),
            StatusCode::CONFLICT,
        ), // illegal
        (
            second,
            "k5",
            None,
            json!({"event": "cancel"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ), // no reason
        (second, "k6", None, start.clone(), StatusCode::OK),
        (
            second,
            "k7",
            None,
            json!({"event": "analysis_done"}),
            StatusCode::OK,
        ),
    ];
    for (index, (case, key, if_match, body, expected)) in steps.into_iter().enumerate() {
        assert_eq!(
            patch(case, key, if_match, body).await,
            expected,
            "step {index}"
        );
    }
    let counted = [
        (
            r#"case_transition_total{event="start_analysis",from="NEW",to="ANALYZING"}"#,
            2.0,
        ),
        (
            r#"case_transition_total{event="analysis_done",from="ANALYZING",to="PLANNING"}"#,
            1.0,
        ),
        (
            r#"case_transition_total{event="cancel",from="NEW",to="CLOSED"}"#,
            0.0,
        ),
        ("idempotent_replay_total", 1.0),
        (r#"conflict_total{reason="idempotency_mismatch"}"#, 1.0),
        (r#"conflict_total{reason="precondition_failed"}"#, 1.0),
        (r#"conflict_total{reason="version_mismatch"}"#, 1.0),
        (r#"conflict_total{reason="illegal_transition"}"#, 1.0),
        (r#"conflict_total{reason="guard_failed"}"#, 1.0),
        (r#"conflict_total{reason="in_flight"}"#, 0.0),
        (r#"cases_open{status="NEW"}"#, 0.0),
        (r#"cases_open{status="ANALYZING"}"#, 1.0),
        (r#"cases_open{status="PLANNING"}"#, 1.0),
        (
            r#"http_requests_total{method="PATCH",route="/v1/cases/{id}/transition",status="200"}"#,
            4.0,
        ),
        (
            r#"http_requests_total{method="PATCH",route="/v1/cases/{id}/transition",status="409"}"#,
            2.0,
        ),
        (
            r#"http_requests_total{method="PATCH",route="/v1/cases/{id}/transition",status="412"}"#,
            1.0,
        ),
        (
            r#"http_requests_total{method="PATCH",route="/v1/cases/{id}/transition",status="422"}"#,
            2.0,
        ),
        (
            r#"http_requests_total{method="POST",route="/v1/cases",status="201"}"#,
            2.0,
        ),
    ];
    let text = app.metrics_text().await;
    for (series, expected) in counted {
        let value = text
            .lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map_or(0.0, |value| value.trim().parse::<f64>().unwrap());
        assert_eq!(value, expected, "{series}");
    }
    // No label value is an id: the scrape names no case.
    for case in [first, second] {
        assert!(!text.contains(&case.to_string()));
    }
}

crate::on_both_backends!(embedded_group_commits_are_counted);
/// On SQLite every write transaction and every COMMIT (one per group) is counted; PostgreSQL
/// commits its own way and exports neither series.
async fn embedded_group_commits_are_counted(app: TestApp) {
    let transactions = "sqlite_write_transactions_total";
    let commits = "sqlite_commits_total";
    let exported = app.metrics_text().await.contains(transactions);
    if app.orchestrator.store().backend() == orchestrator::Backend::Postgres {
        assert!(!exported, "PostgreSQL exports no group-commit counters");
        return;
    }
    let (transactions_before, commits_before) =
        (app.metric(transactions).await, app.metric(commits).await);
    for _ in 0..3 {
        app.open_case("t-001").await;
    }
    let added = app.metric(transactions).await - transactions_before;
    let committed = app.metric(commits).await - commits_before;
    assert!(added >= 3.0, "3 cases opened, {added} transactions counted");
    assert!(
        (1.0..=added).contains(&committed),
        "{committed} commits for {added} transactions"
    );
}

/// The histograms whose buckets carry the trace of their latest observation.
const TRACED: [&str; 3] = [
    "http_request_duration_seconds",
    "adapter_step_latency_seconds",
    "verify_latency_seconds",
];

/// The trace ids of the exemplars on the lines of `sample` (`name_bucket{...} 3 # {trace_id=
/// "...",span_id="..."} 0.2 1764770000.1`).
fn exemplar_traces(text: &str, sample: &str) -> Vec<String> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(sample)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter_map(|line| line.split_once(" # {"))
        .filter_map(|(_, exemplar)| exemplar.split_once("trace_id=\""))
        .filter_map(|(_, rest)| rest.split_once('"'))
        .map(|(trace_id, _)| trace_id.to_string())
        .collect()
}

/// The trace ids on the case's timeline (`meta.trace_id`).
async fn timeline_traces(app: &TestApp, case: Uuid) -> Vec<String> {
    app.timeline(case)
        .await
        .iter()
        .filter_map(|row| row["meta"]["trace_id"].as_str().map(str::to_string))
        .collect()
}

/// An auto case run to CLOSED (analysis, plan, gate, one step, verification).
async fn closed_auto_case(app: &TestApp) -> Uuid {
    app.ingest("checkout", "err_rate", 0.002).await;
    let case = app
        .auto_case(json!({"template": "noop.check", "service": "checkout"}))
        .await;
    app.settles_in(case, "CLOSED").await;
    case
}

crate::on_both_backends!(
    exemplars_lead_from_each_latency_to_a_trace_on_the_timeline,
    crate::incident::incident
);
/// A scraper that asks for OpenMetrics gets exemplars: on each traced histogram, one names a
/// trace the case's timeline names (the request that opened it, the executor's step report,
/// the verifier's verdict). Without asking, the classic text format, which has none.
async fn exemplars_lead_from_each_latency_to_a_trace_on_the_timeline(app: TestApp) {
    let case = closed_auto_case(&app).await;
    let traces = timeline_traces(&app, case).await;
    assert!(
        traces.len() >= 5,
        "the timeline names its traces: {traces:?}"
    );
    // A knowledge base search (lexical: no embeddings configured) times itself.
    let (status, _) = app.get_json("/v1/kb/search?q=pod+crash+looping&k=1").await;
    assert_eq!(status, StatusCode::OK);

    let scraper =
        client_with(&create_key(&app.orchestrator, "prometheus", &[Role::Metrics], None).await);

    let response = scraper
        .get(app.url("/metrics"))
        .header(reqwest::header::ACCEPT, "application/openmetrics-text")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("\n# EOF\n"), "OpenMetrics ends with # EOF");
    // prometheus-client writes OpenMetrics help texts unescaped: none may need escaping.
    for help in text.lines().filter_map(|line| line.strip_prefix("# HELP ")) {
        assert!(!help.contains(['"', '\\']), "{help}");
    }
    for histogram in TRACED {
        let found = exemplar_traces(&text, &format!("{histogram}_bucket"));
        assert!(
            found
                .iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
            "{histogram}: {found:?}"
        );
        assert!(
            found.iter().any(|id| traces.contains(id)),
            "{histogram}: no exemplar names a trace of the timeline {traces:?}; found {found:?}\n{text}"
        );
    }
    // Counters are named without `_total`, their samples with it, as OpenMetrics asks.
    assert!(text.contains("\n# TYPE case_transition counter\n"));
    assert!(text.contains(
        "\ncase_transition_total{event=\"verify_pass\",from=\"VERIFYING\",to=\"CLOSED\"} 1\n"
    ));

    let response = scraper.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(" # {"),
        "the classic format has no exemplars"
    );
    assert!(!text.contains("# EOF"));
    assert!(text.contains("\n# TYPE case_transition_total counter\n"));
    assert!(text.contains(
        "\nadapter_step_latency_seconds_count{adapter=\"noop\",status=\"succeeded\"} 1\n"
    ));
}

/// A Prometheus server of the test's own (Debian's `prometheus`), scraping one opscase every
/// second with a metrics key, exemplar storage on.
struct TestPrometheus {
    url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestPrometheus {
    /// `None` (saying so) when Prometheus is not installed outside CI; in CI that fails.
    fn start(target: &str, key: &str) -> Option<Self> {
        let binary = ["/usr/bin/prometheus"]
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .or_else(|| crate::helpers::on_path(&["prometheus"]));
        let Some(binary) = binary else {
            assert!(
                !crate::helpers::in_ci(),
                "Prometheus is required in CI (apt-get install prometheus; .ci/run installs it)"
            );
            eprintln!("SKIPPED: Prometheus not installed (apt-get install prometheus)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: opscase\n    authorization:\n      credentials: {key}\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Prometheus starts");
        Some(Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        })
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_openmetrics_with_exemplars_and_every_name_unchanged() {
    let database = TestDatabase::create(Backend::Sqlite)
        .await
        .expect("SQLite needs no server");
    let mut config = database.config();
    crate::incident::incident(&mut config);
    let app = TestApp::start(config).await;
    let case = closed_auto_case(&app).await;
    let traces = timeline_traces(&app, case).await;
    let key = create_key(&app.orchestrator, "prometheus", &[Role::Metrics], None).await;
    let classic = client_with(&key)
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let target = app.base.trim_start_matches("http://").to_string();
    let Some(prometheus) = TestPrometheus::start(&target, &key) else {
        return;
    };

    eventually("Prometheus to scrape opscase", 60, async || {
        prometheus
            .api("query", &[("query", "up{job=\"opscase\"} == 1")])
            .await
            .is_some_and(|data| data["result"].as_array().is_some_and(|r| !r.is_empty()))
    })
    .await;
    let targets = prometheus.api("targets", &[]).await.unwrap();
    let target = &targets["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target}\n{}", prometheus.log());
    assert_eq!(target["lastError"], "", "{target}");

    // Every series name of the classic format is stored under the same name.
    let stored = prometheus.api("label/__name__/values", &[]).await.unwrap();
    let stored: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let missing: Vec<String> = classic
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .filter(|name| !stored.contains(name))
        .map(str::to_string)
        .collect();
    assert!(missing.is_empty(), "not stored by Prometheus: {missing:?}");

    // The exemplars arrived: OpenMetrics was negotiated, and each traced histogram leads to
    // a trace of the case.
    let now = chrono::Utc::now();
    let (start, end) = (
        (now - chrono::Duration::minutes(5)).to_rfc3339(),
        (now + chrono::Duration::minutes(1)).to_rfc3339(),
    );
    for histogram in TRACED {
        let query = format!("{histogram}_bucket");
        let exemplars = prometheus
            .api(
                "query_exemplars",
                &[("query", &query), ("start", &start), ("end", &end)],
            )
            .await
            .unwrap();
        let found: Vec<String> = exemplars
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|series| series["exemplars"].as_array())
            .flatten()
            .filter_map(|exemplar| exemplar["labels"]["trace_id"].as_str())
            .map(str::to_string)
            .collect();
        assert!(
            found.iter().any(|id| traces.contains(id)),
            "{histogram}: no stored exemplar names a trace of the timeline {traces:?}: {exemplars}"
        );
    }
    drop(prometheus);
    drop(app);
    database.drop_database().await;
}
