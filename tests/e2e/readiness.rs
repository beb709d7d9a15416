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
