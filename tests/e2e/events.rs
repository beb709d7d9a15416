//! `GET /v1/cases/{id}/events` and `GET /v1/events`: timelines as Server-Sent Events, live,
//! resumable from `Last-Event-ID`, scoped like the timeline route.

use std::time::Duration;

use orchestrator::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{client_with, create_key, TestApp};
use crate::on_both_backends;

/// An open event stream, read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(app: &TestApp, case: Uuid, last_event_id: Option<&str>) -> Self {
        let path = format!("/v1/cases/{case}/events");
        Self::open_path(&app.client, &app.url(&path), last_event_id).await
    }

    async fn open_path(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's `id` and its data (the timeline row), skipping keep-alive comments.
    /// A stream that sends nothing for 30 s fails the test rather than hanging it.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(|value| value.trim_start().to_string())
                };
                let (Some(id), Some(data)) = (field("id:"), field("data:")) else {
                    continue; // a comment
                };
                assert_eq!(field("event:").as_deref(), Some("timeline"), "{block}");
                return (id, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

async fn a_case_s_timeline_streams_live_and_resumes(app: TestApp) {
    let case = app.open_case("t-events").await;
    app.advance(
        case,
        json!({"event": "start_analysis", "reason": "looking"}),
    )
    .await;

    // From the start: every row so far, each with its row id as the event id.
    let mut events = Events::open(&app, case, None).await;
    let (open_id, open) = events.next().await;
    assert_eq!(open["event"], "open");
    assert_eq!(open_id, open["id"].to_string());
    let (_, started) = events.next().await;
    assert_eq!(
        (started["event"].as_str(), started["to_status"].as_str()),
        (Some("start_analysis"), Some("ANALYZING"))
    );
    assert_eq!(started["reason"], "looking");

    // Live: a row committed while the client listens arrives on the open stream.
    app.advance(case, json!({"event": "cancel", "reason": "false alarm"}))
        .await;
    let (cancel_id, cancelled) = events.next().await;
    assert_eq!(
        (cancelled["event"].as_str(), cancelled["to_status"].as_str()),
        (Some("cancel"), Some("CLOSED"))
    );

    // A reconnect with Last-Event-ID gets what came after it, nothing before, nothing twice.
    let mut resumed = Events::open(&app, case, Some(&open_id)).await;
    assert_eq!(resumed.next().await.1["event"], "start_analysis");
    let (id, row) = resumed.next().await;
    assert_eq!((id, row["event"].as_str()), (cancel_id, Some("cancel")));
}
on_both_backends!(a_case_s_timeline_streams_live_and_resumes);

async fn the_stream_is_scoped_and_checks_its_input(app: TestApp) {
    let case = app.open_case("t-events").await;
    let other = client_with(
        &create_key(
            &app.orchestrator,
            "elsewhere",
            &[Role::Viewer],
            Some("t-other"),
        )
        .await,
    );
    let path = format!("/v1/cases/{case}/events");
    let status = other.get(app.url(&path)).send().await.unwrap().status();
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's case");
    let status = reqwest::Client::new()
        .get(app.url(&path))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let response = app
        .client
        .get(app.url(&path))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["field"], "Last-Event-ID");

    let status = app
        .client
        .get(app.url(&format!("/v1/cases/{}/events", Uuid::now_v7())))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
}
on_both_backends!(the_stream_is_scoped_and_checks_its_input);

