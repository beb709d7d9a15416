//! `script.exec`: runs an executable from the allowlist directory.
//!
//! * Only a file directly inside [`ScriptConfig::dir`], named by `params.script` (a bare file
//!   name: no `/`, no `..`, not hidden), that is a regular file or a symlink placed in the
//!   directory, and executable. Anything else is refused before a process exists, and so is
//!   every script when no directory is configured.
//! * `params.args` is the argv (no shell: `;`, `$(..)`, backticks reach the script verbatim).
//! * The environment is cleared, then `PATH` (configured), `LANG=C.UTF-8` and
//!   `HOME=/nonexistent` are set, plus `params.env`. Variables that change how the script or
//!   its interpreter runs (`PATH`, `HOME`, `LANG`, `IFS`, `ENV`, `BASH_ENV`, `SHELLOPTS`,
//!   `BASHOPTS`, `PS4`, `CDPATH`, `GLOBIGNORE`, `LD_*`, `DYLD_*`) cannot be set that way.
//!   stdin is `/dev/null`; the working directory is the allowlist directory.
//! * The script leads its own process group. On timeout the whole group gets SIGKILL (so the
//!   children it started die too), the leader is reaped and the attempt fails, retryable,
//!   with `timed out after N s`. If the attempt is dropped midway (the runner's backstop, a
//!   shutdown), a guard kills the group as well. Processes that left the group (`setsid`) are
//!   out of reach.
//! * stdout and stderr are read concurrently and merged in arrival order (chunk by chunk, like
//!   `2>&1`). At most `output_cap` bytes are kept: the first half and the last half, with a
//!   `…[truncated N bytes]…` line between them. Reading goes on past the cap, so the script
//!   never blocks on a full pipe.
//! * Once the script has exited, processes it left in its group may hold its output open for
//!   [`LINGER`] at most; then they are killed and the attempt ends.
//! * Exit 0 succeeds (`exit 0`); any other exit, or death by a signal, fails retryable, with
//!   the output.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, ChildStdout, Command};

use crate::adapter::{Adapter, StepContext, StepError, StepOutput};
use crate::runner::seconds;

/// Output kept per attempt unless configured otherwise: 64 KiB.
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;

/// `PATH` a script sees unless configured otherwise.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// After the script exits, how long processes it left behind may keep its output open.
pub const LINGER: Duration = Duration::from_secs(2);

/// After the group is killed, how long remaining buffered output is still read.
const DRAIN: Duration = Duration::from_secs(1);

/// Variables `params.env` may not set.
const RESERVED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "CDPATH",
    "GLOBIGNORE",
];
const RESERVED_ENV_PREFIXES: &[&str] = &["LD_", "DYLD_"];

/// How `script.exec` is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptConfig {
    /// The allowlist directory; `None` refuses every script.
    pub dir: Option<PathBuf>,
    /// Bytes of output kept per attempt.
    pub output_cap: usize,
    /// The `PATH` a script sees.
    pub path_env: String,
}

impl Default for ScriptConfig {
    fn default() -> Self {
        Self {
            dir: None,
            output_cap: DEFAULT_OUTPUT_CAP,
            path_env: DEFAULT_PATH.into(),
        }
    }
}

impl ScriptConfig {
    /// Scripts from `dir`, with the default cap and `PATH`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            ..Self::default()
        }
    }
}

/// The `script.exec` adapter.
#[derive(Debug, Clone)]
pub struct ScriptExec {
    config: ScriptConfig,
}

