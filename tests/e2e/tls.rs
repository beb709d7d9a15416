//! HTTPS: `server.tls_cert` and `server.tls_key` put the same API behind rustls, with a
//! certificate the test makes itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use opscase::{Application, Config};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Client, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

use crate::helpers::{Backend, TestApp, TestDatabase, ADMIN_KEY};

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
struct Identity {
    cert_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn write_identity(dir: &Path) -> Identity {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = generated.cert.pem();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    Identity {
        cert_pem,
        cert,
        key,
    }
}

fn tls_config(database: &TestDatabase, identity: &Identity) -> Config {
    let mut config = database.config();
    config.server.tls_cert = Some(identity.cert.clone());
    config.server.tls_key = Some(identity.key.clone());
    config
}

/// A client that trusts only `identity`, sends `key`, and reaches `localhost` at `addr`.
fn https_client(identity: &Identity, key: &str, addr: SocketAddr) -> Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(identity.cert_pem.as_bytes()).unwrap())
        // The certificate names localhost; pinning it avoids trying ::1 first.
        .resolve("localhost", addr)
        .default_headers(headers)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `TestApp::base` says http://127.0.0.1:PORT; the certificate is for https://localhost.
fn port_of(app: &TestApp) -> u16 {
    app.base.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_livez_and_authenticated_requests() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let identity = write_identity(database.dir.path());
    let app = TestApp::start(tls_config(&database, &identity)).await;
    let port = port_of(&app);
    let client = https_client(&identity, ADMIN_KEY, ([127, 0, 0, 1], port).into());

    let livez = client
        .get(format!("https://localhost:{port}/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(livez.status(), StatusCode::OK);
    assert_eq!(livez.version(), reqwest::Version::HTTP_11);

    let cases = client
        .get(format!("https://localhost:{port}/v1/cases"))
        .send()
        .await
        .unwrap();
    assert_eq!(cases.status(), StatusCode::OK);
    let body: Value = cases.json().await.unwrap();
    assert!(body["items"].is_array(), "{body}");

    // The key still matters over TLS.
    let anonymous = https_client(&identity, "osk_not_a_key", ([127, 0, 0, 1], port).into())
        .get(format!("https://localhost:{port}/v1/cases"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_https_port_fails() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let identity = write_identity(database.dir.path());
    let app = TestApp::start(tls_config(&database, &identity)).await;

    let plain = app.client.get(app.url("/livez")).send().await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    // The failed attempt does not disturb HTTPS.
    let port = port_of(&app);
    let livez = https_client(&identity, ADMIN_KEY, ([127, 0, 0, 1], port).into())
        .get(format!("https://localhost:{port}/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(livez.status(), StatusCode::OK);
}

/// A raw TLS connection offering h2 and http/1.1, trusting only `identity`.
async fn tls_connect(
    addr: SocketAddr,
    identity: &Identity,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_request_in_flight_at_shutdown_is_answered_then_the_store_closes() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let identity = write_identity(database.dir.path());
    let mut config = tls_config(&database, &identity);
    // One slot: while the slow request holds it every other request (but health) is a 503,
    // which tells the test that the slow one has reached the router.
    config.server.max_in_flight = 1;
    // This test is about shutdown, not slow bodies: the body may take its time.
    config.server.body_read_timeout_s = 25.0;
    let app = Application::build(&config).await.unwrap();
    assert!(app.serves_tls());
    let addr = app.local_addr();
    let orchestrator = app.orchestrator();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    let mut slow = tls_connect(addr, &identity).await;
    assert_eq!(slow.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let body = br#"{"title": "certificate rotation", "tenant": "t-001"}"#;
    let head = format!(
        "POST /v1/cases HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    slow.flush().await.unwrap();

    let probe = https_client(&identity, ADMIN_KEY, addr);
    let mut busy = false;
    for _ in 0..200 {
        let status = probe
            .get(format!("https://localhost:{}/v1/adapters", addr.port()))
            .send()
            .await
            .unwrap()
            .status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(busy, "the slow request never reached the router");
    drop(probe);

    stop.send(()).unwrap();
    let mut refused = false;
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused, "still accepting connections after shutdown began");

    slow.write_all(&body[10..]).await.unwrap();
    slow.flush().await.unwrap();
    let mut response = Vec::new();
    // The bytes read before any error are kept; an abrupt close after the response is fine.
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut response))
        .await
        .expect("the in-flight request was answered");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");

    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once the request is answered")
        .unwrap()
        .unwrap();
    assert!(
        orchestrator.store().check_ready().await.is_err(),
        "the store is closed after serving stops"
    );
}

/// `opscase serve` as a child process, killed if the test fails before stopping it.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn opscase_serve(dir: &Path, cert: &Path, key: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_opscase"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env_remove("OPSCASE_DATABASE_URL")
        .env_remove("OPSCASE_TLS_CERT")
        .env_remove("OPSCASE_TLS_KEY")
        .env("OPSCASE_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "info")
        .current_dir(dir);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_tls_flags_reports_an_https_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let identity = write_identity(dir.path());
    let mut child = Serving(
        opscase_serve(dir.path(), &identity.cert, &identity.key)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("opscase starts"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("opscase printed its ready line")
            .unwrap();
        if let Ok(entry) = serde_json::from_str::<Value>(&line) {
            if entry["message"] == "opscase is ready" {
                break entry["address"].as_str().unwrap().to_string();
            }
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    let addr: SocketAddr = address
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("{address} is not an https:// address"))
        .parse()
        .unwrap();

    let livez = https_client(&identity, ADMIN_KEY, addr)
        .get(format!("https://localhost:{}/livez", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(livez.status(), StatusCode::OK);

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM is a clean shutdown, got {status}"
    );
}

#[tokio::test]
async fn a_missing_tls_key_file_fails_start_up_naming_the_setting_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let identity = write_identity(dir.path());
    let missing = dir.path().join("missing.key");
    let output = opscase_serve(dir.path(), &identity.cert, &missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.tls_key (OPSCASE_TLS_KEY)")
            && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    assert!(
        !dir.path().join("opscase.db").exists(),
        "a bad TLS setting stops start-up before the database is touched"
    );
}