/// `GET /v1/events`: every case's rows from the moment the stream opens, in order, a scoped key's
/// limited to its tenant, resumable from any event's id.
async fn every_case_s_rows_stream_scoped_and_resume(app: TestApp) {
    app.open_case("t-all").await; // before the streams open: not sent
    let scoped = client_with(
        &create_key(
            &app.orchestrator,
            "t-all viewer",
            &[Role::Viewer],
            Some("t-all"),
        )
        .await,
    );
    let url = app.url("/v1/events");
    let mut all = Events::open_path(&app.client, &url, None).await;
    let mut mine = Events::open_path(&scoped, &url, None).await;

    let elsewhere = app.open_case("t-elsewhere").await;
    let ours = app.open_case("t-all").await;
    app.advance(ours, json!({"event": "start_analysis"})).await;

    let (first_id, first) = all.next().await;
    assert_eq!(
        (first["case_id"].as_str(), first["event"].as_str()),
        (Some(&*elsewhere.to_string()), Some("open"))
    );
    let (second_id, second) = all.next().await;
    assert_eq!(
        (second["case_id"].as_str(), second["event"].as_str()),
        (Some(&*ours.to_string()), Some("open"))
    );
    let (third_id, third) = all.next().await;
    assert_eq!(
        (third["case_id"].as_str(), third["to_status"].as_str()),
        (Some(&*ours.to_string()), Some("ANALYZING"))
    );

    // The tenant's key never sees the other tenant's case, which was written first.
    let (id, row) = mine.next().await;
    assert_eq!(
        (id.as_str(), row["case_id"].as_str()),
        (second_id.as_str(), Some(&*ours.to_string()))
    );
    assert_eq!(mine.next().await.0, third_id);

    let mut resumed = Events::open_path(&app.client, &url, Some(&first_id)).await;
    assert_eq!(resumed.next().await.0, second_id);
    assert_eq!(resumed.next().await.0, third_id);

    let response = app
        .client
        .get(&url)
        .header("Last-Event-ID", "-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}
on_both_backends!(every_case_s_rows_stream_scoped_and_resume);

/// `opscase serve` stops on its signal even while a client follows a case: the stream, which
/// never ends by itself, is cut once the request timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_does_not_hold_the_shutdown() {
    let database = crate::helpers::TestDatabase::create(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    let mut config = database.config();
    config.server.request_timeout_s = 2.0;
    config.workers.command_wait_s = 1;
    let application = opscase::Application::build(&config).await.unwrap();
    let base = format!("http://{}", application.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    let client = client_with(crate::helpers::ADMIN_KEY);
    let case: Value = client
        .post(format!("{base}/v1/cases"))
        .json(&json!({"title": "followed"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut stream = client
        .get(format!(
            "{base}/v1/cases/{}/events",
            case["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.chunk().await.unwrap().is_some(), "the open row");

    stop.send(()).unwrap();
    // Before the drain was bounded this never returned; 60 s only keeps a regression from
    // hanging the suite.
    let finished = tokio::time::timeout(Duration::from_secs(60), server).await;
    assert!(finished.is_ok(), "the server still runs with a stream open");
    drop(stream);
}

/// The server process's resident memory, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

/// Reads `GET /v1/events` from the start until the event of row `last`; the bytes read.
async fn read_every_event(client: &reqwest::Client, base: &str, last: i64) -> usize {
    let mut stream = client
        .get(format!("{base}/v1/events"))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    let wanted = format!("id: {last}\n");
    let (mut received, mut tail) = (0, String::new());
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .expect("events within 30 s")
            .unwrap()
            .expect("the stream stays open");
        received += chunk.len();
        tail.push_str(&String::from_utf8_lossy(&chunk));
        if tail.contains(&wanted) {
            return received;
        }
        // What a line split across two chunks needs, no more.
        tail.drain(..tail.len().saturating_sub(64));
    }
}

/// A client that opens `GET /v1/events` from the start and then reads nothing does not make
/// the server hold what it has not sent: with ~30 MB of rows to send, the server's memory grows
/// by the stream's page of rows (and the socket's buffers, which are the kernel's), not by the
/// backlog. A client that reads gets all of it first, so the rows were there to be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_the_server_s_memory() {
    use tokio::io::AsyncWriteExt;

    let database = crate::helpers::TestDatabase::create(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    // Thousands of writes in a few seconds: no per-key rate limit.
    let config = database.dir.path().join("opscase.toml");
    std::fs::write(&config, "[auth]\nrate_limit_per_second = 0\n").unwrap();
    let served =
        crate::restart::serve_with(&database, Some(crate::helpers::ADMIN_KEY), Some(&config));
    let client = client_with(crate::helpers::ADMIN_KEY);
    let base = served.base.clone();

    // 3,000 rows of ~10 KB (a reason and meta the size of a log excerpt): 1,500 cases, each
    // moved twice, four at a time.
    let excerpt = "x".repeat(10 * 1024);
    let write_cases = |count: usize| {
        let (client, base, excerpt) = (client.clone(), base.clone(), excerpt.clone());
        async move {
            let mut last = 0;
            for _ in 0..count {
                let case: Value = client
                    .post(format!("{base}/v1/cases"))
                    .json(&json!({"title": "noisy"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = case["id"].as_str().unwrap();
                for event in ["start_analysis", "cancel"] {
                    let response = client
                        .patch(format!("{base}/v1/cases/{id}/transition"))
                        .header("Idempotency-Key", Uuid::new_v4().to_string())
                        .json(&json!({"event": event, "reason": "r", "meta": {"excerpt": excerpt}}))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    assert_eq!(status, StatusCode::OK, "{}", response.text().await.unwrap());
                }
                let timeline: Value = client
                    .get(format!("{base}/v1/cases/{id}/timeline"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                last = timeline["items"][2]["id"].as_i64().unwrap();
            }
            last
        }
    };
    let lasts = futures::future::join_all((0..4).map(|_| write_cases(375))).await;
    let last = lasts.into_iter().max().unwrap();

    // A reader gets every row: the backlog is real. It also warms the server's allocator.
    let received = read_every_event(&client, &base, last).await;
    assert!(received > 30_000_000, "{received} bytes to a reader");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = resident_bytes(served.pid());

    // The slow client asks for the same and never reads a byte.
    let address = base.strip_prefix("http://").unwrap();
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Last-Event-ID: 0\r\nAccept: text/event-stream\r\n\r\n",
        crate::helpers::ADMIN_KEY
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    // As long as the stream keeps trying (it is never done), measured several times.
    let mut most = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        most = most.max(resident_bytes(served.pid()).saturating_sub(before));
    }
    assert!(
        most < 12 * 1024 * 1024,
        "the server grew by {most} bytes for a client that read nothing of {received}"
    );
    // The server still serves.
    let status = client
        .get(format!("{base}/v1/me"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    drop(slow);
}