/// A checked request: an allowlisted file and what to pass it.
#[derive(Debug)]
struct Invocation {
    name: String,
    dir: PathBuf,
    path: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl ScriptExec {
    pub fn new(config: ScriptConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &ScriptConfig {
        &self.config
    }

    fn resolve(&self, params: &Value) -> Result<Invocation, StepError> {
        let name = params
            .get("script")
            .and_then(Value::as_str)
            .ok_or_else(|| StepError::permanent("params.script: a file name is required"))?;
        let Some(dir) = &self.config.dir else {
            return Err(StepError::permanent(format!(
                "script {name:?} is refused: script.exec has no allowlist directory configured, \
                 so no script is in the allowlist directory"
            )));
        };
        let refuse = |why: &str| {
            StepError::permanent(format!(
                "script {name:?} is not in the allowlist directory {}: {why}",
                dir.display()
            ))
        };
        if name.is_empty()
            || name.contains('/')
            || name.contains("..")
            || name.contains('\0')
            || name.starts_with('.')
        {
            return Err(refuse(
                "a script is named by its bare file name (no `/`, no `..`, not hidden)",
            ));
        }
        let path = dir.join(name);
        let placed = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(refuse("no such file")),
            Err(e) => return Err(refuse(&e.to_string())),
        };
        let kind = placed.file_type();
        if !kind.is_file() && !kind.is_symlink() {
            return Err(refuse("not a regular file"));
        }
        let target = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(refuse("a symlink to nothing"))
            }
            Err(e) => return Err(refuse(&e.to_string())),
        };
        if !target.is_file() {
            return Err(refuse("not a regular file"));
        }
        if target.permissions().mode() & 0o111 == 0 {
            return Err(refuse("not executable"));
        }

        let args = match params.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item.as_str() {
                    Some(arg) if arg.contains('\0') => Err(StepError::permanent(format!(
                        "params.args[{i}]: contains a NUL byte"
                    ))),
                    Some(arg) => Ok(arg.to_owned()),
                    None => Err(StepError::permanent(format!(
                        "params.args[{i}]: must be a string"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(StepError::permanent(
                    "params.args: must be an array of strings",
                ))
            }
        };

        let env = match params.get("env") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(vars)) => vars
                .iter()
                .map(|(key, value)| check_env(key, value))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(StepError::permanent("params.env: must be an object")),
        };

        Ok(Invocation {
            name: name.to_owned(),
            dir: dir.clone(),
            path,
            args,
            env,
        })
    }
}

fn check_env(key: &str, value: &Value) -> Result<(String, String), StepError> {
    let well_formed = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        return Err(StepError::permanent(format!(
            "params.env.{key}: a name is upper case letters, digits and `_`"
        )));
    }
    if RESERVED_ENV.contains(&key)
        || RESERVED_ENV_PREFIXES
            .iter()
            .any(|prefix| key.starts_with(prefix))
    {
        return Err(StepError::permanent(format!(
            "params.env.{key}: may not be set (it changes how the script runs)"
        )));
    }
    match value.as_str() {
        Some(value) if value.contains('\0') => Err(StepError::permanent(format!(
            "params.env.{key}: contains a NUL byte"
        ))),
        Some(value) => Ok((key.to_owned(), value.to_owned())),
        None => Err(StepError::permanent(format!(
            "params.env.{key}: must be a string"
        ))),
    }
}

#[async_trait]
impl Adapter for ScriptExec {
    fn action(&self) -> &'static str {
        "script.exec"
    }

    fn describe(&self, params: &Value, _context: &StepContext) -> Result<String, StepError> {
        let invocation = self.resolve(params)?;
        let args = serde_json::to_string(&invocation.args).expect("strings serialize");
        let mut description = format!("would run {} {args}", invocation.name);
        if !invocation.env.is_empty() {
            let names: Vec<&str> = invocation.env.iter().map(|(k, _)| k.as_str()).collect();
            description.push_str(&format!(" with {}", names.join(", ")));
        }
        Ok(description)
    }

    async fn run(&self, params: &Value, context: &StepContext) -> Result<StepOutput, StepError> {
        let invocation = self.resolve(params)?;
        run_script(&invocation, &self.config, context.timeout).await
    }
}

