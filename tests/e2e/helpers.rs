//! A real opscase on a random port, on SQLite (a temp dir) or PostgreSQL (a fresh database).

use std::future::Future;
use std::sync::Arc;

use opscase::config::Secret;
use opscase::{Application, Config};
use orchestrator::{NewApiKey, Orchestrator, Role};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::oneshot;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `$name(app)` once on each backend, as `$name::sqlite` and `$name::postgres`; an
/// optional second argument adjusts the configuration (`fn(&mut Config)`).
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        $crate::on_both_backends!($name, |_| {});
    };
    ($name:ident, $configure:expr) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                $crate::helpers::run_with(
                    $crate::helpers::Backend::Sqlite,
                    $configure,
                    super::$name,
                )
                .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                $crate::helpers::run_with(
                    $crate::helpers::Backend::Postgres,
                    $configure,
                    super::$name,
                )
                .await;
            }
        }
    };
}

pub async fn run_with<F, Fut>(backend: Backend, configure: fn(&mut Config), test: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let mut config = database.config();
    configure(&mut config);
    let app = TestApp::start(config).await;
    test(app).await;
    database.drop_database().await;
}

/// For tests that drive a relay themselves: the service does not relay its own outbox.
pub fn without_relay(config: &mut Config) {
    config.bus.relay_in_process = false;
}

