//! `opscase serve` as a child process of the bench, so that what is read about it (peak RSS,
//! CPU) is the service's alone: the release binary, a fresh store (a temp data dir for the
//! embedded SQLite default, or a PostgreSQL database the caller created), a loopback port of
//! its own, and an `opscase.toml` in its working directory when the caller gives one.
//!
//! signal-bench uses it; incident-loop-bench and memory-bench keep their own older copies.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::StatusCode;

/// The bootstrap admin key of the bench's services (each lives only as long as its store).
pub const ADMIN_KEY: &str = "osk_opscase_bench_0123456789abcdef0123456789abcdef";
/// How long `opscase serve` may take to answer 200 on /readyz.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// `cargo build --release --bin opscase` into the target directory this bench binary was built
/// in (`<target>/release/<bench>` → `<target>`), and the path of the result.
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
    eprintln!("bench: cargo build --release --bin opscase");
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

/// Where a service keeps its data, for the bench's own queries after a load.
#[derive(Debug, Clone)]
pub enum Database {
    /// The embedded default: `opscase.db` in the service's temp data dir.
    Sqlite(PathBuf),
    /// A database URL the caller created (and drops).
    Postgres(String),
}

/// What a service is started with.
pub struct Launch<'a> {
    pub binary: &'a Path,
    /// `None`: the embedded SQLite default in a temp data dir.
    pub postgres_url: Option<&'a str>,
    /// Written as `opscase.toml` into the service's working directory.
    pub config_toml: Option<&'a str>,
    /// `OPSCASE_NAME=VALUE` settings on top of the bench's own.
    pub env: &'a [String],
}

/// A running `opscase serve`.
pub struct Service {
    pub base: String,
    pub pid: u32,
    pub database: Database,
    pub startup_s: f64,
    child: Child,
    log_path: PathBuf,
    /// Data dir, configuration and log; removed when the service is dropped.
    _dir: tempfile::TempDir,
}

/// What the bench learnt about the service once it stopped.
#[derive(Debug, Clone, Default)]
pub struct Stopped {
    /// VmHWM just before SIGTERM, MiB: the peak of the whole life of the process.
    pub peak_rss_mib: Option<f64>,
    /// VmRSS at the same moment, MiB.
    pub rss_at_end_mib: Option<f64>,
    pub exit: String,
    /// Log lines at WARN and ERROR, and the first few of them.
    pub warnings: u64,
    pub errors: u64,
    pub problem_samples: Vec<String>,
}

impl Service {
    pub async fn start(launch: Launch<'_>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for the service")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log_path = dir.path().join("opscase.log");
        let log = File::create(&log_path).context("cannot create the service log")?;
        if let Some(toml) = launch.config_toml {
            std::fs::write(dir.path().join("opscase.toml"), toml)
                .context("cannot write the service's opscase.toml")?;
        }
        let mut command = Command::new(launch.binary);
        // The service's own configuration only: no OPSCASE_* from the caller's environment
        // (and no opscase.toml from the caller's directory: it runs in the temp dir).
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
            // The bench is the only client: a per-key token bucket would shape its load.
            .env("OPSCASE_RATE_LIMIT_PER_SECOND", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(url) = launch.postgres_url {
            command.env("OPSCASE_DATABASE_URL", url);
        }
        for setting in launch.env {
            if let Some((name, value)) = setting.split_once('=') {
                command.env(name, value);
            }
        }
        let database = match launch.postgres_url {
            None => Database::Sqlite(dir.path().join("data").join("opscase.db")),
            Some(url) => Database::Postgres(url.to_string()),
        };
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} serve", launch.binary.display()))?;
        let mut service = Self {
            base: format!("http://127.0.0.1:{port}"),
            pid: child.id(),
            database,
            startup_s: 0.0,
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
        service.startup_s = started.elapsed().as_secs_f64();
        Ok(service)
    }

    /// User + system CPU time of the service so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // after_name starts at field 3 (state): utime is field 14, stime 15.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / clock_ticks())
    }

    /// A `/proc/<pid>/status` field in MiB (`VmHWM:`, `VmRSS:`).
    pub fn status_mib(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let kib: f64 = status
            .lines()
            .find(|line| line.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    /// SIGTERM (to the child's own pid, never a group or a name), wait for the exit (kill
    /// after [`STOP_TIMEOUT`]), read the log.
    pub async fn stop(mut self) -> Stopped {
        let mut stopped = Stopped {
            peak_rss_mib: self.status_mib("VmHWM:"),
            rss_at_end_mib: self.status_mib("VmRSS:"),
            ..Stopped::default()
        };
        let asked = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        stopped.exit = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.to_string(),
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
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        for line in log.lines() {
            let warning = line.contains("\"level\":\"WARN\"");
            let error = line.contains("\"level\":\"ERROR\"");
            stopped.warnings += u64::from(warning);
            stopped.errors += u64::from(error);
            if (warning || error) && stopped.problem_samples.len() < 5 {
                stopped
                    .problem_samples
                    .push(line.chars().take(300).collect());
            }
        }
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

/// USER_HZ: 100 on every Linux the bench runs on; getconf confirms when it is there.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
