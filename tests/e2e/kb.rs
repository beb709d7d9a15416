//! The Librarian: the shared runbooks corpus imported (chunks, heading paths, idempotent
//! re-import, an edited page, prune) and searched over HTTP on both backends.

use std::path::{Path, PathBuf};

use librarian::{import_dir, KbStore, SearchFilter};
use orchestrator::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{client_with, create_key, Backend, TestApp, TestDatabase};
use crate::on_both_backends;

/// The prometheus-operator runbooks, one page per kube-prometheus alert.
fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/runbooks")
}

/// The corpus copied to a temp dir, to be edited.
fn corpus_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&corpus(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn store(app: &TestApp) -> KbStore {
    KbStore::new(app.orchestrator.store().pool().clone())
}

/// The corpus' Markdown pages that are not index pages.
fn page_count() -> usize {
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if p.is_dir() {
                    count(&p)
                } else {
                    usize::from(name.ends_with(".md") && name != "_index.md")
                }
            })
            .sum()
    }
    count(&corpus())
}

async fn the_runbooks_import_idempotently_and_prune(app: TestApp) {
    let dir = corpus_copy();
    let store = store(&app);
    let report = import_dir(&store, dir.path(), None, "runbooks", false)
        .await
        .unwrap();
    let pages = page_count();
    assert_eq!(report.created, pages, "{report:?}");
    let (docs, chunks) = store.counts().await.unwrap();
    assert_eq!(docs as usize, pages);
    assert_eq!(chunks as usize, report.chunks_written);
    assert!(
        chunks as usize >= 4 * pages,
        "{chunks} chunks for {pages} pages"
    );

    // A page's chunks follow its headings.
    let id = librarian::store::doc_id(None, "runbooks", "kubernetes/KubePodCrashLooping.md");
    let doc = store.get(&id).await.unwrap().expect("imported");
    assert_eq!(doc.doc.title, "KubePodCrashLooping");
    assert_eq!(doc.doc.url, "kubernetes/KubePodCrashLooping.md");
    assert_eq!(doc.doc.metadata["title"], "Kube Pod Crash Looping");
    let paths: Vec<_> = doc.chunks.iter().map(|c| c.heading_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "KubePodCrashLooping › Meaning",
            "KubePodCrashLooping › Impact",
            "KubePodCrashLooping › Diagnosis",
            "KubePodCrashLooping › Mitigation",
        ]
    );

    // Importing again changes nothing.
    let again = import_dir(&store, dir.path(), None, "runbooks", true)
        .await
        .unwrap();
    assert_eq!(
        (again.unchanged, again.created, again.updated, again.pruned),
        (pages, 0, 0, 0)
    );
    assert_eq!(store.counts().await.unwrap(), (docs, chunks));
    let chunks_holding = |term: &'static str| {
        let store = store.clone();
        async move { store.term_counts(&[term.to_string()]).await.unwrap()[0].1 }
    };
    let crash_looping = chunks_holding("kubepodcrashlooping").await;
    assert!(crash_looping >= 4, "{crash_looping}");
    assert_eq!(chunks_holding("zebracorn").await, 0);
    // The empty term counts the chunks themselves, what a term's rarity is measured against.
    assert_eq!(chunks_holding("").await, chunks);
    let other = store
        .get(&librarian::store::doc_id(
            None,
            "runbooks",
            "etcd/etcdNoLeader.md",
        ))
        .await
        .unwrap()
        .unwrap();

    // An edited page replaces its chunks only: one section more.
    let page = dir.path().join("kubernetes/KubePodCrashLooping.md");
    let text = std::fs::read_to_string(&page).unwrap();
    std::fs::write(&page, format!("{text}\n\n## Rollback\n\nUndo the last deploy with kubectl rollout undo (zebracorn).\n")).unwrap();
    let edited = import_dir(&store, dir.path(), None, "runbooks", false)
        .await
        .unwrap();
    assert_eq!((edited.updated, edited.unchanged), (1, pages - 1));
    assert_eq!(edited.chunks_written, 5);
    assert_eq!(store.counts().await.unwrap(), (docs, chunks + 1));
    let doc = store.get(&id).await.unwrap().unwrap();
    assert_eq!(doc.chunks[4].heading_path, "KubePodCrashLooping › Rollback");
    assert_eq!(
        doc.chunks[4].content,
        "Undo the last deploy with kubectl rollout undo (zebracorn)."
    );
    let hits = store
        .search("zebracorn", 3, &SearchFilter::default())
        .await
        .unwrap();
    assert_eq!(hits[0].heading_path, "KubePodCrashLooping › Rollback");
    // The term counts follow: the new chunk holds the title and the new word, once each.
    assert_eq!(chunks_holding("zebracorn").await, 1);
    assert_eq!(
        chunks_holding("kubepodcrashlooping").await,
        crash_looping + 1
    );
    assert_eq!(chunks_holding("").await, chunks + 1);
    let untouched = store.get(&other.doc.id).await.unwrap().unwrap();
    assert_eq!(untouched, other);

    // A deleted page stays without prune and goes with it.
    std::fs::remove_file(&page).unwrap();
    let kept = import_dir(&store, dir.path(), None, "runbooks", false)
        .await
        .unwrap();
    assert_eq!(kept.pruned, 0);
    assert!(store.get(&id).await.unwrap().is_some());
    let pruned = import_dir(&store, dir.path(), None, "runbooks", true)
        .await
        .unwrap();
    assert_eq!(pruned.pruned, 1);
    assert!(store.get(&id).await.unwrap().is_none());
    assert_eq!(store.counts().await.unwrap(), (docs - 1, chunks - 4));
    // Its counts are taken back with it: the word only it held is gone.
    assert_eq!(chunks_holding("zebracorn").await, 0);
    assert_eq!(
        chunks_holding("kubepodcrashlooping").await,
        crash_looping - 4
    );
    assert_eq!(chunks_holding("").await, chunks - 4);
    assert!(store
        .search("zebracorn", 3, &SearchFilter::default())
        .await
        .unwrap()
        .iter()
        .all(|hit| hit.doc_id != id));
}
on_both_backends!(the_runbooks_import_idempotently_and_prune);

