//! `opscase serve` as a child process of its own (so its memory is the service's alone), and
//! what the bench reads about it from /proc: resident set (VmRSS, its anonymous part RssAnon),
//! peak (VmHWM, which the bench resets through /proc/<pid>/clear_refs at the start of a phase),
//! threads.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::StatusCode;

/// The bootstrap admin key of the bench's services (each lives only as long as its store).
pub const ADMIN_KEY: &str = "osk_memory_bench_0123456789abcdef0123456789abcdef";
/// How long `opscase serve` may take to answer 200 on /readyz.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `opscase serve` on a fresh store.
pub struct Service {
    pub base: String,
    pub pid: u32,
    child: Child,
    log_path: PathBuf,
    /// Data dir and log; removed when the service is dropped.
    _dir: tempfile::TempDir,
}

impl Service {
    /// `database_url`: PostgreSQL, or `None` for the embedded SQLite default in a temp data dir.
    /// `env`: `OPSCASE_NAME=VALUE` settings on top of the bench's own.
    pub async fn start(
        binary: &Path,
        database_url: Option<&str>,
        env: &[String],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for the service")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log_path = dir.path().join("opscase.log");
        let log = File::create(&log_path).context("cannot create the service log")?;
        let mut command = Command::new(binary);
        // The service's own configuration only: no opscase.toml from the caller's directory,
        // no OPSCASE_* (or allocator tuning) from the caller's environment.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("OPSCASE_")
                || name_text.starts_with("MALLOC")
                || name_text.starts_with("GLIBC_TUNABLES")
                || name_text.starts_with("MIMALLOC_")
                || name_text.starts_with("_RJEM_")
                || name_text == "RUST_LOG"
            {
                command.env_remove(name);
            }
        }
        command
            .arg("serve")
            .current_dir(dir.path())
            .env("OPSCASE_LISTEN", format!("127.0.0.1:{port}"))
            .env("OPSCASE_DATA_DIR", dir.path().join("data"))
            .env("OPSCASE_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            // The bench is the only client: a per-key token bucket would shape the load.
            .env("OPSCASE_RATE_LIMIT_PER_SECOND", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(url) = database_url {
            command.env("OPSCASE_DATABASE_URL", url);
        }
        for setting in env {
            if let Some((name, value)) = setting.split_once('=') {
                command.env(name, value);
            }
        }
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} serve", binary.display()))?;
        let mut service = Self {
            base: format!("http://127.0.0.1:{port}"),
            pid: child.id(),
            child,
            log_path,
            _dir: dir,
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
        Ok(service)
    }

    /// SIGTERM, then wait for the exit (kill after [`STOP_TIMEOUT`]); how it exited.
    pub async fn stop(mut self) -> String {
        let asked = Instant::now();
        // The child's own pid, never a group or a name.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if asked.elapsed() < STOP_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return format!(
                        "killed: not stopped {} s after SIGTERM",
                        STOP_TIMEOUT.as_secs()
                    );
                }
                Err(error) => return format!("unknown: {error}"),
            }
        }
    }

    /// Log lines at WARN or ERROR (JSON logs), for the report.
    pub fn log_problems(&self) -> u64 {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"")
            })
            .count() as u64
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

/// One reading of /proc/<pid>/status, in MiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: f64,
    pub anon: f64,
    pub hwm: f64,
    pub threads: u32,
}

impl Memory {
    pub fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<f64> {
            status
                .lines()
                .find(|line| line.starts_with(name))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        };
        Some(Self {
            rss: field("VmRSS:")? / 1024.0,
            anon: field("RssAnon:").unwrap_or(0.0) / 1024.0,
            hwm: field("VmHWM:")? / 1024.0,
            threads: field("Threads:").unwrap_or(0.0) as u32,
        })
    }
}

/// Make VmHWM start again from the current RSS ("5" to clear_refs; needs to own the process).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Reads the service's memory every `interval` in the background; the largest VmRSS seen
/// since the last [`Sampler::take_max`].
pub struct Sampler {
    max: Arc<Mutex<Memory>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32, interval: Duration) -> Self {
        let max = Arc::new(Mutex::new(Memory::default()));
        let shared = max.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(now) = Memory::read(pid) else {
                    return;
                };
                let mut max = shared.lock().expect("sampler");
                if now.rss > max.rss {
                    *max = now;
                }
            }
        });
        Self { max, task }
    }

    /// The reading with the largest VmRSS since the previous call, and start over.
    pub fn take_max(&self) -> Memory {
        std::mem::take(&mut *self.max.lock().expect("sampler"))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
