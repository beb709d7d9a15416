//! The operator console (`/ui`) in a real browser: Debian's headless `chromium`, driven through
//! `chromedriver` over WebDriver (fantoccini), against the service on a random port with its
//! real workers. The page is used as a person would: sign in with a key, open a case, click.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use opscase::Config;
use orchestrator::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{create_key, in_ci, on_path, run_with, Backend, TestApp};

/// A case title that is markup: the console must show it as text.
const MARKUP_TITLE: &str = "<img src=x onerror=alert(1)> checkout errors";

/// A headless chromium of its own (profile in a temp dir), and its chromedriver.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (saying so) when chromium or chromedriver is not installed outside CI; in CI
    /// (`CI=true`) that fails the test.
    async fn start() -> Option<Self> {
        let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
        let driver = on_path(&["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            if in_ci() {
                panic!("chromium and chromedriver are required in CI but not installed");
            }
            eprintln!("SKIPPED: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // A process group of its own, so that a failed test takes the browser down with the
        // driver (killing chromedriver alone leaves chromium running).
        let driver = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,800", "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        // fantoccini's HTTPS support needs rustls' provider chosen (chromedriver is plain HTTP).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut last_error = String::new();
        for _ in 0..100 {
            match ClientBuilder::rustls()
                .expect("a TLS configuration")
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Some(Self {
                        client,
                        driver,
                        _profile: profile,
                    })
                }
                Err(error) => last_error = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no browser session from chromedriver: {last_error}");
    }

    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("{css}: {error}"))
    }

    async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self.element(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap()
    }

    /// Waits (30 s at most) until the element's text contains `wanted`; the page may only get
    /// there by itself (live updates), never by a reload.
    async fn wait_for_text(&self, css: &str, wanted: &str) {
        let mut seen = String::new();
        for _ in 0..300 {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                seen = element.text().await.unwrap_or_default();
                if seen.contains(wanted) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} never showed {wanted:?}; it shows {seen:?}");
    }

    async fn script(&self, source: &str) -> Value {
        self.client.execute(source, vec![]).await.unwrap()
    }

    async fn sign_in(&self, base: &str, key: &str) {
        self.client.goto(&format!("{base}/ui")).await.unwrap();
        self.type_into("#signin-key", key).await;
        self.click("#signin-submit").await;
        self.element("#signout").await;
    }

    async fn open_case(&self, base: &str, case: Uuid) {
        self.client
            .goto(&format!("{base}/ui#/cases/{case}"))
            .await
            .unwrap();
        self.wait_for_text("#case-version", "").await;
    }

    /// What the page recorded of its own errors and CSP violations (the console keeps them in
    /// `window.__errors`).
    async fn errors(&self) -> Value {
        self.script("return window.__errors || [];").await
    }
}

/// Where the console links a trace.
const TRACE_URL: &str = "http://traces.example/trace/{trace_id}";

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(group) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
        }
    }
}

/// The gate holds every plan for a human; timeline rows link to a tracing UI.
fn held_for_a_human(config: &mut Config) {
    config.server.trace_url = Some(TRACE_URL.into());
    let path = config.database.data_dir.join("policy.toml");
    std::fs::write(&path, "human_actions = [\"noop\"]\n").unwrap();
    config.gatekeeper.policy_file = Some(path);
}

