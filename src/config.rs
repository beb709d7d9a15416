//! Configuration: defaults < file (`opscase.toml`) < environment (`OPSCASE_*`) < flags.
//! Every error names the key or variable that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub idempotency: IdempotencyConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout_s: f64,
    pub require_precondition: bool,
    pub max_in_flight: usize,
    /// Browser origins allowed to call the API; empty means CORS stays off.
    pub cors_allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://...` for PostgreSQL; unset means SQLite in `data_dir`.
    pub url: Option<String>,
    pub data_dir: PathBuf,
    pub pool_size: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    pub ttl_hours: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The first admin key, for automation; when unset a first start generates and prints one.
    pub bootstrap_admin_key: Option<Secret>,
    /// Per-key token bucket (0 = unlimited).
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: f64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            bootstrap_admin_key: None,
            rate_limit_per_second: 200.0,
            rate_limit_burst: 400.0,
        }
    }
}

/// A value that must never reach a log: `Debug` shows `***`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(format!("{other:?} is not one of json, text")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            request_timeout_s: 30.0,
            require_precondition: false,
            max_in_flight: 1024,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            data_dir: PathBuf::from("./data"),
            pool_size: 16,
        }
    }
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self { ttl_hours: 24 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Load from `file` (when given it must exist; otherwise `./opscase.toml` if present), then
    /// the environment, then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None if Path::new("opscase.toml").exists() => {
                Self::from_file(Path::new("opscase.toml"))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        if let Some(listen) = overrides.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.database.data_dir = dir.clone();
        }
        if let Some(format) = overrides.log_format {
            config.log.format = format;
        }
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        set(&mut self.server.listen, "OPSCASE_LISTEN", &env)?;
        set(
            &mut self.server.body_limit_bytes,
            "OPSCASE_BODY_LIMIT_BYTES",
            &env,
        )?;
        set(
            &mut self.server.request_timeout_s,
            "OPSCASE_REQUEST_TIMEOUT_S",
            &env,
        )?;
        set(
            &mut self.server.require_precondition,
            "OPSCASE_REQUIRE_PRECONDITION",
            &env,
        )?;
        set(
            &mut self.server.max_in_flight,
            "OPSCASE_MAX_IN_FLIGHT",
            &env,
        )?;
        if let Some(origins) = env("OPSCASE_CORS_ALLOWED_ORIGINS") {
            self.server.cors_allowed_origins = origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_string)
                .collect();
        }
        set(
            &mut self.auth.rate_limit_per_second,
            "OPSCASE_RATE_LIMIT_PER_SECOND",
            &env,
        )?;
        set(
            &mut self.auth.rate_limit_burst,
            "OPSCASE_RATE_LIMIT_BURST",
            &env,
        )?;
        if let Some(key) = env("OPSCASE_BOOTSTRAP_ADMIN_KEY").filter(|k| !k.is_empty()) {
            self.auth.bootstrap_admin_key = Some(Secret(key));
        }
        set(&mut self.database.data_dir, "OPSCASE_DATA_DIR", &env)?;
        set(&mut self.database.pool_size, "OPSCASE_POOL_SIZE", &env)?;
        set(
            &mut self.idempotency.ttl_hours,
            "OPSCASE_IDEMPOTENCY_TTL_HOURS",
            &env,
        )?;
        set(&mut self.log.format, "OPSCASE_LOG_FORMAT", &env)?;
        set(&mut self.log.level, "OPSCASE_LOG_LEVEL", &env)?;
        if let Some(url) = env("OPSCASE_DATABASE_URL").filter(|u| !u.is_empty()) {
            self.database.url = Some(url);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database.url {
            let known = ["postgres://", "postgresql://", "sqlite://"];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(ConfigError(
                    "database.url (OPSCASE_DATABASE_URL) must start with postgres://, postgresql:// or sqlite://".into(),
                ));
            }
        }
        if self.database.pool_size == 0 {
            return Err(ConfigError(
                "database.pool_size (OPSCASE_POOL_SIZE) must be at least 1".into(),
            ));
        }
        if !(self.server.request_timeout_s > 0.0 && self.server.request_timeout_s.is_finite()) {
            return Err(ConfigError(
                "server.request_timeout_s (OPSCASE_REQUEST_TIMEOUT_S) must be a positive number of seconds".into(),
            ));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(ConfigError(
                "server.body_limit_bytes (OPSCASE_BODY_LIMIT_BYTES) must be at least 1024".into(),
            ));
        }
        if self.server.max_in_flight == 0 {
            return Err(ConfigError(
                "server.max_in_flight (OPSCASE_MAX_IN_FLIGHT) must be at least 1".into(),
            ));
        }
        let rate = self.auth.rate_limit_per_second;
        if !(rate >= 0.0 && rate.is_finite()) || self.auth.rate_limit_burst < 1.0 {
            return Err(ConfigError(
                "auth.rate_limit_per_second (OPSCASE_RATE_LIMIT_PER_SECOND) must be >= 0 and \
                 auth.rate_limit_burst (OPSCASE_RATE_LIMIT_BURST) >= 1"
                    .into(),
            ));
        }
        if let Some(origin) = self
            .server
            .cors_allowed_origins
            .iter()
            .find(|o| !o.starts_with("http"))
        {
            return Err(ConfigError(format!(
                "server.cors_allowed_origins (OPSCASE_CORS_ALLOWED_ORIGINS): {origin:?} is not an origin like https://ops.example.com"
            )));
        }
        if self.idempotency.ttl_hours == 0 {
            return Err(ConfigError(
                "idempotency.ttl_hours (OPSCASE_IDEMPOTENCY_TTL_HOURS) must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The database URL in force: the configured one, or the SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.database.data_dir.join("opscase.db").display()
            )
        })
    }
}

