//! A store that cannot be used is a 503 the client may retry (`Retry-After`, type
//! `store-unavailable`), not a 500; when it is back, the service answers again and nothing
//! was lost or half-written.

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

use crate::helpers::{eventually, postgres_admin_url, Backend, TestApp, TestDatabase};

const STORE_UNAVAILABLE: &str = "urn:opscase:problem:store-unavailable";

/// A 503 store-unavailable problem with a `Retry-After` of a few seconds, leaking nothing.
async fn assert_store_unavailable(what: &str, response: Response, secret: &str) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{what}: {retry_after}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], STORE_UNAVAILABLE, "{what}: {problem}");
    assert_eq!(problem["status"], 503, "{what}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        !detail.contains(secret) && !detail.contains("SELECT") && !detail.contains("INSERT"),
        "{what}: {detail}"
    );
}

async fn admin_execute(sql: &str) {
    let mut admin = PgConnection::connect(&postgres_admin_url()).await.unwrap();
    admin.execute(sql).await.unwrap();
}

/// End every session of database `name` except the caller's.
async fn terminate_sessions(name: &str) {
    admin_execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .await;
}

fn open_body() -> Value {
    json!({"title": "opened during the outage", "tenant": "t-001"})
}

async fn open_with_key(app: &TestApp, key: &str) -> Response {
    app.client
        .post(app.url("/v1/cases"))
        .header("Idempotency-Key", key)
        .json(&open_body())
        .send()
        .await
        .unwrap()
}

/// After the outage: the case is as it was, the refused open left no idempotency record (the
/// same key opens a case now, fresh), and transitions work again.
async fn assert_nothing_lost(app: &TestApp, case: uuid::Uuid, key: &str) {
    let before = app.case(case).await;
    assert_eq!(before["version"], 1);
    assert_eq!(app.timeline(case).await.len(), 1);
    let opened = open_with_key(app, key).await;
    assert_eq!(opened.status(), StatusCode::CREATED);
    assert!(opened.headers().get("idempotent-replayed").is_none());
    app.advance(case, json!({"event": "start_analysis"})).await;
    let (_, cases) = app.get_json("/v1/cases").await;
    assert_eq!(cases["items"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_connections_is_a_503_with_retry_after_and_nothing_is_lost() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let name = database.postgres_name.clone().unwrap();
    let app = TestApp::start(database.config()).await;
    let case = app.open_case("t-001").await;

    // The database goes away: its sessions are ended and new ones refused (a FATAL error).
    admin_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    terminate_sessions(&name).await;

    let read = app.client.get(app.url(&format!("/v1/cases/{case}")));
    assert_store_unavailable("read", read.send().await.unwrap(), &name).await;
    assert_store_unavailable("open", open_with_key(&app, "k-outage").await, &name).await;
    let transition = app
        .transition(case, json!({"event": "start_analysis"}))
        .await;
    assert_store_unavailable("transition", transition, &name).await;
    assert_eq!(app.get_json("/livez").await.0, StatusCode::OK);
    assert_eq!(
        app.get_json("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    admin_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    eventually("the service answers again", 30, async || {
        app.get_json(&format!("/v1/cases/{case}")).await.0 == StatusCode::OK
    })
    .await;
    assert_nothing_lost(&app, case, "k-outage").await;
    drop(app);
    database.drop_database().await;
}

/// `url` with its user replaced by `user` (no password: the test server trusts local users).
fn url_as(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host_and_path = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    format!("{scheme}://{user}@{host_and_path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_out_of_connections_is_a_503_once_the_pool_gives_up() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let name = database.postgres_name.clone().unwrap();
    // A connection limit binds only roles that are not superusers: the service gets one.
    let role = format!("{name}_app");
    admin_execute(&format!("CREATE ROLE {role} LOGIN")).await;
    admin_execute(&format!("ALTER DATABASE {name} OWNER TO {role}")).await;
    let mut config = database.config();
    config.database.url = Some(url_as(&database.url(), &role));
    // sqlx retries "too many connections" until the pool's timeout: keep the test short.
    config.database.pool_timeout_s = 1.0;
    let app = TestApp::start(config).await;
    let case = app.open_case("t-001").await;

    admin_execute(&format!("ALTER DATABASE {name} CONNECTION LIMIT 0")).await;
    terminate_sessions(&name).await;
    let read = app.client.get(app.url(&format!("/v1/cases/{case}")));
    assert_store_unavailable("read", read.send().await.unwrap(), &name).await;
    assert_store_unavailable("open", open_with_key(&app, "k-full").await, &name).await;

    admin_execute(&format!("ALTER DATABASE {name} CONNECTION LIMIT -1")).await;
    eventually("the service answers again", 30, async || {
        app.get_json(&format!("/v1/cases/{case}")).await.0 == StatusCode::OK
    })
    .await;
    assert_nothing_lost(&app, case, "k-full").await;
    drop(app);
    database.drop_database().await;
    admin_execute(&format!("DROP ROLE IF EXISTS {role}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_is_a_503_for_writes_and_then_they_go_on() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let app = TestApp::start(database.config()).await;
    let case = app.open_case("t-001").await;

    // Another process takes the database's write lock and keeps it past the store's busy
    // timeout (as `sqlite3 opscase.db` with an open transaction would). Reads go on (WAL).
    let mut holder = SqliteConnection::connect(&database.url()).await.unwrap();
    holder.execute("BEGIN EXCLUSIVE").await.unwrap();
    assert_eq!(
        app.get_json(&format!("/v1/cases/{case}")).await.0,
        StatusCode::OK
    );
    assert_store_unavailable("open", open_with_key(&app, "k-locked").await, "opscase.db").await;
    // Metric ingest has an error type of its own (the verifier's); the distinction holds.
    let points = json!({"points": [{"tenant": "t-001", "resource": "checkout",
        "metric": "p95_ms", "bucket": "2026-11-21T10:00:00Z", "p95": 180.0}]});
    let ingest = app
        .client
        .post(app.url("/v1/metrics/1m"))
        .json(&points)
        .send()
        .await
        .unwrap();
    assert_store_unavailable("ingest", ingest, "opscase.db").await;

    holder.execute("ROLLBACK").await.unwrap();
    let ingest = app
        .client
        .post(app.url("/v1/metrics/1m"))
        .json(&points)
        .send()
        .await
        .unwrap();
    assert_eq!(ingest.status(), StatusCode::OK);
    assert_nothing_lost(&app, case, "k-locked").await;
}
