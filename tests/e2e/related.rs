//! Knowledge out, into the loop, on both backends: a case that closes or parks becomes a
//! knowledge-base document of its tenant; the next case with the same alert finds it first
//! among its past cases, with its rollback steps as hints, on the plan the planner proposes
//! and on `GET /v1/cases/{id}/related`; another tenant's past cases never appear; the runbook an
//! alert's `runbook_url` names comes first.

use std::path::{Path, PathBuf};

use librarian::cases::case_doc_id;
use librarian::store::Upserted;
use librarian::{import_dir, KbStore, Librarian, SearchFilter};
use orchestrator::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{client_with, create_key, eventually, happy_path, valid_plan, TestApp};
use crate::on_both_backends;

const CRASH_LOOP: &str = "KubePodCrashLooping";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/runbooks")
}

fn store(app: &TestApp) -> KbStore {
    KbStore::new(app.orchestrator.store().pool().clone())
}

fn crash_labels(service: &str) -> Value {
    json!({"alertname": CRASH_LOOP, "service": service, "namespace": "shop"})
}

impl TestApp {
    /// A manual case of `tenant` with these labels.
    async fn case_with(&self, tenant: &str, title: &str, labels: Value) -> Uuid {
        let response = self
            .client
            .post(self.url("/v1/cases"))
            .json(&json!({"title": title, "tenant": tenant, "labels": labels}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Through the whole happy path to CLOSED (resolved), by PATCH.
    async fn close_resolved(&self, case: Uuid) {
        for (body, reached) in happy_path() {
            assert_eq!(self.advance(case, body).await["status"], reached);
        }
    }

    /// Planned, approved, then failed in execution: PARKED.
    async fn park_failed(&self, case: Uuid, reason: &str) {
        for body in [
            json!({"event": "start_analysis", "actor": "analyst@svc"}),
            json!({"event": "analysis_done", "actor": "analyst@svc"}),
            json!({"event": "plan_ready", "actor": "planner@svc", "plan": valid_plan()}),
            json!({"event": "gate_approved", "actor": "lead@svc",
                   "decision": {"approver": "lead@svc"}}),
            json!({"event": "exec_failed", "actor": "executor@svc", "reason": reason}),
        ] {
            self.advance(case, body).await;
        }
        assert_eq!(self.case(case).await["status"], "PARKED");
    }

    /// Wait for the case's document to say `outcome`; the document's metadata.
    async fn case_document(&self, tenant: &str, case: Uuid, outcome: &str) -> Value {
        let store = store(self);
        let id = case_doc_id(tenant, case);
        let mut metadata = Value::Null;
        eventually(
            &format!("case {case}'s document with outcome {outcome}"),
            30,
            async || {
                metadata = match store.summary(&id).await.unwrap() {
                    Some(doc) => doc.metadata,
                    None => Value::Null,
                };
                metadata["outcome"] == outcome
            },
        )
        .await;
        metadata
    }

    /// The case's current plan, once the planner proposed it.
    async fn proposed_plan(&self, case: Uuid) -> Value {
        let mut plan = Value::Null;
        eventually(&format!("a plan for case {case}"), 30, async || {
            let (_, plans) = self.get_json(&format!("/v1/cases/{case}/plans")).await;
            plan = plans["items"]
                .as_array()
                .and_then(|items| items.last().cloned())
                .unwrap_or(Value::Null);
            !plan.is_null()
        })
        .await;
        plan
    }

    async fn cases_documents(&self) -> usize {
        store(self)
            .list(
                &SearchFilter {
                    source: Some("cases".into()),
                    ..SearchFilter::default()
                },
                500,
            )
            .await
            .unwrap()
            .len()
    }
}

fn past_case_ids(references: &Value) -> Vec<String> {
    references["past_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case_id"].as_str().unwrap().to_string())
        .collect()
}

async fn a_closed_case_is_the_top_related_case_of_the_next_one_with_its_rollback(app: TestApp) {
    import_dir(&store(&app), &corpus(), None, "runbooks", false)
        .await
        .unwrap();
    // The past: the crash loop on checkout, resolved; an unrelated case of the same tenant;
    // the same crash loop in another tenant.
    let resolved = app
        .case_with(
            "t-001",
            "Pod shop/checkout is crash looping",
            crash_labels("checkout"),
        )
        .await;
    app.close_resolved(resolved).await;
    let unrelated = app
        .case_with(
            "t-001",
            "Clock not synchronising on node-1",
            json!({"alertname": "NodeClockNotSynchronising", "instance": "node-1:9100"}),
        )
        .await;
    app.close_resolved(unrelated).await;
    let elsewhere = app
        .case_with(
            "t-002",
            "Pod shop/checkout is crash looping",
            crash_labels("checkout"),
        )
        .await;
    app.close_resolved(elsewhere).await;
    let metadata = app.case_document("t-001", resolved, "resolved").await;
    assert_eq!(metadata["status"], "CLOSED");
    assert_eq!(metadata["verdict"], Value::Null, "no verifier ran");
    assert_eq!(metadata["rollback"][0]["id"], "undo");
    app.case_document("t-001", unrelated, "resolved").await;
    app.case_document("t-002", elsewhere, "resolved").await;
    let written = app.cases_documents().await;
    assert_eq!(written, 3);

    // The next crash loop on checkout, planned by the planner itself.
    let response = app
        .client
        .post(app.url("/v1/cases"))
        .json(
            &json!({"title": "Pod shop/checkout is crash looping again", "tenant": "t-001",
                      "automation": "auto",
                      "labels": {"alertname": CRASH_LOOP, "service": "checkout",
                                 "namespace": "shop", "template": "noop.check"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let next: Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    app.advance(
        next,
        json!({"event": "start_analysis", "actor": "oncall@svc"}),
    )
    .await;
    let plan = app.proposed_plan(next).await;
    let references = &plan["references"];
    assert_eq!(
        past_case_ids(references)[0],
        resolved.to_string(),
        "{references:#}"
    );
    assert!(!past_case_ids(references).contains(&elsewhere.to_string()));
    assert!(!past_case_ids(references).contains(&next.to_string()));
    let top = &references["past_cases"][0];
    assert_eq!(top["outcome"], "resolved");
    assert_eq!(top["status"], "CLOSED");
    let expected_rollback = &valid_plan()["rollback"]["steps"][0];
    assert_eq!(top["rollback_hints"][0]["id"], "undo");
    assert_eq!(
        top["rollback_hints"][0]["action"],
        expected_rollback["action"]
    );
    assert_eq!(
        top["rollback_hints"][0]["params"],
        expected_rollback["params"]
    );
    assert_eq!(top["plan_steps"][0]["id"], "rollout");
    assert_eq!(references["runbooks"][0]["title"], CRASH_LOOP);
    assert_eq!(references["runbooks"][0]["matched_by"], "search");
    // The timeline's plan_ready row summarises them.
    let ready = app
        .timeline(next)
        .await
        .into_iter()
        .find(|row| row["event"] == "plan_ready")
        .unwrap();
    assert_eq!(
        ready["meta"]["references"]["past_cases"][0]["case_id"],
        resolved.to_string()
    );
    assert_eq!(
        ready["meta"]["references"]["runbooks"][0]["url"],
        "kubernetes/KubePodCrashLooping.md"
    );

    // The gate is asked about the plan alone: its references never reach a decision.
    let gate = app
        .outbox(next)
        .await
        .into_iter()
        .find(|message| message.topic == "cmd.gate.eval")
        .expect("the auto case asked the gate");
    assert_eq!(gate.payload["plan"]["steps"], plan["plan"]["steps"]);
    assert!(gate.payload.get("references").is_none());
    assert!(gate.payload["plan"].get("references").is_none());

    // The same, any time, from /related (the case itself may have closed meanwhile: never
    // its own past case).
    let (status, related) = app.get_json(&format!("/v1/cases/{next}/related")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(past_case_ids(&related)[0], resolved.to_string());
    assert!(!past_case_ids(&related).contains(&next.to_string()));
    assert!(!past_case_ids(&related).contains(&elsewhere.to_string()));

    // Tenant scoping: a viewer of t-001 sees it; one of t-002 gets 404 for it, and its own
    // case's references hold only t-002's past cases.
    let t1 =
        client_with(&create_key(&app.orchestrator, "v1", &[Role::Viewer], Some("t-001")).await);
    let t2 =
        client_with(&create_key(&app.orchestrator, "v2", &[Role::Viewer], Some("t-002")).await);
    let url = app.url(&format!("/v1/cases/{next}/related"));
    assert_eq!(t1.get(&url).send().await.unwrap().status(), StatusCode::OK);
    let hidden = t2.get(&url).send().await.unwrap();
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
    let other = app
        .case_with(
            "t-002",
            "Pod shop/checkout is crash looping",
            crash_labels("checkout"),
        )
        .await;
    let theirs: Value = t2
        .get(app.url(&format!("/v1/cases/{other}/related")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(past_case_ids(&theirs), [elsewhere.to_string()]);
    let missing = app
        .get_json(&format!("/v1/cases/{}/related", Uuid::now_v7()))
        .await;
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
}
on_both_backends!(a_closed_case_is_the_top_related_case_of_the_next_one_with_its_rollback);

async fn a_parked_case_is_knowledge_too_and_closing_it_replaces_its_document(app: TestApp) {
    let parked = app
        .case_with(
            "t-001",
            "Pod shop/cart is crash looping",
            crash_labels("cart"),
        )
        .await;
    app.park_failed(parked, "rollout of cart timed out").await;
    let metadata = app.case_document("t-001", parked, "exec_failed").await;
    assert_eq!(metadata["status"], "PARKED");
    assert_eq!(metadata["reason"], "rollout of cart timed out");

    let next = app
        .case_with(
            "t-001",
            "Pod shop/cart is crash looping",
            crash_labels("cart"),
        )
        .await;
    let (status, related) = app.get_json(&format!("/v1/cases/{next}/related")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(past_case_ids(&related), [parked.to_string()], "{related:#}");
    let past = &related["past_cases"][0];
    assert_eq!(past["outcome"], "exec_failed");
    assert_eq!(past["reason"], "rollout of cart timed out");
    assert_eq!(past["rollback_hints"][0]["id"], "undo");
    assert_eq!(
        past["rollback_hints"][0]["params"]["image"],
        "checkout:1.2.3"
    );
    // No runbooks imported: none to show, and no error.
    assert_eq!(related["runbooks"], json!([]));

    // Written once: writing it again changes nothing.
    let librarian = Librarian::new(app.orchestrator.store().clone());
    assert_eq!(
        librarian.write_case(parked).await.unwrap(),
        Some(Upserted::Unchanged)
    );
    assert_eq!(
        librarian.write_case(next).await.unwrap(),
        None,
        "an open case"
    );

    // A lost document comes back with a sweep, which otherwise finds everything in place.
    assert!(store(&app)
        .delete(&case_doc_id("t-001", parked))
        .await
        .unwrap());
    let swept = librarian.sweep(Some("t-001")).await.unwrap();
    assert_eq!((swept.created, swept.updated, swept.unchanged), (1, 0, 0));
    let swept = librarian.sweep(None).await.unwrap();
    assert_eq!((swept.created, swept.updated, swept.unchanged), (0, 0, 1));
    assert_eq!(
        librarian.sweep(Some("t-002")).await.unwrap(),
        Default::default()
    );

    // Closing it replaces its document: one document still, now cancelled.
    app.advance(
        parked,
        json!({"event": "cancel", "actor": "oncall@svc", "reason": "fixed by hand"}),
    )
    .await;
    let metadata = app.case_document("t-001", parked, "cancelled").await;
    assert_eq!(metadata["status"], "CLOSED");
    assert_eq!(metadata["reason"], "fixed by hand");
    assert_eq!(app.cases_documents().await, 1);
    let (_, related) = app.get_json(&format!("/v1/cases/{next}/related")).await;
    assert_eq!(related["past_cases"][0]["outcome"], "cancelled");
    assert_eq!(related["past_cases"][0]["rollback_hints"][0]["id"], "undo");
}
on_both_backends!(a_parked_case_is_knowledge_too_and_closing_it_replaces_its_document);

async fn the_runbook_an_alert_names_comes_first(app: TestApp) {
    import_dir(&store(&app), &corpus(), None, "runbooks", false)
        .await
        .unwrap();
    let team_runbook = "https://wiki.example.com/shop/checkout-pods";
    let response = app
        .client
        .post(app.url("/v1/kb/docs"))
        .json(&json!({"title": "Checkout pods", "url": team_runbook,
                      "content": "# Checkout pods\n\n## Restart\n\nScale the checkout deployment to zero and back.\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let alert = |runbook_url: Option<&str>, pod: &str| {
        let mut annotations = json!({"summary": "Pod is crash looping."});
        if let Some(url) = runbook_url {
            annotations["runbook_url"] = json!(url);
        }
        json!({
            "version": "4", "receiver": "opscase", "status": "firing",
            "groupKey": "{}:{alertname=\"KubePodCrashLooping\"}", "truncatedAlerts": 0,
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [{"status": "firing",
                        "labels": {"alertname": CRASH_LOOP, "service": format!("checkout-{pod}"),
                                   "pod": pod, "severity": "warning", "tenant": "t-001"},
                        "annotations": annotations,
                        "startsAt": "2026-12-02T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                        "fingerprint": format!("crash-{pod}")}],
        })
    };
    let mut cases = Vec::new();
    // kube-prometheus' runbook_url names the runbooks site's page of an imported path; here one
    // whose words would not come first, and one that only ends like a page's name.
    let upstream = "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodnotready";
    let lookalike = "https://runbooks.example.com/runbooks/kubernetes/notkubepodnotready";
    for (url, pod) in [
        (Some(team_runbook), "a"),
        (None, "b"),
        (Some(upstream), "c"),
        (Some(lookalike), "d"),
    ] {
        let response = app
            .client
            .post(app.url("/v1/signals/alertmanager"))
            .json(&alert(url, pod))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let taken: Value = response.json().await.unwrap();
        assert_eq!(taken["items"][0]["outcome"], "opened", "{taken:#}");
        cases.push(taken["items"][0]["case_id"].as_str().unwrap().to_string());
    }

    let (_, named) = app
        .get_json(&format!("/v1/cases/{}/related", cases[0]))
        .await;
    let runbooks = named["runbooks"].as_array().unwrap();
    assert_eq!(runbooks[0]["url"], team_runbook, "{named:#}");
    assert_eq!(runbooks[0]["matched_by"], "runbook_url");
    assert_eq!(runbooks[0]["heading_path"], "Checkout pods › Restart");
    assert_eq!(runbooks[1]["title"], CRASH_LOOP);
    assert!(runbooks[1..].iter().all(|r| r["url"] != team_runbook));

    let (_, site) = app
        .get_json(&format!("/v1/cases/{}/related", cases[2]))
        .await;
    assert_eq!(
        site["runbooks"][0]["url"], "kubernetes/KubePodNotReady.md",
        "{site:#}"
    );
    assert_eq!(site["runbooks"][0]["matched_by"], "runbook_url");
    assert_eq!(site["runbooks"][1]["title"], CRASH_LOOP);
    let (_, lookalike) = app
        .get_json(&format!("/v1/cases/{}/related", cases[3]))
        .await;
    assert_eq!(
        lookalike["runbooks"][0]["title"], CRASH_LOOP,
        "{lookalike:#}"
    );
    assert!(lookalike["runbooks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["matched_by"] == "search"));

    // Without the annotation, the search's order.
    let (_, unnamed) = app
        .get_json(&format!("/v1/cases/{}/related", cases[1]))
        .await;
    assert_eq!(unnamed["runbooks"][0]["title"], CRASH_LOOP, "{unnamed:#}");
    assert!(unnamed["runbooks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["matched_by"] == "search"));
}
on_both_backends!(the_runbook_an_alert_names_comes_first);
