//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`) with a webhook receiver
//! pointing at opscase, authenticated by a sensor key as a bearer credential. Alerts pushed
//! into it open exactly one case per group; its repeats and a new alert of the group join that
//! case; resolving them is recorded, and cancels the case under `on_resolved = "cancel"`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use chrono::{Duration, Utc};
use opscase::Config;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{create_key, eventually, TestApp};
use crate::on_both_backends;

fn alertmanager_binary() -> Option<PathBuf> {
    ["prometheus-alertmanager", "alertmanager"]
        .iter()
        .flat_map(|name| {
            ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
                .iter()
                .map(move |dir| PathBuf::from(dir).join(name))
        })
        .find(|path| path.exists())
}

/// An Alertmanager of the test's own: a free port, a store in a temp dir, no clustering.
struct TestAlertmanager {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for TestAlertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestAlertmanager {
    /// `None` (saying so) when Alertmanager is not installed outside CI; in CI
    /// (`CI=true`) that fails the test.
    async fn start(opscase: &str, key: &str) -> Option<Self> {
        let Some(binary) = alertmanager_binary() else {
            if crate::helpers::in_ci() {
                panic!("Alertmanager is required in CI but not installed");
            }
            eprintln!(
                "SKIPPED: Alertmanager is not installed (apt-get install prometheus-alertmanager)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // Short waits so the test sees a group, its repeat and its resolution in seconds.
        let config = format!(
            "route:\n  receiver: opscase\n  group_by: [alertname, service]\n  group_wait: 1s\n  \
             group_interval: 2s\n  repeat_interval: 3s\nreceivers:\n  - name: opscase\n    \
             webhook_configs:\n      - url: {opscase}/v1/signals/alertmanager\n        \
             send_resolved: true\n        http_config:\n          authorization:\n            \
             type: Bearer\n            credentials: {key}\n"
        );
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Alertmanager starts");
        let alertmanager = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", alertmanager.url);
        eventually("Alertmanager to be ready", 30, async || {
            Client::new()
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Some(alertmanager)
    }

    /// Push alerts as Prometheus does (`POST /api/v2/alerts`); ended ones resolve.
    async fn push(&self, alerts: &[(&str, &str, &str, bool)]) {
        let now = Utc::now();
        let body: Vec<Value> = alerts
            .iter()
            .map(|(name, service, pod, resolved)| {
                let ends = if *resolved {
                    now - Duration::seconds(1)
                } else {
                    now + Duration::minutes(10)
                };
                json!({
                    "labels": {"alertname": name, "service": service, "pod": pod,
                               "severity": "critical", "tenant": "t-001"},
                    "annotations": {"summary": format!("{name} on {service}")},
                    "startsAt": (now - Duration::minutes(1)).to_rfc3339(),
                    "endsAt": ends.to_rfc3339(),
                    "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
                })
            })
            .collect();
        let response = Client::new()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "Alertmanager took the alerts"
        );
    }
}

fn cancel_checkout(config: &mut Config) {
    config.sensor.routes = serde_json::from_value(json!([
        {"name": "checkout", "match": {"service": "checkout"}, "on_resolved": "cancel"}
    ]))
    .unwrap();
}

on_both_backends!(
    a_real_alertmanager_opens_one_case_per_group_and_resolves_it,
    super::cancel_checkout
);
async fn a_real_alertmanager_opens_one_case_per_group_and_resolves_it(app: TestApp) {
    let key = create_key(
        &app.orchestrator,
        "alertmanager",
        &[orchestrator::Role::Sensor],
        None,
    )
    .await;
    let Some(alertmanager) = TestAlertmanager::start(&app.base, &key).await else {
        return;
    };
    alertmanager
        .push(&[
            ("HighLatency", "checkout", "a", false),
            ("HighLatency", "checkout", "b", false),
            ("HighLatency", "cart", "c", false),
        ])
        .await;
    let cases = async || {
        let (_, page) = app.get_json("/v1/cases?source=alertmanager").await;
        page["items"].as_array().cloned().unwrap_or_default()
    };
    eventually("one case per group", 30, async || cases().await.len() == 2).await;
    let listed = cases().await;
    let checkout = listed
        .iter()
        .find(|c| c["labels"]["service"] == "checkout")
        .expect("the checkout group's case");
    let checkout_id: uuid::Uuid = checkout["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(checkout["title"], "HighLatency on checkout");
    assert_eq!(checkout["tenant"], "t-001");

    // Alertmanager repeats the group (repeat_interval) and another alert of it fires.
    eventually("a repeat delivery", 30, async || {
        app.metric("signal_duplicates_total{source=\"alertmanager\"}")
            .await
            >= 2.0
    })
    .await;
    alertmanager
        .push(&[("HighLatency", "checkout", "d", false)])
        .await;
    eventually("the new alert to join the checkout case", 30, async || {
        app.timeline(checkout_id)
            .await
            .iter()
            .filter(|r| r["event"] == "signal")
            .count()
            == 3
    })
    .await;
    assert_eq!(cases().await.len(), 2, "repeats and joins open nothing");

    // Every alert of both groups resolves.
    alertmanager
        .push(&[
            ("HighLatency", "checkout", "a", true),
            ("HighLatency", "checkout", "b", true),
            ("HighLatency", "checkout", "d", true),
            ("HighLatency", "cart", "c", true),
        ])
        .await;
    eventually("the checkout case cancelled", 30, async || {
        app.case(checkout_id).await["status"] == "CLOSED"
    })
    .await;
    assert_eq!(app.case(checkout_id).await["resolution"], "cancelled");
    let cart_id: uuid::Uuid = listed
        .iter()
        .find(|c| c["labels"]["service"] == "cart")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eventually("the cart resolution noted", 30, async || {
        app.timeline(cart_id)
            .await
            .iter()
            .any(|r| r["event"] == "signal_resolved")
    })
    .await;
    assert_eq!(
        app.case(cart_id).await["status"],
        "NEW",
        "the default route notes a resolution"
    );
}