/// Where PostgreSQL tests create their databases.
pub fn postgres_admin_url() -> String {
    std::env::var("OPSCASE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of its own for one test: a temp dir for SQLite, a new database on PostgreSQL.
pub struct TestDatabase {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub postgres_name: Option<String>,
}

impl TestDatabase {
    /// `None` (with a visible message) when PostgreSQL is unreachable outside CI; in CI
    /// (`CI=true`) an unreachable PostgreSQL fails the test.
    pub async fn create(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        if backend == Backend::Sqlite {
            return Some(Self {
                backend,
                dir,
                postgres_name: None,
            });
        }
        let admin_url = postgres_admin_url();
        let mut admin = match PgConnection::connect(&admin_url).await {
            Ok(connection) => connection,
            Err(error) => {
                if in_ci() {
                    panic!("PostgreSQL is required in CI but unreachable at {admin_url}: {error}");
                }
                eprintln!("SKIPPED: PostgreSQL unreachable at {admin_url} ({error}); set OPSCASE_TEST_POSTGRES_URL or start it");
                return None;
            }
        };
        let name = format!("opscase_t_{}", Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        Some(Self {
            backend,
            dir,
            postgres_name: Some(name),
        })
    }

    pub fn url(&self) -> String {
        match &self.postgres_name {
            Some(name) => {
                let admin = postgres_admin_url();
                let base = admin
                    .rsplit_once('/')
                    .map_or(admin.as_str(), |(base, _)| base);
                format!("{base}/{name}")
            }
            None => format!("sqlite://{}", self.dir.path().join("opscase.db").display()),
        }
    }

    pub fn config(&self) -> Config {
        let mut config = Config::default();
        config.auth.bootstrap_admin_key = Some(Secret::new(ADMIN_KEY));
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.database.data_dir = self.dir.path().to_path_buf();
        if self.backend == Backend::Postgres {
            config.database.url = Some(self.url());
        }
        config
    }

    pub async fn drop_database(&self) {
        if let Some(name) = &self.postgres_name {
            if let Ok(mut admin) = PgConnection::connect(&postgres_admin_url()).await {
                let _ = admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
            }
        }
    }
}

/// The bootstrap admin key of every test service.
pub const ADMIN_KEY: &str = "osk_test_admin_0123456789abcdef0123456789abcdef";

/// A client that sends `key` on every request.
pub fn client_with(key: &str) -> Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    Client::builder().default_headers(headers).build().unwrap()
}

/// A running service and HTTP clients for it: `client` holds the admin key, `approver` an
/// approver key (four eyes needs a second key to approve what the first one planned).
pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub approver: Client,
    pub orchestrator: Arc<Orchestrator>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestApp {
    pub async fn start(config: Config) -> Self {
        let app = Application::build(&config)
            .await
            .expect("application builds");
        let base = format!("http://{}", app.local_addr());
        let orchestrator = app.orchestrator();
        let (shutdown, stop) = oneshot::channel();
        tokio::spawn(app.run_until(async move {
            let _ = stop.await;
        }));
        let approver =
            client_with(&create_key(&orchestrator, "approver", &[Role::Approver], None).await);
        Self {
            base,
            client: client_with(ADMIN_KEY),
            approver,
            orchestrator,
            shutdown: Some(shutdown),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Open a case in `tenant` and return its id.
    pub async fn open_case(&self, tenant: &str) -> Uuid {
        let response = self
            .client
            .post(self.url("/v1/cases"))
            .json(&serde_json::json!({"title": "p95 spike", "tenant": tenant}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// PATCH a transition with a fresh Idempotency-Key.
    pub async fn transition(&self, case: Uuid, body: Value) -> Response {
        self.transition_with_key(case, &Uuid::new_v4().to_string(), body)
            .await
    }

    /// Gate decisions go out under the approver key, everything else under the admin key.
    pub async fn transition_with_key(&self, case: Uuid, key: &str, body: Value) -> Response {
        let gate = matches!(
            body["event"].as_str(),
            Some("gate_approved" | "gate_rejected")
        );
        let client = if gate { &self.approver } else { &self.client };
        client
            .patch(self.url(&format!("/v1/cases/{case}/transition")))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// PATCH a transition and insist it is accepted; returns the case.
    pub async fn advance(&self, case: Uuid, body: Value) -> Value {
        let response = self.transition(case, body.clone()).await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body} was refused: {answer:#}");
        answer
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn case(&self, case: Uuid) -> Value {
        let (status, body) = self.get_json(&format!("/v1/cases/{case}")).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    pub async fn timeline(&self, case: Uuid) -> Vec<Value> {
        let (status, body) = self
            .get_json(&format!("/v1/cases/{case}/timeline?limit=200"))
            .await;
        assert_eq!(status, StatusCode::OK);
        body["items"].as_array().unwrap().clone()
    }

    /// Topics of the case's outbox rows, in order (read from the database).
    pub async fn outbox(&self, case: Uuid) -> Vec<orchestrator::model::OutboxMessage> {
        self.orchestrator
            .store()
            .outbox_for(&case.to_string())
            .await
            .unwrap()
    }

    /// The whole `/metrics` exposition, scraped with the admin key.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one series (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    /// The case's first timeline row of `event`.
    pub async fn first_row(&self, case: Uuid, event: &str) -> Value {
        self.timeline(case)
            .await
            .into_iter()
            .find(|row| row["event"] == event)
            .unwrap_or_else(|| panic!("no {event} row on case {case}"))
    }

    /// Wait (30 s at most) until the case's timeline holds a row of `event`.
    pub async fn awaits_event(&self, case: Uuid, event: &str) {
        eventually(&format!("case {case} to record {event}"), 30, async || {
            self.timeline_events(case).await.iter().any(|e| e == event)
        })
        .await;
    }

    /// The events on the case's timeline, oldest first.
    pub async fn timeline_events(&self, case: Uuid) -> Vec<String> {
        self.timeline(case)
            .await
            .iter()
            .map(|row| row["event"].as_str().unwrap().to_string())
            .collect()
    }

    /// Walk a new case to `target` along the happy path (WAIT_GATE and beyond carry a plan).
    pub async fn case_in(&self, target: &str) -> Uuid {
        let case = self.open_case("t-001").await;
        for (event, reached) in happy_path() {
            if self.case(case).await["status"] == target {
                break;
            }
            self.advance(case, event).await;
            let _ = reached;
        }
        assert_eq!(self.case(case).await["status"], target);
        case
    }
}

/// A key made directly in the store (its secret returned).
pub async fn create_key(
    orchestrator: &Orchestrator,
    name: &str,
    roles: &[Role],
    tenant: Option<&str>,
) -> String {
    orchestrator
        .create_key(NewApiKey {
            name: name.into(),
            roles: roles.to_vec(),
            tenant: tenant.map(str::to_string),
            expires_at: None,
            created_by: "test".into(),
        })
        .await
        .unwrap()
        .1
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Wait until `check` holds, polling; fail the test naming `what` after `seconds`.
/// Whether this is CI (`CI=true`): a service or tool a test needs must be there, or it fails.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The first of `names` found on `PATH`.
pub fn on_path(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

pub async fn eventually(what: &str, seconds: u64, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within {seconds}s");
}

/// A ChangePlan that passes the schema and the completeness guard.
pub fn valid_plan() -> Value {
    serde_json::json!({
        "title": "canary rollout of checkout",
        "risk_score": 0.2,
        "steps": [{"id": "rollout", "action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "checkout", "container": "checkout", "image": "checkout:1.2.4"}, "timeout_s": 300, "retry": 1}],
        "rollback": {"steps": [{"id": "undo", "action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "checkout", "container": "checkout", "image": "checkout:1.2.3"}, "timeout_s": 300, "retry": 0}]},
        "verify": {"checks": [{"source": "metric_1m", "query": "service=checkout", "threshold": "p95_ms < 300"}], "window_s": 300}
    })
}

/// NEW → CLOSED, each event with what its guard needs.
pub fn happy_path() -> Vec<(Value, &'static str)> {
    use serde_json::json;
    vec![
        (
            json!({"event": "start_analysis", "actor": "analyst@svc"}),
            "ANALYZING",
        ),
        (
            json!({"event": "analysis_done", "actor": "analyst@svc"}),
            "PLANNING",
        ),
        (
            json!({"event": "plan_ready", "actor": "planner@svc", "plan": valid_plan()}),
            "WAIT_GATE",
        ),
        (
            json!({"event": "gate_approved", "actor": "lead@svc", "decision": {"approver": "lead@svc"}}),
            "EXECUTING",
        ),
        (
            json!({"event": "exec_done", "actor": "executor@svc"}),
            "VERIFYING",
        ),
        (
            json!({"event": "verify_pass", "actor": "verifier@svc"}),
            "CLOSED",
        ),
    ]
}