fn set<T: FromStr>(
    slot: &mut T,
    name: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Some(text) = env(name) {
        *slot = text
            .parse()
            .map_err(|e| ConfigError(format!("{name}={text:?}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opscase.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1111\"\n[database]\npool_size = 3\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env_of(&[("OPSCASE_POOL_SIZE", "7")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 1111);
        assert_eq!(config.database.pool_size, 7);
        let flags = Overrides {
            listen: Some("127.0.0.1:2222".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::load(
            Some(&file),
            env_of(&[("OPSCASE_LISTEN", "127.0.0.1:3333")]),
            &flags,
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 2222);
    }

    #[test]
    fn errors_name_the_key() {
        let error = Config::load(
            None,
            env_of(&[("OPSCASE_POOL_SIZE", "many")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("OPSCASE_POOL_SIZE=\"many\""),
            "{error}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("opscase.toml");
        std::fs::write(&file, "[server]\nlisten_on = \"x\"\n").unwrap();
        let error = Config::load(Some(&file), env_of(&[]), &Overrides::default()).unwrap_err();
        assert!(error.to_string().contains("listen_on"), "{error}");

        let error = Config::load(
            None,
            env_of(&[("OPSCASE_DATABASE_URL", "mysql://x")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("OPSCASE_DATABASE_URL"),
            "{error}"
        );
    }

    #[test]
    fn the_bootstrap_key_never_shows_in_debug_output() {
        let config = Config::load(
            None,
            env_of(&[(
                "OPSCASE_BOOTSTRAP_ADMIN_KEY",
                "osk_very_secret_value_0123456789ab",
            )]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            config.auth.bootstrap_admin_key.as_ref().unwrap().expose(),
            "osk_very_secret_value_0123456789ab"
        );
        assert!(!format!("{config:?}").contains("very_secret"));
    }

    #[test]
    fn sqlite_in_the_data_dir_is_the_default() {
        let config = Config::load(
            None,
            env_of(&[("OPSCASE_DATA_DIR", "/tmp/x")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.database_url(), "sqlite:///tmp/x/opscase.db");
    }
}