/// Where the README's screenshot is written: `docs/console-case.png` when
/// `OPSCASE_UPDATE_SCREENSHOT` is set, else a temp file (so a test run leaves the tree alone).
fn screenshot_path() -> PathBuf {
    if std::env::var_os("OPSCASE_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console-case.png")
    } else {
        std::env::temp_dir().join(format!("opscase-console-{}.png", Uuid::new_v4()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_and_two_approvers_take_a_case_to_closed_in_the_browser() {
    run_with(Backend::Sqlite, held_for_a_human, |app| async move {
        let Some(browser) = Browser::start().await else {
            return;
        };
        the_gate_in_the_browser(&app, &browser).await;
        browser.client.clone().close().await.unwrap();
    })
    .await;
}

async fn the_gate_in_the_browser(app: &TestApp, browser: &Browser) {
    let base = app.base.as_str();
    crate::crash::ingest_healthy_error_rates(&app.client, &app.base).await;
    let requester = create_key(
        &app.orchestrator,
        "oncall",
        &[Role::Operator, Role::Approver],
        None,
    )
    .await;
    let lead = create_key(
        &app.orchestrator,
        "lead",
        &[Role::Operator, Role::Approver],
        None,
    )
    .await;
    let opened: Value = app
        .client
        .post(app.url("/v1/cases"))
        .json(
            &json!({"title": MARKUP_TITLE, "tenant": "t-001", "severity": "high",
                      "labels": {"service": "checkout"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let case: Uuid = opened["id"].as_str().unwrap().parse().unwrap();
    app.advance(case, json!({"event": "start_analysis", "actor": "oncall"}))
        .await;

    // The page itself needs no key; it asks for one.
    let page = reqwest::get(format!("{base}/ui")).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.headers()["x-frame-options"], "DENY");

    // The operator signs in; the list shows the case, its title as text.
    browser.sign_in(base, &requester).await;
    assert!(browser.text("#whoami").await.contains("oncall"));
    let row = format!("#cases tr[data-case-id=\"{case}\"]");
    browser.wait_for_text(&row, MARKUP_TITLE).await;

    // The case page: sent to the planner, then to the gate, which holds it for a human.
    browser.open_case(base, case).await;
    assert_eq!(browser.text("#case-title").await, MARKUP_TITLE);
    browser.wait_for_text("#case-status", "ANALYZING").await;
    browser.click("button[data-command=\"plan\"]").await;
    browser.wait_for_text("#case-status", "WAIT_GATE").await;
    browser.wait_for_text("#plan", "noop").await;
    browser.click("button[data-command=\"gate\"]").await;
    browser.wait_for_text("#timeline", "gate_held").await;

    // Four eyes: the key that asked for the plan may not approve it, and is told why.
    browser.click("button[data-action=\"gate_approved\"]").await;
    browser.wait_for_text("#notice", "four eyes").await;
    assert_eq!(app.case(case).await["status"], "WAIT_GATE");

    // Another approver signs in and approves; the run and the verdict arrive live (the
    // verification is asked for through the API, not the page) up to CLOSED, with no reload.
    browser.click("#signout").await;
    browser.element("#signin-key").await;
    browser.sign_in(base, &lead).await;
    browser.open_case(base, case).await;
    let marker = browser
        .script("window.__sameDocument = true; return true;")
        .await;
    assert_eq!(marker, json!(true));
    browser.wait_for_text("#case-status", "WAIT_GATE").await;
    browser.click("button[data-action=\"gate_approved\"]").await;
    browser.wait_for_text("#case-status", "EXECUTING").await;
    browser.click("button[data-command=\"run\"]").await;
    browser.wait_for_text("#case-status", "VERIFYING").await;
    let verify = app
        .client
        .post(app.url("/v1/verify/run"))
        .json(&json!({"case_id": case}))
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), StatusCode::OK);
    browser.wait_for_text("#case-status", "CLOSED").await;
    browser.wait_for_text("#timeline", "verify_pass").await;
    assert_eq!(
        browser
            .script("return window.__sameDocument === true;")
            .await,
        json!(true),
        "the page was reloaded"
    );

    // The markup title never became markup; nothing broke the policy or threw.
    assert_eq!(
        browser
            .script("return document.querySelectorAll('img[src=\"x\"]').length;")
            .await,
        json!(0)
    );
    assert_eq!(browser.text("#case-title").await, MARKUP_TITLE);
    assert_eq!(browser.errors().await, json!([]));

    // Each row with a trace links to it in the configured tracing UI.
    let linked = browser
        .script("return [...document.querySelectorAll('#timeline a.trace-link')].map(a => a.href);")
        .await;
    let linked: Vec<&str> = linked
        .as_array()
        .unwrap()
        .iter()
        .map(|href| href.as_str().unwrap())
        .collect();
    let traced: Vec<String> = app
        .timeline(case)
        .await
        .iter()
        .filter_map(|row| row["meta"]["trace_id"].as_str())
        .map(|id| TRACE_URL.replace("{trace_id}", id))
        .collect();
    assert!(!traced.is_empty());
    assert_eq!(linked, traced);

    browser
        .script("document.activeElement.blur(); window.scrollTo(0, 0); return true;")
        .await;
    let png = browser.client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshot_path(), png).unwrap();

    // At a phone's width the page still fits: nothing makes the page scroll sideways.
    browser.client.set_window_size(390, 844).await.unwrap();
    let overflow = browser
        .script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
        )
        .await;
    assert_eq!(
        overflow,
        json!(0),
        "the case page scrolls sideways at 390 px"
    );
}

/// Without a browser: every file of the console loads without a key, under the same strict
/// headers, from the binary itself (nothing from elsewhere), and the first load stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_small_self_contained_and_locked_down() {
    run_with(
        Backend::Sqlite,
        |_| {},
        |app| async move {
            let anonymous = reqwest::Client::new();
            let mut first_load = 0;
            for (path, content_type) in [
                ("/ui", "text/html; charset=utf-8"),
                ("/ui/console.js", "text/javascript; charset=utf-8"),
                ("/ui/console.css", "text/css; charset=utf-8"),
            ] {
                let response = anonymous.get(app.url(path)).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::OK, "{path}");
                let headers = response.headers().clone();
                assert_eq!(headers["content-type"], content_type, "{path}");
                let csp = headers["content-security-policy"].to_str().unwrap();
                assert!(
                    csp.starts_with("default-src 'none'; script-src 'self';"),
                    "{path}: {csp}"
                );
                assert!(!csp.contains("unsafe"), "{path}: {csp}");
                assert_eq!(headers["x-frame-options"], "DENY", "{path}");
                assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
                let body = response.text().await.unwrap();
                first_load += body.len();
                // Nothing is fetched from another origin (no CDN, no web fonts).
                for scheme in ["http://", "https://", "//cdn"] {
                    let external = body.match_indices(scheme).any(|(at, _)| {
                        body[..at].ends_with("src=\"") || body[..at].ends_with("href=\"")
                    });
                    assert!(!external, "{path} loads something from {scheme}…");
                }
                if path == "/ui" {
                    assert!(
                        !body.contains("<script>") && !body.contains("style=\""),
                        "inline script or style"
                    );
                }
            }
            assert!(first_load < 200_000, "first load is {first_load} bytes");

            let settings: Value = anonymous
                .get(app.url("/ui/settings.json"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(settings, json!({"trace_url": null}));

            let missing = anonymous.get(app.url("/ui/nope.js")).send().await.unwrap();
            assert_eq!(missing.status(), StatusCode::NOT_FOUND);
            assert_eq!(
                missing.headers()["content-type"],
                "application/problem+json"
            );
        },
    )
    .await;
}