/// Alerts as kube-prometheus writes them (name, summary, description), and the runbook each
/// should find first.
const ALERTS: &[(&str, &str)] = &[
    ("KubePodCrashLooping: Pod is crash looping. Pod shop/checkout-7d9f (app) is in waiting state (reason: \"CrashLoopBackOff\").", "KubePodCrashLooping"),
    ("KubePodNotReady: Pod has been in a non-ready state for more than 15 minutes. Pod shop/cart-0 has been in a non-ready state for longer than 15 minutes.", "KubePodNotReady"),
    ("KubeDeploymentReplicasMismatch: Deployment has not matched the expected number of replicas. Deployment shop/checkout has not matched the expected number of replicas for longer than 15 minutes.", "KubeDeploymentReplicasMismatch"),
    ("KubeNodeNotReady: Node is not ready. node-3 has been unready for more than 15 minutes.", "KubeNodeNotReady"),
    ("KubePersistentVolumeFillingUp: PersistentVolume is filling up. The PersistentVolume claimed by data-db-0 in Namespace shop is only 2.5% free.", "KubePersistentVolumeFillingUp"),
    ("NodeFilesystemAlmostOutOfFiles: Filesystem has less than 5% inodes left. Filesystem on /dev/sda1 at node-2:9100 has only 3.2% available inodes left.", "NodeFilesystemAlmostOutOfFiles"),
    ("NodeClockNotSynchronising: Clock not synchronising. Clock at node-1:9100 is not synchronising. Ensure NTP is configured on this host.", "NodeClockNotSynchronising"),
    ("etcdMembersDown: etcd cluster members are down. etcd cluster \"etcd\": members are down (1).", "etcdMembersDown"),
    ("AlertmanagerFailedReload: Reloading an Alertmanager configuration has failed. Configuration has failed to load for monitoring/alertmanager-main-0.", "AlertmanagerFailedReload"),
    ("PrometheusRuleFailures: Prometheus is failing rule evaluations. Prometheus monitoring/prometheus-k8s-0 has failed to evaluate 12 rules in the last 5m.", "PrometheusRuleFailures"),
    ("PrometheusNotConnectedToAlertmanagers: Prometheus is not connected to any Alertmanagers. Prometheus monitoring/prometheus-k8s-0 is not connected to any Alertmanagers.", "PrometheusNotConnectedToAlertmanagers"),
    ("TargetDown: One or more targets are unreachable. 100% of the node-exporter/node-exporter targets in monitoring namespace are down.", "TargetDown"),
    ("Watchdog: An alert that should always be firing to certify that Alertmanager is working properly.", "Watchdog"),
    ("KubeCPUOvercommit: Cluster has overcommitted CPU resource requests. Cluster has overcommitted CPU resource requests for Pods by 1.5 CPU shares and cannot tolerate node failure.", "KubeCPUOvercommit"),
    ("KubeletClientCertificateExpiration: Kubelet client certificate is about to expire. Client certificate for Kubelet on node node-4 expires in 6 days.", "KubeletClientCertificateExpiration"),
    ("KubeHpaMaxedOut: HPA is running at max replicas. HPA shop/checkout has been running at max replicas for longer than 15 minutes.", "KubeHpaMaxedOut"),
    ("PrometheusOperatorReconcileErrors: Errors while reconciling objects. 12% of reconciling operations failed for prometheus controller in monitoring namespace.", "PrometheusOperatorReconcileErrors"),
];

