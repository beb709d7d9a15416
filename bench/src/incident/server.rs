//! `opscase serve` as a child process: the release binary, a fresh store, a loopback port of
//! its own, and what the bench reads about it from /proc (peak RSS, CPU time) and its log.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::StatusCode;
use serde_json::Value;

use crate::Backend;

/// The bootstrap admin key of the bench's services (each lives only as long as its store).
pub const ADMIN_KEY: &str = "osk_incident_loop_bench_0123456789abcdef0123456789";
/// How long `opscase serve` may take to answer 200 on /readyz.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Distinct warning / error messages kept from the service's log.
const LOG_SAMPLES: usize = 8;

/// `cargo build --release --bin opscase` into the target directory this bench binary was built
/// in (`<target>/release/incident-loop-bench` → `<target>`), and the path of the result.
pub fn build_release_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot tell where the bench binary is")?;
    let release_dir = exe
        .parent()
        .context("the bench binary has no directory")?
        .to_path_buf();
    let target_dir = release_dir
        .parent()
        .context("the bench binary is not in <target>/release")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("incident-loop-bench: cargo build --release --bin opscase");
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "opscase", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .context("cannot run cargo to build the opscase binary (or pass --opscase-bin)")?;
    if !status.success() {
        bail!("cargo build --release --bin opscase failed ({status})");
    }
    Ok(release_dir.join("opscase"))
}

pub enum Store {
    /// The default: SQLite in the data dir, the embedded bus.
    Embedded,
    Postgres {
        database_url: String,
        nats_url: String,
    },
}

/// Where a service keeps its data, for the bench's own read-only queries.
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

/// A running `opscase serve`.
pub struct Service {
    pub base: String,
    pub database: Database,
    pub pid: u32,
    pub backend: Backend,
    child: Child,
    log_path: PathBuf,
    /// Data dir and log; removed when the service is dropped.
    _dir: tempfile::TempDir,
    pub startup_s: f64,
}

/// What the bench learnt about the service once it stopped.
#[derive(Debug, Default, Clone)]
pub struct Stopped {
    /// VmHWM of the service process just before SIGTERM, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// VmRSS at the same moment, in MiB.
    pub rss_at_end_mib: Option<f64>,
    /// From SIGTERM to exit, and how it exited.
    pub shutdown_s: Option<f64>,
    pub exit: String,
    /// Log lines by level, and a few distinct warning / error messages.
    pub log_levels: BTreeMap<String, u64>,
    pub log_samples: Vec<String>,
}

impl Service {
    /// `extra_env`: `OPSCASE_NAME=VALUE` settings on top of the bench's own.
    pub async fn start(
        binary: &Path,
        backend: Backend,
        store: &Store,
        extra_env: &[String],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for the service")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log_path = dir.path().join("opscase.log");
        let log = File::create(&log_path).context("cannot create the service log")?;
        let mut command = Command::new(binary);
        // The service's own configuration only: no opscase.toml from the caller's directory,
        // no OPSCASE_* from the caller's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OPSCASE_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        command
            .arg("serve")
            .current_dir(dir.path())
            .env("OPSCASE_LISTEN", format!("127.0.0.1:{port}"))
            .env("OPSCASE_DATA_DIR", dir.path().join("data"))
            .env("OPSCASE_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            // The bench is the only client, and its polls alone would exceed the default
            // per-key token bucket (200/s): unlimited, so the bucket does not shape the load.
            .env("OPSCASE_RATE_LIMIT_PER_SECOND", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Store::Postgres {
            database_url,
            nats_url,
        } = store
        {
            command
                .env("OPSCASE_DATABASE_URL", database_url)
                .env("OPSCASE_NATS_URL", nats_url);
        }
        for setting in extra_env {
            if let Some((name, value)) = setting.split_once('=') {
                command.env(name, value);
            }
        }
        let database = match store {
            Store::Embedded => Database::Sqlite(dir.path().join("data").join("opscase.db")),
            Store::Postgres { database_url, .. } => Database::Postgres(database_url.clone()),
        };
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} serve", binary.display()))?;
        let mut service = Self {
            base: format!("http://127.0.0.1:{port}"),
            database,
            pid: child.id(),
            backend,
            child,
            log_path,
            _dir: dir,
            startup_s: 0.0,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/readyz", service.base);
        loop {
            if let Some(status) = service.child.try_wait()? {
                bail!(
                    "opscase serve exited at start-up ({status}); its log ends with:\n{}",
                    service.log_tail(20)
                );
            }
            if let Ok(response) = client.get(&url).send().await {
                if response.status() == StatusCode::OK {
                    break;
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "opscase serve was not ready within {} s; its log ends with:\n{}",
                    READY_TIMEOUT.as_secs(),
                    service.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        service.startup_s = started.elapsed().as_secs_f64();
        eprintln!(
            "incident-loop-bench: {} service (pid {}) ready at {} after {:.2} s",
            backend.label(),
            service.pid,
            service.base,
            service.startup_s
        );
        Ok(service)
    }

    /// User + system CPU time of the service so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / clock_ticks())
    }

    fn status_kib(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find(|line| line.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// SIGTERM, wait for the exit (kill after [`STOP_TIMEOUT`]), read the log.
    pub async fn stop(mut self) -> Stopped {
        let mut stopped = Stopped {
            peak_rss_mib: self.status_kib("VmHWM:").map(|kib| kib / 1024.0),
            rss_at_end_mib: self.status_kib("VmRSS:").map(|kib| kib / 1024.0),
            ..Stopped::default()
        };
        let asked = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        stopped.exit = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    stopped.shutdown_s = Some(asked.elapsed().as_secs_f64());
                    break status.to_string();
                }
                Ok(None) if asked.elapsed() < STOP_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break format!(
                        "killed: not stopped {} s after SIGTERM",
                        STOP_TIMEOUT.as_secs()
                    );
                }
                Err(error) => break format!("unknown: {error}"),
            }
        };
        let (levels, samples) = read_log(&self.log_path);
        stopped.log_levels = levels;
        stopped.log_samples = samples;
        stopped
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Service {
    /// An interrupted run leaves no service behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux the bench runs on; getconf confirms when it is there.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Lines by level (JSON logs: the `level` field; anything else counts as `other`) and the
/// first few distinct WARN / ERROR messages with their target.
fn read_log(path: &Path) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut levels = BTreeMap::new();
    let mut samples: Vec<String> = Vec::new();
    let Ok(file) = File::open(path) else {
        return (levels, samples);
    };
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        let parsed: Option<Value> = serde_json::from_str(&line).ok();
        let level = parsed
            .as_ref()
            .and_then(|value| value["level"].as_str())
            .unwrap_or("other")
            .to_uppercase();
        if matches!(level.as_str(), "WARN" | "ERROR") && samples.len() < LOG_SAMPLES {
            let message = parsed.as_ref().map_or(line.clone(), |value| {
                let fields = &value["fields"];
                let message = fields["message"]
                    .as_str()
                    .or_else(|| value["message"].as_str())
                    .unwrap_or("");
                let error = fields["error"]
                    .as_str()
                    .or_else(|| value["error"].as_str())
                    .unwrap_or("");
                format!(
                    "{level} {}: {message}{}{error}",
                    value["target"].as_str().unwrap_or("?"),
                    if error.is_empty() { "" } else { ": " }
                )
            });
            let message: String = message.chars().take(300).collect();
            if !samples.contains(&message) {
                samples.push(message);
            }
        }
        *levels.entry(level).or_default() += 1;
    }
    (levels, samples)
}
