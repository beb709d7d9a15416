//! Clients that send a request head and then trickle (or withhold) the body: they hold a
//! `server.max_in_flight` slot only until `server.body_read_timeout_s`, are answered 408 on a
//! connection the server then closes, and never starve `/livez` and `/readyz`.

use opscase::Config;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{eventually, TestApp, ADMIN_KEY};
use crate::on_both_backends;

const SLOTS: usize = 4;

fn few_slots_and_a_short_body_timeout(config: &mut Config) {
    config.server.max_in_flight = SLOTS;
    config.server.body_read_timeout_s = 6.0;
}

on_both_backends!(
    slow_bodies_get_408_and_free_their_slots_and_health_is_never_refused,
    crate::slow_clients::few_slots_and_a_short_body_timeout
);
async fn slow_bodies_get_408_and_free_their_slots_and_health_is_never_refused(app: TestApp) {
    let addr = app.base.strip_prefix("http://").unwrap().to_string();
    let work = async || app.get_json("/v1/adapters").await.0;
    let mut slow: Vec<TcpStream> = Vec::new();
    eventually("slow requests holding every slot", 30, async || {
        // One that came in while a probe held a slot was refused at once: it holds nothing.
        slow.retain(|stream| !answered(stream));
        while slow.len() < SLOTS {
            slow.push(send_head_and_part_of_the_body(&addr).await);
        }
        work().await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;

    let (status, live) = app.get_json("/livez").await;
    assert_eq!(status, StatusCode::OK, "{live}");
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(
        work().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "the probes were answered while every slot was held"
    );

    eventually("the body-read timeout freeing the slots", 60, async || {
        work().await == StatusCode::OK
    })
    .await;
    for (index, mut stream) in slow.into_iter().enumerate() {
        let mut answer = Vec::new();
        // read_to_end returns only once the server closed the connection.
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            stream.read_to_end(&mut answer),
        )
        .await
        .unwrap_or_else(|_| panic!("slow client {index}: the connection stayed open"))
        .unwrap();
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 408"), "{index}: {answer}");
        assert!(
            answer.contains("content-type: application/problem+json"),
            "{answer}"
        );
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(
            answer.contains("urn:opscase:problem:body-timeout"),
            "{answer}"
        );
    }
    let (_, cases) = app.get_json("/v1/cases").await;
    assert_eq!(cases["items"], serde_json::json!([]), "nothing was opened");
}

/// `POST /v1/cases` with a `Content-Length`, and only the first bytes of the body: the rest
/// never comes.
async fn send_head_and_part_of_the_body(addr: &str) -> TcpStream {
    let body = br#"{"title": "sent slowly", "tenant": "t-001"}"#;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/cases HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..8]).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Whether the server has answered (or closed) this connection already.
fn answered(stream: &TcpStream) -> bool {
    !matches!(
        stream.try_read(&mut [0u8; 1]),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock
    )
}
