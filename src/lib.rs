//! The `opscase` service: configuration and the application that ties the crates together.

pub mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use api::{ApiSettings, AppState};
use orchestrator::{Bootstrap, Metrics, Orchestrator, Settings};
use tokio::net::TcpListener;

pub use config::{Config, LogFormat, Overrides};

/// A bound, migrated, ready-to-serve opscase.
pub struct Application {
    listener: TcpListener,
    orchestrator: Arc<Orchestrator>,
    settings: ApiSettings,
    bootstrap_key: Option<String>,
}

impl Application {
    /// Connect and migrate the database, make sure an admin key exists, then bind the listen
    /// address (port 0 picks a free one).
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let orchestrator = Arc::new(open_orchestrator(config).await?);
        orchestrator.refresh_gauges().await?;
        let supplied = config.auth.bootstrap_admin_key.as_ref().map(|k| k.expose());
        let bootstrap_key = match orchestrator.bootstrap_admin_key(supplied).await? {
            Bootstrap::Generated(key) => Some(key),
            Bootstrap::Supplied | Bootstrap::KeysExist => None,
        };
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (server.listen)", config.server.listen)
            })?;
        Ok(Self {
            listener,
            orchestrator,
            settings: ApiSettings {
                body_limit_bytes: config.server.body_limit_bytes,
                request_timeout: Duration::from_secs_f64(config.server.request_timeout_s),
                require_precondition: config.server.require_precondition,
                max_in_flight: config.server.max_in_flight,
                rate_limit_per_second: config.auth.rate_limit_per_second,
                rate_limit_burst: config.auth.rate_limit_burst,
                cors_allowed_origins: config.server.cors_allowed_origins.clone(),
            },
            bootstrap_key,
        })
    }

    /// The admin key a first start generated, if it did: to be shown once, then forgotten.
    pub fn take_bootstrap_key(&mut self) -> Option<String> {
        self.bootstrap_key.take()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn orchestrator(&self) -> Arc<Orchestrator> {
        self.orchestrator.clone()
    }

    /// Serve until `shutdown` completes, then finish in-flight requests and close the database.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = api::app(AppState::new(self.orchestrator.clone(), self.settings));
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("HTTP server failed")?;
        self.orchestrator.store().close().await;
        Ok(())
    }
}

/// The orchestrator on the configured database, migrated.
pub async fn open_orchestrator(config: &Config) -> anyhow::Result<Orchestrator> {
    let url = config.database_url();
    let store = orchestrator::connect(&url, config.database.pool_size)
        .await
        .with_context(|| format!("cannot open the database ({})", redact_url(&url)))?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    Ok(Orchestrator::new(
        store,
        Metrics::new(),
        Settings {
            idempotency_ttl: chrono_hours(config.idempotency.ttl_hours),
        },
    ))
}

fn chrono_hours(hours: u32) -> chrono::Duration {
    chrono::Duration::hours(i64::from(hours))
}

/// A database URL with its password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            super::redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            super::redact_url("sqlite://./data/x.db"),
            "sqlite://./data/x.db"
        );
    }
}