async fn each_alert_finds_its_runbook_first(app: TestApp) {
    let store = store(&app);
    import_dir(&store, &corpus(), None, "runbooks", false)
        .await
        .unwrap();
    let mut misses = Vec::new();
    for (query, runbook) in ALERTS {
        let hits = store
            .search(query, 5, &SearchFilter::default())
            .await
            .unwrap();
        let top: Vec<_> = hits.iter().map(|h| h.title.as_str()).collect();
        if top.first() != Some(runbook) {
            misses.push(format!("{runbook}: {top:?}"));
        }
        assert!(hits.iter().all(|h| h.retrievers == ["lexical"]));
    }
    assert!(misses.is_empty(), "{misses:#?}");

    // Whatever a query holds is words, never syntax and never an error.
    for odd in [
        r#""foo" (bar): 100%"#,
        "NOT AND OR NEAR(a b)",
        "title:x * - ^ {body}",
        "'; DROP TABLE kb_doc; --",
        "&|!<->:*",
        "",
    ] {
        store
            .search(odd, 5, &SearchFilter::default())
            .await
            .unwrap_or_else(|e| panic!("{odd}: {e}"));
    }
    let hits = store
        .search("pod (crash): looping 100%", 1, &SearchFilter::default())
        .await
        .unwrap();
    assert_eq!(hits[0].title, "KubePodCrashLooping");
}
on_both_backends!(each_alert_finds_its_runbook_first);