async fn run_script(
    invocation: &Invocation,
    config: &ScriptConfig,
    timeout: Duration,
) -> Result<StepOutput, StepError> {
    let mut command = Command::new(&invocation.path);
    command
        .args(&invocation.args)
        .env_clear()
        .env("PATH", &config.path_env)
        .env("LANG", "C.UTF-8")
        .env("HOME", "/nonexistent")
        .envs(invocation.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&invocation.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| spawn_error(&invocation.name, e))?;
    // Declared after `child`, so it is dropped first: the group dies while its leader is
    // still unreaped, and its id cannot have been reused.
    let mut group = GroupGuard::new(&child);
    let mut pipes = Pipes::new(child.stdout.take(), child.stderr.take());
    let mut capture = Capture::new(config.output_cap);

    enum End {
        Exited,
        TimedOut,
        Lingered,
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let linger = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(linger);
    let mut status: Option<io::Result<ExitStatus>> = None;
    let end = loop {
        if status.is_some() && !pipes.open() {
            break End::Exited;
        }
        tokio::select! {
            _ = pipes.read_some(&mut capture), if pipes.open() => {}
            waited = child.wait(), if status.is_none() => {
                status = Some(waited);
                linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
            }
            _ = &mut linger, if status.is_some() => break End::Lingered,
            _ = &mut deadline => break End::TimedOut,
        }
    };

    match end {
        End::Exited => group.disarm(),
        End::Lingered => {
            group.kill();
            drain(&mut pipes, &mut capture).await;
            capture.note("[processes the script left behind were killed]");
        }
        End::TimedOut => {
            group.kill();
            if status.is_none() {
                // SIGKILL cannot be ignored; the bound only guards against a process stuck
                // in the kernel.
                let _ = tokio::time::timeout(DRAIN, child.wait()).await;
            }
            drain(&mut pipes, &mut capture).await;
            return Err(StepError::retryable(format!(
                "timed out after {} (its process group was killed)",
                seconds(timeout)
            ))
            .with_output(capture.finish()));
        }
    }

    let output = capture.finish();
    match status.expect("the script exited") {
        Ok(status) if status.success() => Ok(StepOutput {
            detail: "exit 0".into(),
            output,
        }),
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            let message = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => format!("ended with {status}"),
            };
            Err(StepError::retryable(message).with_output(output))
        }
        Err(e) => Err(
            StepError::retryable(format!("waiting for {} failed: {e}", invocation.name))
                .with_output(output),
        ),
    }
}

fn spawn_error(name: &str, error: io::Error) -> StepError {
    let message = format!("could not start {name}: {error}");
    let permanent = matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || error.raw_os_error() == Some(libc::ENOEXEC);
    if permanent {
        StepError::permanent(message)
    } else {
        StepError::retryable(message)
    }
}

/// Read what is left in the pipes, briefly (the group is dead, so they close soon).
async fn drain(pipes: &mut Pipes, capture: &mut Capture) {
    let _ = tokio::time::timeout(DRAIN, async {
        while pipes.open() {
            pipes.read_some(capture).await;
        }
    })
    .await;
}

/// Kills the script's process group with SIGKILL unless disarmed: on timeout, on leftovers,
/// and when the attempt is dropped midway.
struct GroupGuard {
    pgid: Option<libc::pid_t>,
}

