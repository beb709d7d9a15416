//! A nats-server of the test's own (JetStream, store in a temp dir, random port), so a test
//! can stop and restart the bus without disturbing anything else.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct TestNats {
    pub url: String,
    port: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
    child: Option<Child>,
}

fn nats_server_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl TestNats {
    /// `None` (with a visible message) when nats-server is not installed outside CI; in CI
    /// (`CI=true`) a missing nats-server fails the test.
    pub async fn start() -> Option<Self> {
        let Some(binary) = nats_server_binary() else {
            if crate::helpers::in_ci() {
                panic!("nats-server is required in CI but not installed");
            }
            eprintln!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store: tempfile::tempdir().unwrap(),
            binary,
            child: None,
        };
        nats.resume().await;
        Some(nats)
    }

    /// Start (again) on the same port and store: JetStream keeps its streams.
    pub async fn resume(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not listen on {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.stop();
    }
}
