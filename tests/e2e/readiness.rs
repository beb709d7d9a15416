//! `/readyz` tells the truth about the database; `/livez` does not depend on it.

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};

use crate::helpers::{postgres_admin_url, Backend, TestApp, TestDatabase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_postgres_goes_away_and_livez_stays_200() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let app = TestApp::start(database.config()).await;
    assert_eq!(app.get_json("/readyz").await.0, StatusCode::OK);

    let mut admin = PgConnection::connect(&postgres_admin_url()).await.unwrap();
    let name = database.postgres_name.clone().unwrap();
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await
        .unwrap();

    let (status, problem): (StatusCode, Value) = app.get_json("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["type"], "urn:opscase:problem:not-ready");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("database (postgres)"),
        "{problem}"
    );
    assert_eq!(app.get_json("/livez").await.0, StatusCode::OK);

    // A write while the database is gone is refused as a problem, without leaking SQL text.
    let response = app
        .client
        .post(app.url("/v1/cases"))
        .json(&serde_json::json!({"title": "x"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error());
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        !detail.contains("SELECT") && !detail.contains("INSERT") && !detail.contains(&name),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_is_a_503_problem_and_rolls_back() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let mut config = database.config();
    config.server.request_timeout_s = 0.5;
    let app = TestApp::start(config).await;
    let case = app.open_case("t-001").await;

    // Another session holds the case's row lock, so the transition waits past the timeout.
    let mut blocker = PgConnection::connect(&database.url()).await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM ops_case WHERE id = $1 FOR UPDATE")
        .bind(case)
        .execute(&mut blocker)
        .await
        .unwrap();
    let response = app
        .transition(case, serde_json::json!({"event": "start_analysis"}))
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.json::<Value>().await.unwrap()["type"],
        "urn:opscase:problem:timeout"
    );
    blocker.execute("ROLLBACK").await.unwrap();

    assert_eq!(
        app.case(case).await["version"],
        1,
        "the abandoned transition left nothing behind"
    );
    assert_eq!(app.timeline(case).await.len(), 1);
    let retried = app
        .transition(case, serde_json::json!({"event": "start_analysis"}))
        .await;
    assert_eq!(
        retried.status(),
        StatusCode::OK,
        "the case is not left locked"
    );
    database.drop_database().await;
}