impl GroupGuard {
    fn new(child: &tokio::process::Child) -> Self {
        Self {
            pgid: child
                .id()
                .and_then(|pid| libc::pid_t::try_from(pid).ok())
                .filter(|pid| *pid > 1),
        }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: killpg has no memory-safety preconditions; the group is the one the
            // child leads (`process_group(0)`), and its leader is not reaped yet.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The script's stdout and stderr, read concurrently.
struct Pipes {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out_buf: Box<[u8]>,
    err_buf: Box<[u8]>,
}

impl Pipes {
    fn new(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>) -> Self {
        Self {
            stdout,
            stderr,
            out_buf: vec![0; 16 * 1024].into_boxed_slice(),
            err_buf: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    fn open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// Read one chunk from whichever pipe has one. Cancel safe (as `read` is).
    async fn read_some(&mut self, capture: &mut Capture) {
        let Self {
            stdout,
            stderr,
            out_buf,
            err_buf,
        } = self;
        tokio::select! {
            read = async { stdout.as_mut().expect("open").read(out_buf).await }, if stdout.is_some() => {
                match read {
                    Ok(0) | Err(_) => *stdout = None,
                    Ok(n) => capture.push(&out_buf[..n]),
                }
            }
            read = async { stderr.as_mut().expect("open").read(err_buf).await }, if stderr.is_some() => {
                match read {
                    Ok(0) | Err(_) => *stderr = None,
                    Ok(n) => capture.push(&err_buf[..n]),
                }
            }
            else => {}
        }
    }
}

/// Keeps the first and the last half of `cap` bytes of output, counting the rest.
struct Capture {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: usize,
    notes: Vec<&'static str>,
}

impl Capture {
    fn new(cap: usize) -> Self {
        let tail_cap = cap / 2;
        Self {
            head_cap: cap - tail_cap,
            tail_cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
            notes: Vec::new(),
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len();
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let take = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if bytes.len() >= self.tail_cap {
            self.tail.clear();
            self.tail
                .extend(bytes[bytes.len() - self.tail_cap..].iter().copied());
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(bytes.iter().copied());
        }
    }

    fn note(&mut self, note: &'static str) {
        self.notes.push(note);
    }

    /// The kept text (lossy UTF-8), `None` when there was none.
    fn finish(mut self) -> Option<String> {
        let kept = self.head.len() + self.tail.len();
        let mut text = if kept == self.total {
            self.head.extend(self.tail.iter().copied());
            String::from_utf8_lossy(&self.head).into_owned()
        } else {
            let mut head = String::from_utf8_lossy(&self.head).into_owned();
            head.truncate(floor_char_boundary(&head, self.head_cap));
            let tail_bytes: Vec<u8> = self.tail.iter().copied().collect();
            let tail = String::from_utf8_lossy(&tail_bytes);
            let start = ceil_char_boundary(&tail, tail.len().saturating_sub(self.tail_cap));
            let tail = &tail[start..];
            let dropped = self.total.saturating_sub(head.len() + tail.len());
            format!("{head}{}{tail}", truncation_marker(dropped))
        };
        for note in &self.notes {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(note);
        }
        (!text.is_empty()).then_some(text)
    }
}

/// The line that stands for the output left out.
pub fn truncation_marker(dropped: usize) -> String {
    format!("\n…[truncated {dropped} bytes]…\n")
}

fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(cap: usize, chunks: &[&[u8]]) -> Option<String> {
        let mut capture = Capture::new(cap);
        for chunk in chunks {
            capture.push(chunk);
        }
        capture.finish()
    }

    #[test]
    fn small_output_is_kept_whole() {
        assert_eq!(captured(10, &[b"abc", b"def"]).as_deref(), Some("abcdef"));
        assert_eq!(captured(6, &[b"abc", b"def"]).as_deref(), Some("abcdef"));
        assert_eq!(captured(10, &[]), None);
    }

    #[test]
    fn large_output_keeps_head_and_tail() {
        let text = captured(6, &[b"abcd", b"efgh", b"ijkl"]).unwrap();
        assert_eq!(text, format!("abc{}jkl", truncation_marker(6)));
        let one_chunk = captured(4, &[b"0123456789"]).unwrap();
        assert_eq!(one_chunk, format!("01{}89", truncation_marker(6)));
    }

    #[test]
    fn cut_never_splits_a_character() {
        let text = captured(5, &["ééééé".as_bytes()]).unwrap();
        assert!(text.starts_with('é'));
        assert!(text.ends_with('é'));
    }

    #[test]
    fn env_names_are_checked() {
        let ok = check_env("TARGET_1", &Value::String("x".into())).unwrap();
        assert_eq!(ok, ("TARGET_1".into(), "x".into()));
        for bad in ["PATH", "LD_PRELOAD", "BASH_ENV", "lower", "1X", ""] {
            assert!(check_env(bad, &Value::String("x".into())).is_err(), "{bad}");
        }
    }
}
