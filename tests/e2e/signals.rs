//! The sensor end to end, on both backends: alerts open one case per group and join it after;
//! repeats are duplicates; resolutions are noted (or cancel, when the route says so); racing
//! deliveries open one case; bad payloads are refused naming the field and write nothing;
//! PagerDuty-shaped events and Grafana's webhook; evidence with click-through links.

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use opscase::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{client_with, create_key, TestApp};
use crate::on_both_backends;

/// An Alertmanager v4 payload with these alerts: (alertname, service, pod, status).
fn alertmanager(alerts: &[(&str, &str, &str, &str)]) -> Value {
    let started = "2026-12-02T10:00:00Z";
    let items: Vec<Value> = alerts
        .iter()
        .map(|(name, service, pod, status)| {
            json!({
                "status": status,
                "labels": {"alertname": name, "service": service, "pod": pod,
                           "severity": "critical", "tenant": "t-001"},
                "annotations": {"summary": format!("{name} on {service}")},
                "startsAt": started,
                "endsAt": if *status == "resolved" { "2026-12-02T10:30:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
                "fingerprint": format!("{name}-{service}-{pod}"),
            })
        })
        .collect();
    json!({
        "version": "4", "receiver": "opscase", "status": alerts[0].3,
        "groupKey": "{}:{alertname=\"x\"}", "truncatedAlerts": 0,
        "groupLabels": {"alertname": alerts[0].0}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "alerts": items,
    })
}

impl TestApp {
    async fn post_signal(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn cases_from(&self, source: &str) -> Vec<Value> {
        let (status, page) = self
            .get_json(&format!("/v1/cases?source={source}&limit=200"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"].as_array().unwrap().clone()
    }

    async fn envelopes(&self, fingerprint: &str) -> Vec<sensor::Envelope> {
        sensor::SensorStore::new(self.orchestrator.store().pool())
            .envelopes_of_alert("t-001", fingerprint)
            .await
            .unwrap()
    }
}

on_both_backends!(alerts_open_one_case_per_group_and_repeats_join_it);
async fn alerts_open_one_case_per_group_and_repeats_join_it(app: TestApp) {
    let first = alertmanager(&[
        ("HighLatency", "checkout", "a", "firing"),
        ("HighLatency", "checkout", "b", "firing"),
        ("HighLatency", "cart", "c", "firing"),
    ]);
    let (status, taken) = app.post_signal("/v1/signals/alertmanager", &first).await;
    assert_eq!(status, StatusCode::OK, "{taken:#}");
    let outcomes: Vec<&str> = taken["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["opened", "joined", "opened"], "{taken:#}");
    let checkout = taken["items"][0]["case_id"].as_str().unwrap().to_string();
    assert_eq!(taken["items"][1]["case_id"], checkout.as_str());
    assert_ne!(taken["items"][2]["case_id"], checkout.as_str());

    let cases = app.cases_from("alertmanager").await;
    assert_eq!(cases.len(), 2);
    assert!(app.cases_from("api").await.is_empty());
    let case_id: Uuid = checkout.parse().unwrap();
    let case = app.case(case_id).await;
    assert_eq!(case["title"], "HighLatency on checkout");
    assert_eq!(case["tenant"], "t-001");
    assert_eq!(case["severity"], "critical");
    assert_eq!(case["source"], "alertmanager");
    assert_eq!(case["labels"]["service"], "checkout");
    assert_eq!(case["labels"]["alertname"], "HighLatency");
    assert_eq!(case["status"], "NEW", "the default route is manual");

    // Alertmanager repeats the whole group on every repeat_interval: nothing new.
    let (status, again) = app.post_signal("/v1/signals/alertmanager", &first).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["duplicates"], 3, "{again:#}");
    assert_eq!(app.envelopes("HighLatency-checkout-a").await.len(), 1);
    let rows = app.timeline(case_id).await;
    let signals = rows.iter().filter(|r| r["event"] == "signal").count();
    assert_eq!(signals, 2, "one row per alert state: {rows:#?}");

    // A new alert of the group joins; its evidence links to the envelope and the rule.
    let third = alertmanager(&[("HighLatency", "checkout", "d", "firing")]);
    let (_, joined) = app.post_signal("/v1/signals/alertmanager", &third).await;
    assert_eq!(joined["items"][0]["outcome"], "joined");
    assert_eq!(joined["items"][0]["case_id"], checkout.as_str());
    let (_, evidence) = app.get_json(&format!("/v1/cases/{case_id}/evidence")).await;
    let items = evidence["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{evidence:#}");
    assert!(items.iter().all(|e| e["kind"] == "alert"
        && e["ref"]["table"] == "event_envelope"
        && e["href"] == "http://prometheus:9090/graph?g0.expr=up"));

    // A delivery that mixes a state already taken, a new alert, and that new alert again:
    // each is answered on its own, in the payload's order.
    let mixed = alertmanager(&[
        ("HighLatency", "checkout", "a", "firing"),
        ("HighLatency", "checkout", "e", "firing"),
        ("HighLatency", "checkout", "e", "firing"),
    ]);
    let (status, mixed) = app.post_signal("/v1/signals/alertmanager", &mixed).await;
    assert_eq!(status, StatusCode::OK, "{mixed:#}");
    let items = mixed["items"].as_array().unwrap();
    let outcomes: Vec<&str> = items
        .iter()
        .map(|i| i["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["duplicate", "joined", "duplicate"], "{mixed:#}");
    assert!(items.iter().all(|i| i["case_id"] == checkout.as_str()));
    assert_eq!(app.envelopes("HighLatency-checkout-e").await.len(), 1);

    assert_eq!(
        app.metric("signals_received_total{source=\"alertmanager\",status=\"firing\"}")
            .await,
        10.0
    );
    assert_eq!(
        app.metric("signal_duplicates_total{source=\"alertmanager\"}")
            .await,
        5.0
    );
    assert_eq!(
        app.metric("cases_opened_total{source=\"alertmanager\"}")
            .await,
        2.0
    );
    assert!(
        app.metric("signal_ingest_seconds_count{source=\"alertmanager\"}")
            .await
            >= 3.0
    );
}

fn cancelling(config: &mut Config) {
    let routes: Vec<sensor::RouteConfig> = serde_json::from_value(json!([
        {"name": "cart", "match": {"service": "cart"}, "on_resolved": "cancel"}
    ]))
    .unwrap();
    config.sensor.routes = routes;
}

on_both_backends!(
    resolutions_are_noted_or_cancel_where_the_route_says,
    super::cancelling
);
async fn resolutions_are_noted_or_cancel_where_the_route_says(app: TestApp) {
    let firing = alertmanager(&[
        ("Errors", "cart", "a", "firing"),
        ("Errors", "cart", "b", "firing"),
        ("Errors", "checkout", "c", "firing"),
    ]);
    let (_, taken) = app.post_signal("/v1/signals/alertmanager", &firing).await;
    let cart: Uuid = taken["items"][0]["case_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let checkout: Uuid = taken["items"][2]["case_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let (_, one) = app
        .post_signal(
            "/v1/signals/alertmanager",
            &alertmanager(&[("Errors", "cart", "a", "resolved")]),
        )
        .await;
    assert_eq!(one["items"][0]["outcome"], "resolved", "b still fires");
    assert_eq!(app.case(cart).await["status"], "NEW");
    let (_, last) = app
        .post_signal(
            "/v1/signals/alertmanager",
            &alertmanager(&[
                ("Errors", "cart", "b", "resolved"),
                ("Errors", "checkout", "c", "resolved"),
            ]),
        )
        .await;
    assert_eq!(last["items"][0]["outcome"], "cancelled", "{last:#}");
    let cancelled = app.case(cart).await;
    assert_eq!(cancelled["status"], "CLOSED");
    assert_eq!(cancelled["resolution"], "cancelled");
    let row = app
        .timeline(cart)
        .await
        .into_iter()
        .find(|r| r["event"] == "cancel")
        .unwrap();
    assert!(row["reason"]
        .as_str()
        .unwrap()
        .contains("every alert of the case's group resolved"));

    assert_eq!(
        last["items"][1]["outcome"], "resolved",
        "the default route notes"
    );
    assert_eq!(app.case(checkout).await["status"], "NEW");
    let rows = app.timeline(checkout).await;
    let resolved = rows
        .iter()
        .find(|r| r["event"] == "signal_resolved")
        .unwrap();
    assert!(resolved["reason"]
        .as_str()
        .unwrap()
        .starts_with("Errors resolved"));

    // The group fires again after its case closed: a new case.
    let (_, refired) = app
        .post_signal(
            "/v1/signals/alertmanager",
            &json!({"version": "4", "receiver": "opscase", "status": "firing", "groupKey": "g",
                "alerts": [{"status": "firing", "startsAt": "2026-12-02T11:00:00Z",
                    "labels": {"alertname": "Errors", "service": "cart", "pod": "a", "tenant": "t-001"},
                    "fingerprint": "Errors-cart-a"}]}),
        )
        .await;
    assert_eq!(refired["items"][0]["outcome"], "opened", "{refired:#}");
    assert_ne!(refired["items"][0]["case_id"], cart.to_string().as_str());
}

on_both_backends!(racing_deliveries_of_a_new_group_open_one_case);
async fn racing_deliveries_of_a_new_group_open_one_case(app: TestApp) {
    let payload = alertmanager(&[
        ("DiskFull", "db", "a", "firing"),
        ("DiskFull", "db", "b", "firing"),
    ]);
    let sends = (0..50).map(|_| {
        let client = app.client.clone();
        let url = app.url("/v1/signals/alertmanager");
        let payload = payload.clone();
        async move {
            let response = client.post(url).json(&payload).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(sends).await;
    let mut cases = BTreeSet::new();
    for (status, taken) in &answers {
        assert_eq!(*status, StatusCode::OK, "{taken:#}");
        for item in taken["items"].as_array().unwrap() {
            cases.insert(item["case_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(cases.len(), 1, "one case for the group: {cases:?}");
    assert_eq!(app.cases_from("alertmanager").await.len(), 1);
    for pod in ["a", "b"] {
        assert_eq!(
            app.envelopes(&format!("DiskFull-db-{pod}")).await.len(),
            1,
            "one envelope per alert state"
        );
    }
    let duplicates: u64 = answers
        .iter()
        .map(|(_, taken)| taken["duplicates"].as_u64().unwrap())
        .sum();
    assert_eq!(duplicates, 98);
}

on_both_backends!(bad_payloads_are_refused_naming_the_field_and_write_nothing);
async fn bad_payloads_are_refused_naming_the_field_and_write_nothing(app: TestApp) {
    let good = alertmanager(&[("X", "s", "p", "firing")]);
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for pointer in [
        "/receiver",
        "/status",
        "/groupKey",
        "/alerts",
        "/alerts/0/status",
        "/alerts/0/labels",
        "/alerts/0/startsAt",
    ] {
        let mut body = good.clone();
        let (parent, name) = pointer.rsplit_once('/').unwrap();
        let parent = if parent.is_empty() {
            &mut body
        } else {
            body.pointer_mut(parent).unwrap()
        };
        parent.as_object_mut().unwrap().remove(name);
        cases.push((
            body,
            Box::leak(pointer[1..].replace("/0/", "[0].").into_boxed_str()),
        ));
    }
    let mut wrong = good.clone();
    wrong["alerts"][0]["startsAt"] = json!(12);
    cases.push((wrong, "alerts[0].startsAt"));
    let mut huge_value = good.clone();
    huge_value["alerts"][0]["labels"]["pod"] = json!("x".repeat(1_000_000));
    cases.push((huge_value, "alerts[0].labels.pod"));
    let mut bad_tenant = good.clone();
    bad_tenant["alerts"][0]["labels"]["tenant"] = json!("no spaces allowed");
    cases.push((bad_tenant, "alerts[0].labels.tenant"));
    let mut many = good.clone();
    let small = json!({"status": "firing", "labels": {}, "startsAt": "2026-12-02T10:00:00Z"});
    many["alerts"] = Value::Array(vec![small; 10_000]);
    cases.push((many, "alerts"));

    for (body, field) in cases {
        let (status, problem) = app.post_signal("/v1/signals/alertmanager", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {problem:#}");
        assert_eq!(problem["field"], field, "{problem:#}");
        assert_eq!(problem["type"], "urn:opscase:problem:invalid-request");
    }
    // A key scoped to another tenant than the alert's.
    let scoped = create_key(
        &app.orchestrator,
        "am-t2",
        &[orchestrator::Role::Sensor],
        Some("t-002"),
    )
    .await;
    let response = client_with(&scoped)
        .post(app.url("/v1/signals/alertmanager"))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["field"], "alerts[0].labels.tenant");

    assert!(app.cases_from("alertmanager").await.is_empty());
    assert!(app.envelopes("X-s-p").await.is_empty());
    assert_eq!(
        app.metric("signals_received_total{source=\"alertmanager\",status=\"invalid\"}")
            .await,
        12.0
    );
}

on_both_backends!(pagerduty_shaped_events_trigger_acknowledge_and_resolve);
async fn pagerduty_shaped_events_trigger_acknowledge_and_resolve(app: TestApp) {
    let trigger = json!({
        "routing_key": "R0123456789abcdef0123456789abcdef", "event_action": "trigger",
        "payload": {"summary": "disk 95% full on db-3", "source": "db-3", "severity": "error",
                    "component": "postgres", "class": "disk",
                    "custom_details": {"tenant": "t-001", "free_gb": 2}},
        "links": [{"href": "https://grafana.example/d/disk", "text": "disk dashboard"}]
    });
    let (status, accepted) = app.post_signal("/v1/signals/events", &trigger).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted:#}");
    assert_eq!(accepted["status"], "success");
    let dedup_key = accepted["dedup_key"].as_str().unwrap().to_string();
    assert!(!dedup_key.is_empty());
    let case: Uuid = accepted["outcome"]["case_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let opened = app.case(case).await;
    assert_eq!(opened["source"], "events");
    assert_eq!(opened["severity"], "high");
    assert_eq!(opened["title"], "disk 95% full on db-3");
    let (_, evidence) = app.get_json(&format!("/v1/cases/{case}/evidence")).await;
    let hrefs: Vec<&str> = evidence["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["href"].as_str())
        .collect();
    assert!(
        hrefs.contains(&"https://grafana.example/d/disk"),
        "{evidence:#}"
    );

    for (action, outcome, event) in [
        ("acknowledge", "acknowledged", "signal_acknowledged"),
        ("resolve", "resolved", "signal_resolved"),
    ] {
        let (status, answer) = app
            .post_signal(
                "/v1/signals/events",
                &json!({"event_action": action, "dedup_key": dedup_key}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer:#}");
        assert_eq!(answer["dedup_key"], dedup_key.as_str());
        assert_eq!(answer["outcome"]["outcome"], outcome, "{answer:#}");
        assert_eq!(answer["outcome"]["case_id"], case.to_string().as_str());
        assert!(app
            .timeline(case)
            .await
            .iter()
            .any(|row| row["event"] == event));
    }
    let (status, problem) = app
        .post_signal("/v1/signals/events", &json!({"event_action": "resolve"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["field"], "dedup_key");
}

fn grafana_links(config: &mut Config) {
    config.sensor.links.grafana_url = Some("https://grafana.example".into());
    config.sensor.links.grafana_loki_uid = Some("loki".into());
}

on_both_backends!(
    grafana_alerts_and_evidence_with_click_through_links,
    super::grafana_links
);
async fn grafana_alerts_and_evidence_with_click_through_links(app: TestApp) {
    let payload = json!({
        "receiver": "opscase", "status": "firing", "orgId": 1, "groupKey": "g", "version": "1",
        "groupLabels": {"alertname": "HighLatency"},
        "alerts": [{"status": "firing",
            "labels": {"alertname": "HighLatency", "service": "search", "tenant": "t-001"},
            "annotations": {"summary": "p95 above 300 ms on search"},
            "startsAt": "2026-12-02T10:00:00Z", "values": {"B": 412.5},
            "valueString": "[ var='B' value=412.5 ]",
            "dashboardURL": "https://grafana.example/d/abc", "panelURL": "",
            "silenceURL": "https://grafana.example/alerting/silence/new", "fingerprint": "g1"}]
    });
    let (status, taken) = app.post_signal("/v1/signals/grafana", &payload).await;
    assert_eq!(status, StatusCode::OK, "{taken:#}");
    let case: Uuid = taken["items"][0]["case_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(app.case(case).await["source"], "grafana");

    let now = Utc::now();
    let evidence = json!({"kind": "log", "title": "search errors",
        "locator": {"system": "loki", "query": "{app=\"search\"} |= \"error\"",
                    "from": (now - Duration::minutes(15)).to_rfc3339(), "to": now.to_rfc3339()}});
    let added = app
        .client
        .post(app.url(&format!("/v1/cases/{case}/evidence")))
        .json(&evidence)
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let added: Value = added.json().await.unwrap();
    assert!(added["href"]
        .as_str()
        .unwrap()
        .starts_with("https://grafana.example/explore?schemaVersion=1&panes="));
    let again = app
        .client
        .post(app.url(&format!("/v1/cases/{case}/evidence")))
        .json(&evidence)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "the same content is kept once"
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], added["id"]);
    let rows = app.timeline(case).await;
    assert_eq!(rows.iter().filter(|r| r["event"] == "evidence").count(), 1);
    let (_, listed) = app.get_json(&format!("/v1/cases/{case}/evidence")).await;
    let kinds: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["alert", "url", "url", "log"], "{listed:#}");

    let bad = app
        .client
        .post(app.url(&format!("/v1/cases/{case}/evidence")))
        .json(&json!({"kind": "log", "title": "x", "locator": {"system": "splunk", "query": "q"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["field"],
        "locator.system"
    );
    let missing = app
        .client
        .post(app.url(&format!("/v1/cases/{}/evidence", Uuid::now_v7())))
        .json(&evidence)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

fn auto_route(config: &mut Config) {
    let routes: Vec<sensor::RouteConfig> = serde_json::from_value(json!([
        {"name": "pages", "match": {"severity": "critical"}, "automation": "auto",
         "template": "noop.check"}
    ]))
    .unwrap();
    config.sensor.routes = routes;
}

on_both_backends!(
    an_auto_case_opened_by_an_alert_goes_on_by_itself,
    super::auto_route
);
async fn an_auto_case_opened_by_an_alert_goes_on_by_itself(app: TestApp) {
    let (_, taken) = app
        .post_signal(
            "/v1/signals/alertmanager",
            &alertmanager(&[("Errors", "checkout", "a", "firing")]),
        )
        .await;
    let case: Uuid = taken["items"][0]["case_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let opened = app.case(case).await;
    assert_eq!(opened["automation"], "auto");
    assert_eq!(opened["labels"]["template"], "noop.check");
    let events = app.timeline_events(case).await;
    assert_eq!(
        events[..3],
        ["open", "start_analysis", "signal"],
        "{events:?}"
    );
    // The analyst examines it (a `cmd.analysis.run`) and its answer moves it to PLANNING.
    crate::helpers::eventually("the analyst to finish the analysis", 30, async || {
        app.timeline_events(case)
            .await
            .contains(&"analysis_done".to_string())
    })
    .await;
    let analysed = app
        .timeline(case)
        .await
        .into_iter()
        .find(|row| row["event"] == "analysis_done")
        .unwrap();
    assert_eq!(analysed["actor"], "analyst");
    assert!(analysed["reason"]
        .as_str()
        .unwrap()
        .starts_with("nothing found for checkout in the last 30 min"));
    // The planner takes it from there (no metrics were ingested: it parks at verification,
    // which fails closed, or closes; either way nobody moved it by hand).
    crate::helpers::eventually("the case to leave PLANNING by itself", 30, async || {
        let status = app.case(case).await["status"].clone();
        status != "PLANNING" && status != "NEW"
    })
    .await;
}
