//! What a run stands on: a private nats-server, a PostgreSQL database of its own, and the facts
//! about the machine that the numbers depend on.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use bus::JetStreamTransport;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// A nats-server of the run's own: JetStream on, its store in a temp dir, a random loopback
/// port. The shared server on 4222 is never touched. Stopped when dropped.
pub struct PrivateNats {
    pub url: String,
    child: Child,
    _store: tempfile::TempDir,
}

impl PrivateNats {
    pub async fn start(binary: &Path) -> anyhow::Result<Self> {
        if !binary.exists() {
            bail!(
                "{} not found (apt-get install nats-server, or pass --nats-server)",
                binary.display()
            );
        }
        let port = free_port()?;
        let store = tempfile::tempdir().context("temp dir for the JetStream store")?;
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let nats = Self {
            url: format!("nats://127.0.0.1:{port}"),
            child,
            _store: store,
        };
        // Up to 5 s for the port to open.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(nats);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nats-server did not listen on 127.0.0.1:{port}");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fresh database `opscase_bench_<random>` next to the admin URL's database.
pub struct BenchDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl BenchDatabase {
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let mut admin = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("cannot reach PostgreSQL at {admin_url}"))?;
        let name = format!("opscase_bench_{}", Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .context("CREATE DATABASE")?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
            admin_url: admin_url.to_string(),
        })
    }

    /// Best effort: FORCE ends the pools' connections that may still be open.
    pub async fn drop_database(&self) {
        let dropped = async {
            let mut admin = PgConnection::connect(&self.admin_url).await?;
            admin
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await?;
            anyhow::Ok(())
        };
        if let Err(error) = dropped.await {
            eprintln!("bench: could not drop database {}: {error:#}", self.name);
        }
    }
}

/// Messages stored in the events stream, which the relay publishes `evt.*` topics to.
pub async fn stored_events(transport: &JetStreamTransport) -> anyhow::Result<u64> {
    let stream = transport
        .context()
        .get_stream(bus::STREAM_EVENTS)
        .await
        .context("cannot read the events stream")?;
    Ok(stream.cached_info().state.messages)
}

/// What the numbers depend on: cores, memory, and the versions and durability settings of
/// PostgreSQL and (when the bench uses it) NATS.
pub async fn machine_facts(
    postgres_url: &str,
    nats_server: Option<&Path>,
) -> anyhow::Result<Value> {
    let mut admin = PgConnection::connect(postgres_url)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {postgres_url}"))?;
    let mut postgres = serde_json::Map::new();
    for setting in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "shared_buffers",
    ] {
        let value: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(setting)
            .fetch_one(&mut admin)
            .await?;
        postgres.insert(setting.into(), value.into());
    }
    Ok(json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": cpu_model(),
        "mem_total_gib": mem_total_gib(),
        "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
        "postgres": postgres,
        "nats_server": nats_server.and_then(nats_version),
        "nats_store": nats_server.map(|_| "JetStream file store in a temp dir"),
        "git_commit": git_commit(),
    }))
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
}

fn mem_total_gib() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((kib / (1024.0 * 1024.0) * 10.0).round() / 10.0)
}

fn nats_version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    Some(
        text.trim()
            .trim_start_matches("nats-server:")
            .trim()
            .to_string(),
    )
}

/// The commit the bench was run from, `+dirty` with uncommitted changes; `None` outside git.
fn git_commit() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let head = Command::new("git")
        .args(["-C", dir, "rev-parse", "--short=12", "HEAD"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let dirty = Command::new("git")
        .args(["-C", dir, "status", "--porcelain", "--untracked-files=no"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|output| !output.stdout.is_empty());
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    Some(if dirty { format!("{head}+dirty") } else { head })
}
