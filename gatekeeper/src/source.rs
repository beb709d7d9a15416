//! Where the gate's policy comes from, and its hot reload.
//!
//! Reload mechanism: lazy, on [`PolicySource::current`]. At most once per check interval
//! (default 1 s) a call re-reads the policy file and compares the SHA-256 of its bytes with the
//! bytes read last time (content, not modification time, so a same-size rewrite within one
//! mtime tick is still seen). New content is parsed; when it parses, it replaces the current
//! policy (logged at info with the old and new revision); when it does not, or the file cannot
//! be read, the current policy stays and an error is logged with the file and the reason (once
//! per distinct content or error, not once a second). The check runs on the calling thread
//! (one small file read) and only one caller at a time does it; the others get the current
//! policy without waiting. [`PolicySource::reload`] checks at once, whatever the interval.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, TryLockError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::policy::{Format, LoadedPolicy, PolicyError};

/// The default interval between two checks of the policy file.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The current gate policy, hot-reloaded from its file. Cheap to clone (shared).
#[derive(Clone)]
pub struct PolicySource {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Arc<LoadedPolicy>>,
    file: Option<Watched>,
}

struct Watched {
    path: PathBuf,
    format: Format,
    state: Mutex<WatchState>,
}

struct WatchState {
    interval: Duration,
    last_check: Instant,
    /// SHA-256 of the bytes read last (whether they parsed or not).
    seen: [u8; 32],
    /// Why the bytes read last did not parse (already logged).
    seen_error: Option<PolicyError>,
    /// The last read error (already logged).
    io_error: Option<PolicyError>,
}

impl std::fmt::Debug for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.snapshot();
        f.debug_struct("PolicySource")
            .field("origin", &current.origin)
            .field("rev", &current.rev)
            .finish()
    }
}

impl PolicySource {
    /// The built-in policy; never reloads.
    pub fn builtin() -> PolicySource {
        PolicySource {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(LoadedPolicy::builtin())),
                file: None,
            }),
        }
    }

    /// Load `path` (`.toml`, `.yaml` or `.yml`); it must parse now. Later changes to the file
    /// are picked up by [`current`](Self::current).
    pub fn from_file(path: impl AsRef<Path>) -> Result<PolicySource, PolicyError> {
        let path = path.as_ref().to_path_buf();
        let format = Format::from_path(&path)?;
        let origin = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| PolicyError::Io {
            file: origin.clone(),
            message: e.to_string(),
        })?;
        let loaded = LoadedPolicy::from_bytes(&bytes, format, &origin)?;
        tracing::info!(file = %origin, policy_rev = %loaded.rev, "gate policy loaded");
        Ok(PolicySource {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(loaded)),
                file: Some(Watched {
                    path,
                    format,
                    state: Mutex::new(WatchState {
                        interval: DEFAULT_CHECK_INTERVAL,
                        last_check: Instant::now(),
                        seen: Sha256::digest(&bytes).into(),
                        seen_error: None,
                        io_error: None,
                    }),
                }),
            }),
        })
    }

    /// The built-in policy when `path` is `None`, else [`from_file`](Self::from_file).
    pub fn from_optional_file(path: Option<&Path>) -> Result<PolicySource, PolicyError> {
        match path {
            Some(path) => PolicySource::from_file(path),
            None => Ok(PolicySource::builtin()),
        }
    }

    /// Check the file at most once per `interval` (default [`DEFAULT_CHECK_INTERVAL`]).
    pub fn with_check_interval(self, interval: Duration) -> PolicySource {
        if let Some(watched) = &self.inner.file {
            lock(&watched.state).interval = interval;
        }
        self
    }

    /// The policy file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.file.as_ref().map(|w| w.path.as_path())
    }

    /// The current policy, after checking the file for changes when the check interval has
    /// passed since the last check.
    pub fn current(&self) -> Arc<LoadedPolicy> {
        if let Some(watched) = &self.inner.file {
            let state = match watched.state.try_lock() {
                Ok(state) => Some(state),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                // Someone else is checking right now.
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut state) = state {
                if state.last_check.elapsed() >= state.interval {
                    // Errors are logged inside; the current policy stays.
                    let _ = self.check(watched, &mut state);
                }
            }
        }
        self.snapshot()
    }

    /// Check the file now. `Ok(true)` when a new policy was installed, `Ok(false)` when the
    /// content is what was read last time (or has the current revision); `Err` when the file
    /// cannot be read or does not parse (the current policy stays). Always `Ok(false)` for the
    /// built-in policy.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        match &self.inner.file {
            None => Ok(false),
            Some(watched) => {
                let mut state = lock(&watched.state);
                self.check(watched, &mut state)
            }
        }
    }

    fn snapshot(&self) -> Arc<LoadedPolicy> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn check(&self, watched: &Watched, state: &mut WatchState) -> Result<bool, PolicyError> {
        state.last_check = Instant::now();
        let origin = watched.path.display().to_string();
        let bytes = match std::fs::read(&watched.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                let error = PolicyError::Io {
                    file: origin.clone(),
                    message: e.to_string(),
                };
                if state.io_error.as_ref() != Some(&error) {
                    tracing::error!(
                        file = %origin,
                        error = %error,
                        policy_rev = %self.snapshot().rev,
                        "gate policy reload failed; keeping the current policy"
                    );
                    state.io_error = Some(error.clone());
                }
                return Err(error);
            }
        };
        state.io_error = None;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if digest == state.seen {
            // Same content as last time: already installed, or already reported as broken.
            return match &state.seen_error {
                Some(error) => Err(error.clone()),
                None => Ok(false),
            };
        }
        state.seen = digest;
        let loaded = match LoadedPolicy::from_bytes(&bytes, watched.format, &origin) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::error!(
                    file = %origin,
                    error = %error,
                    policy_rev = %self.snapshot().rev,
                    "gate policy reload failed; keeping the current policy"
                );
                state.seen_error = Some(error.clone());
                return Err(error);
            }
        };
        state.seen_error = None;
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if current.rev == loaded.rev {
            return Ok(false);
        }
        tracing::info!(
            file = %origin,
            old_rev = %current.rev,
            policy_rev = %loaded.rev,
            "gate policy reloaded"
        );
        *current = Arc::new(loaded);
        Ok(true)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