/// `GET /v1/kb/search` with `client`: the hits.
async fn search_http(app: &TestApp, client: &reqwest::Client, q: &str, k: u32) -> Vec<Value> {
    let response = client
        .get(app.url("/v1/kb/search"))
        .query(&[("q", q), ("k", &k.to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{q}");
    let body: Value = response.json().await.unwrap();
    body["hits"].as_array().unwrap().clone()
}

async fn documents_go_in_and_come_back_over_http(app: TestApp) {
    import_dir(&store(&app), &corpus(), None, "runbooks", false)
        .await
        .unwrap();
    let librarian =
        client_with(&create_key(&app.orchestrator, "lib", &[Role::Librarian], None).await);
    let acme = client_with(
        &create_key(
            &app.orchestrator,
            "acme",
            &[Role::Librarian, Role::Viewer],
            Some("acme"),
        )
        .await,
    );
    let globex = client_with(
        &create_key(&app.orchestrator, "globex", &[Role::Viewer], Some("globex")).await,
    );

    // A tenant's own runbook, searchable as soon as the POST answers.
    let doc = json!({"title": "CheckoutLatencyHigh",
        "content": "---\nowner: payments\n---\n# CheckoutLatencyHigh\n\n## Mitigation\n\nRoll back the checkout deploy; flush the zebracorn cache.\n",
        "url": "https://wiki.example.com/checkout-latency", "metadata": {"team": "payments"}});
    let response = acme
        .post(app.url("/v1/kb/docs"))
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let written: Value = response.json().await.unwrap();
    assert_eq!(
        (written["result"].as_str(), written["chunk_count"].as_u64()),
        (Some("created"), Some(1))
    );
    let id = written["id"].as_str().unwrap().to_string();
    let again = acme
        .post(app.url("/v1/kb/docs"))
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap()["result"], "unchanged");

    let hits = search_http(&app, &acme, "zebracorn cache", 3).await;
    assert_eq!(hits[0]["doc_id"], id.as_str());
    assert_eq!(hits[0]["title"], "CheckoutLatencyHigh");
    assert_eq!(hits[0]["url"], "https://wiki.example.com/checkout-latency");
    assert_eq!(hits[0]["heading_path"], "CheckoutLatencyHigh › Mitigation");
    assert_eq!(hits[0]["chunk_idx"], 0);
    assert_eq!(hits[0]["tenant"], "acme");
    assert_eq!(hits[0]["retrievers"], json!(["lexical"]));
    assert!(hits[0]["score"].as_f64().unwrap() > 0.0);

    // Another tenant never sees it; global runbooks are seen by every tenant.
    let seen = search_http(&app, &globex, "zebracorn cache checkout", 50).await;
    assert!(!seen.is_empty(), "global runbooks mention caches");
    assert!(seen.iter().all(|hit| hit["tenant"].is_null()), "{seen:?}");
    let status = globex
        .get(app.url(&format!("/v1/kb/docs/{id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let hits = search_http(&app, &globex, "KubePodCrashLooping", 1).await;
    assert_eq!(hits[0]["title"], "KubePodCrashLooping");
    assert_eq!(hits[0]["url"], "kubernetes/KubePodCrashLooping.md");
    let listed: Value = globex
        .get(app.url("/v1/kb/docs?limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed["items"].as_array().unwrap();
    assert_eq!(listed.len(), page_count());
    assert!(listed.iter().all(|d| d["tenant"].is_null()));
    let status = acme
        .post(app.url("/v1/kb/docs"))
        .json(&json!({"title": "x", "content": "y", "tenant": "globex"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The document as stored.
    let (status, stored) = app.get_json(&format!("/v1/kb/docs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stored["metadata"],
        json!({"owner": "payments", "team": "payments"})
    );
    assert_eq!(
        stored["chunks"][0]["heading_path"],
        "CheckoutLatencyHigh › Mitigation"
    );
    assert_eq!(stored["chunk_count"], 1);

    // Bad input is a problem naming the field.
    for (body, field) in [
        (json!({"content": "x"}), "title"),
        (json!({"title": " ", "content": "x"}), "title"),
        (json!({"title": "t", "content": "  "}), "content"),
        (
            json!({"title": "t", "content": "x", "metadata": [1]}),
            "metadata",
        ),
        (
            json!({"title": "t", "content": "x", "tenant": "a b"}),
            "tenant",
        ),
    ] {
        let response = librarian
            .post(app.url("/v1/kb/docs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }

    // Odd queries are words: 200, never an error.
    for odd in [
        r#""foo" (bar): 100%"#,
        "a AND NOT b*",
        "NEAR(x y)",
        "-",
        "%",
        "'",
        "\\",
    ] {
        search_http(&app, &app.client, odd, 5).await;
    }
    let status = app
        .client
        .get(app.url("/v1/kb/search?q=x&k=51"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Removed: gone from search; the gauges follow.
    assert_eq!(app.metric("kb_documents").await as usize, page_count() + 1);
    let status = globex
        .delete(app.url(&format!("/v1/kb/docs/{id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer cannot delete");
    let status = acme
        .delete(app.url(&format!("/v1/kb/docs/{id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(search_http(&app, &acme, "zebracorn", 3).await.is_empty());
    assert_eq!(app.metric("kb_documents").await as usize, page_count());
    let (_, chunks) = store(&app).counts().await.unwrap();
    assert_eq!(app.metric("kb_chunks").await as i64, chunks);
    assert!(
        app.metric("kb_search_seconds_count{mode=\"lexical\"}")
            .await
            >= 10.0
    );
}
on_both_backends!(documents_go_in_and_come_back_over_http);

/// `opscase kb import` with the database of `database` (SQLite in its dir, or PostgreSQL).
fn cli_import(database: &TestDatabase, dir: &Path, extra: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_opscase"));
    command
        .args(["kb", "import"])
        .arg(dir)
        .args(extra)
        .arg("--data-dir")
        .arg(database.dir.path())
        .env_remove("OPSCASE_DATABASE_URL");
    if database.backend == Backend::Postgres {
        command.env("OPSCASE_DATABASE_URL", database.url());
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_cli_imports_a_tree_a_running_service_then_serves() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(database) = TestDatabase::create(backend).await else {
            continue;
        };
        let dir = corpus_copy();
        let pages = page_count();
        let out = cli_import(&database, dir.path(), &["--source", "runbooks"]);
        assert!(out.contains(&format!("{pages} created")), "{out}");
        let out = cli_import(&database, dir.path(), &[]);
        assert!(out.contains(&format!("{pages} unchanged")), "{out}");

        std::fs::remove_file(dir.path().join("general/Watchdog.md")).unwrap();
        let out = cli_import(&database, dir.path(), &["--prune"]);
        assert!(out.contains("1 pruned"), "{out}");

        let app = TestApp::start(database.config()).await;
        assert_eq!(app.metric("kb_documents").await as usize, pages - 1);
        let hits = search_http(
            &app,
            &app.client,
            "TargetDown: One or more targets are unreachable.",
            1,
        )
        .await;
        assert_eq!(hits[0]["title"], "TargetDown", "{backend:?}");
        let hits = search_http(&app, &app.client, "Watchdog", 5).await;
        assert!(
            hits.iter().all(|hit| hit["title"] != "Watchdog"),
            "{backend:?}"
        );
        drop(app);
        database.drop_database().await;
    }
}

async fn concurrent_writes_of_one_document_take_turns(app: TestApp) {
    let writes = (0..8).map(|n| {
        let client = app.client.clone();
        let url = app.url("/v1/kb/docs");
        async move {
            let body = json!({"title": "Race", "url": "https://example.com/race",
                "content": format!("# Race\n\n## One\n\nversion {n}\n\n## Two\n\nversion {n}\n")});
            client.post(url).json(&body).send().await.unwrap().status()
        }
    });
    let statuses = futures::future::join_all(writes).await;
    assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");
    let id = librarian::store::doc_id(None, "api", "https://example.com/race");
    let doc = store(&app).get(&id).await.unwrap().unwrap();
    assert_eq!(doc.chunks.len(), 2);
    assert_eq!(
        doc.chunks[0].content, doc.chunks[1].content,
        "one version, whole"
    );
    assert_eq!(store(&app).counts().await.unwrap(), (1, 2));
}
on_both_backends!(concurrent_writes_of_one_document_take_turns);

/// A filter applies after the lexical index ranks: a tenant's only match, below hundreds of
/// better matches of another tenant, is still found (the filtered search widens to every
/// match when the best few left too few), and the other tenant's never are.
async fn a_filter_finds_a_match_below_many_hidden_ones(app: TestApp) {
    let kb = store(&app);
    let now = chrono::Utc::now();
    for n in 0..450 {
        let text = format!("# Wombat burrow {n}\n\nThe wombat burrow {n} is flooded.\n");
        let doc = librarian::DocInput::markdown(
            Some("globex".into()),
            "runbooks",
            &format!("globex/{n}.md"),
            &text,
            "Wombat",
            None,
        );
        kb.upsert(&doc, now).await.unwrap();
    }
    let acme = librarian::DocInput::markdown(
        Some("acme".into()),
        "runbooks",
        "acme/pumps.md",
        "# Pumps\n\nWhen a burrow floods, start the pumps; a wombat can wait.\n",
        "Pumps",
        None,
    );
    kb.upsert(&acme, now).await.unwrap();
    let as_tenant = |tenant: &str| SearchFilter {
        tenant: Some(tenant.into()),
        ..SearchFilter::default()
    };
    let hits = kb
        .search("wombat burrow", 5, &as_tenant("acme"))
        .await
        .unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].url, "acme/pumps.md");
    let hits = kb
        .search("wombat burrow", 5, &as_tenant("initech"))
        .await
        .unwrap();
    assert!(hits.is_empty(), "{hits:?}");
    let hits = kb
        .search("wombat burrow", 500, &SearchFilter::default())
        .await
        .unwrap();
    assert_eq!(hits.len(), 451, "unfiltered, every match");
}
on_both_backends!(a_filter_finds_a_match_below_many_hidden_ones);
