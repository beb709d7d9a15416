//! The `opscase` service: configuration and the application that ties the crates together.

pub mod analyst_cli;
pub mod client;
pub mod config;
pub mod logging;
pub mod serve;
pub mod telemetry;
pub mod workers;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use api::{ApiSettings, AppState};
use bus::{JetStreamTransport, Transport};
use orchestrator::embedded::{OutboxPublisher, StoreClaims};
use orchestrator::{
    embedded_subscription, event_consumers, Bootstrap, EmbeddedTransport, EventHandler, InProgress,
    InProgressSettings, Metrics, Orchestrator, Relay, RelaySettings, Settings, Subscription,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub use config::{Config, LogFormat, Overrides};

/// A bound, migrated, ready-to-serve opscase.
pub struct Application {
    listener: TcpListener,
    /// Set when `server.tls_cert` and `server.tls_key` are: the listener then speaks HTTPS only.
    tls: Option<TlsAcceptor>,
    orchestrator: Arc<Orchestrator>,
    settings: ApiSettings,
    bootstrap_key: Option<String>,
    /// NATS JetStream when `bus.nats_url` is set; otherwise the embedded bus.
    nats: Option<Arc<JetStreamTransport>>,
    relay_settings: RelaySettings,
    /// `bus.relay_in_process`: publish (or, embedded, deliver) the outbox from this process.
    relay_in_process: bool,
    max_deliver: i64,
    /// Everything else the workers need (adapters, policy file, sources).
    config: Config,
    /// Signals in and evidence of cases.
    sensor: Arc<sensor::Sensor>,
    /// The analyst's rules over metric_1m.
    analyst: Arc<analyst::live::Watcher>,
    log_stores: Arc<sensor::logs::LogStores>,
    /// The knowledge base, with its vectors when `[librarian.embeddings]` is set.
    librarian: Arc<librarian::KnowledgeBase>,
}

impl Application {
    /// Load the TLS certificate and key when configured, connect and migrate the database, make
    /// sure an admin key exists, then bind the listen address (port 0 picks a free one).
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        // Before the database, so a bad certificate fails fast and touches nothing.
        let tls = config.server.tls_config()?.map(TlsAcceptor::from);
        let orchestrator = Arc::new(open_orchestrator(config).await?);
        orchestrator.refresh_gauges().await?;
        let supplied = config.auth.bootstrap_admin_key.as_ref().map(|k| k.expose());
        let bootstrap_key = match orchestrator.bootstrap_admin_key(supplied).await? {
            Bootstrap::Generated(key) => Some(key),
            Bootstrap::Supplied | Bootstrap::KeysExist => None,
        };
        let nats = match &config.bus.nats_url {
            Some(url) => Some(Arc::new(connect_bus(url, config).await?)),
            None => None,
        };
        let sensor = Arc::new(sensor::Sensor::new(
            orchestrator.clone(),
            config.sensor.settings(),
        ));
        let analyst = Arc::new(
            analyst::live::Watcher::new(
                &config.analyst.rules,
                config.analyst.live_settings(),
                orchestrator.store().pool(),
                sensor.clone(),
                &orchestrator.metrics().registry,
            )
            .context("analyst.rules")?,
        );
        let librarian = Arc::new(
            librarian::KnowledgeBase::open(
                orchestrator.store().pool(),
                Arc::new(librarian::KbMetrics::register(
                    &orchestrator.metrics().registry,
                )),
                config.librarian.embedding_settings(),
            )
            .await
            .context("knowledge base vectors (librarian.embeddings)")?,
        );
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (server.listen)", config.server.listen)
            })?;
        Ok(Self {
            listener,
            tls,
            orchestrator,
            settings: ApiSettings {
                body_limit_bytes: config.server.body_limit_bytes,
                body_buffer_bytes: config.server.body_buffer_bytes,
                request_timeout: Duration::from_secs_f64(config.server.request_timeout_s),
                body_read_timeout: Duration::from_secs_f64(config.server.body_read_timeout_s),
                require_precondition: config.server.require_precondition,
                max_in_flight: config.server.max_in_flight,
                rate_limit_per_second: config.auth.rate_limit_per_second,
                rate_limit_burst: config.auth.rate_limit_burst,
                cors_allowed_origins: config.server.cors_allowed_origins.clone(),
                trace_url: config.server.trace_url.clone(),
                metrics_auth: config.metrics.auth,
                command_wait: Duration::from_secs(config.workers.command_wait_s),
            },
            bootstrap_key,
            nats,
            relay_settings: config.bus.relay_settings(),
            relay_in_process: config.bus.relay_in_process,
            max_deliver: config.bus.max_deliver,
            sensor,
            analyst,
            librarian,
            log_stores: Arc::new(log_stores(config)),
            config: config.clone(),
        })
    }

    /// The orchestrator's consumers of worker events, when there is a bus.
    fn consumers(&self, stopped: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(transport) = &self.nats else {
            return Vec::new();
        };
        let handler: Arc<dyn bus::Handler> = Arc::new(EventHandler::new(self.orchestrator.clone()));
        let outputs: Arc<dyn bus::Handler> =
            Arc::new(sensor::outputs::StepOutputs::new(self.sensor.clone()));
        let metrics = self.orchestrator.metrics().clone();
        let on_dead_letter: Arc<dyn Fn(&str) + Send + Sync> =
            Arc::new(move |consumer| metrics.dead_letter(consumer));
        let step_outputs = bus::ConsumerSettings::new(
            sensor::outputs::CONSUMER,
            bus::STREAM_EVENTS,
            sensor::outputs::STEP_RESULT,
        );
        let case_documents = bus::ConsumerSettings::new(
            librarian::librarian::CONSUMER,
            bus::STREAM_EVENTS,
            workflow::TOPIC_CASE_OUTCOME,
        );
        event_consumers()
            .into_iter()
            .map(|settings| (settings, handler.clone()))
            .chain([
                (step_outputs, outputs),
                (case_documents, self.case_documents()),
            ])
            .map(|(mut settings, handler)| {
                settings.max_deliver = self.max_deliver;
                let run = bus::run_consumer(
                    transport.clone(),
                    settings,
                    handler,
                    on_dead_letter.clone(),
                    stopped.clone(),
                );
                tokio::spawn(async move {
                    if let Err(error) = run.await {
                        tracing::error!(error = %error, "event consumer stopped");
                    }
                })
            })
            .collect()
    }

    /// The Librarian's consumer of outcomes (`evt.case.outcome.v1`): a case that closes or parks
    /// is written down as a knowledge-base document.
    fn case_documents(&self) -> Arc<dyn bus::Handler> {
        Arc::new(librarian::CaseDocuments(librarian::Librarian::new(
            self.orchestrator.store().clone(),
        )))
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

    /// Whether `run_until` serves HTTPS (`https://` + `local_addr`) rather than plain HTTP.
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn orchestrator(&self) -> Arc<Orchestrator> {
        self.orchestrator.clone()
    }

    /// The in-process workers, each behind a handler that publishes its events: into the
    /// outbox on the embedded bus, straight to JetStream otherwise.
    async fn worker_handlers(&self) -> anyhow::Result<Vec<Arc<workers::WorkerHandler>>> {
        if !self.config.workers.in_process {
            return Ok(Vec::new());
        }
        type Wiring = (Arc<dyn bus::Claims>, Arc<dyn bus::Publisher>);
        let (claims, publisher): Wiring = match &self.nats {
            Some(nats) => (
                Arc::new(bus::StreamClaims::open(nats).await?),
                Arc::new(bus::TransportPublisher(nats.clone())),
            ),
            None => (
                Arc::new(StoreClaims(self.orchestrator.store().clone())),
                Arc::new(OutboxPublisher(self.orchestrator.clone())),
            ),
        };
        let built = workers::build(
            &self.config,
            &[workers::Role::All],
            &self.orchestrator,
            claims,
        )?;
        Ok(built
            .into_iter()
            .map(|worker| Arc::new(workers::WorkerHandler::new(worker, publisher.clone())))
            .collect())
    }

    /// Serve until `shutdown` completes, then finish in-flight requests and close the database.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let worker_handlers = self.worker_handlers().await?;
        let (stop_relay, relay_stopped) = watch::channel(false);
        // Long-running workers on the embedded bus: their commands stay in progress until done.
        let mut in_progress = Vec::new();
        let transport: Arc<dyn Transport> = match &self.nats {
            Some(nats) => nats.clone(),
            None => {
                let mut subscriptions = vec![
                    embedded_subscription(self.orchestrator.clone()),
                    Subscription {
                        consumer: sensor::outputs::CONSUMER.into(),
                        topics: vec![sensor::outputs::STEP_RESULT.into()],
                        handler: Arc::new(sensor::outputs::StepOutputs::new(self.sensor.clone())),
                    },
                    Subscription {
                        consumer: librarian::librarian::CONSUMER.into(),
                        topics: vec![workflow::TOPIC_CASE_OUTCOME.into()],
                        handler: self.case_documents(),
                    },
                ];
                for handler in &worker_handlers {
                    let (consumer, topics) = (handler.role(), handler.topics());
                    let handler: Arc<dyn bus::Handler> = if handler.long_running() {
                        let tracked = InProgress::new(
                            consumer,
                            handler.clone(),
                            self.orchestrator.store().clone(),
                            self.orchestrator.metrics().clone(),
                            InProgressSettings::new(
                                self.max_deliver,
                                self.orchestrator.store().backend()
                                    == orchestrator::Backend::Sqlite,
                            ),
                        );
                        in_progress.push(tracked.clone());
                        Arc::new(tracked)
                    } else {
                        handler.clone()
                    };
                    subscriptions.push(Subscription {
                        consumer: consumer.to_string(),
                        topics,
                        handler,
                    });
                }
                Arc::new(EmbeddedTransport::new(
                    self.orchestrator.store().clone(),
                    subscriptions,
                    self.orchestrator.metrics().clone(),
                    self.max_deliver,
                ))
            }
        };
        let mut consumers = self.consumers(&relay_stopped);
        if let Some(nats) = &self.nats {
            consumers.extend(worker_consumers(
                nats,
                &worker_handlers,
                self.max_deliver,
                self.orchestrator.metrics(),
                &relay_stopped,
            ));
        }
        let in_progress_runs: Vec<JoinHandle<()>> = in_progress
            .iter()
            .map(|tracked| {
                let (tracked, stopped) = (tracked.clone(), relay_stopped.clone());
                tokio::spawn(async move { tracked.run(stopped).await })
            })
            .collect();
        let watchdog = self.config.watchdog.enabled.then(|| {
            tokio::spawn(orchestrator::watchdog::run(
                self.orchestrator.clone(),
                self.config.watchdog.settings(),
                relay_stopped.clone(),
            ))
        });
        let analyst = tokio::spawn(self.analyst.clone().run(relay_stopped.clone()));
        let embedder = tokio::spawn(self.librarian.clone().run_embedder(
            librarian::EmbedderSettings::default(),
            relay_stopped.clone(),
        ));
        let relay = self.relay_in_process.then(|| {
            let relay = Relay::new(
                self.orchestrator.store().clone(),
                transport.clone(),
                self.orchestrator.metrics().clone(),
                self.orchestrator.outbox_written(),
                self.relay_settings.clone(),
            );
            tokio::spawn(relay.run(relay_stopped))
        });
        let drain = self.settings.request_timeout;
        let state = AppState::new(self.orchestrator.clone(), self.settings, Some(transport))
            .with_policy(Arc::new(workers::policy_source(&self.config)?))
            .with_metric_store(Arc::new(workers::metric_store(&self.orchestrator)))
            .with_sensor(self.sensor.clone(), self.log_stores.clone())
            .with_analyst(self.analyst.clone())
            .with_librarian(self.librarian.clone());
        let router = api::app(state);
        match self.tls {
            None => serve::serve(self.listener, router, shutdown, drain).await,
            Some(tls) => {
                serve::serve(
                    TlsListener::new(self.listener, tls)?,
                    router,
                    shutdown,
                    drain,
                )
                .await
            }
        }
        .context("HTTP server failed")?;
        // In-flight requests are done: let the relay and consumers finish the batch or message in
        // hand, then close the database.
        let _ = stop_relay.send(true);
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        for consumer in consumers {
            let _ = consumer.await;
        }
        if let Some(watchdog) = watchdog {
            let _ = watchdog.await;
        }
        let _ = analyst.await;
        let _ = embedder.await;
        for run in in_progress_runs {
            let _ = run.await;
        }
        for tracked in &in_progress {
            tracked.drain(WORKER_DRAIN_GRACE).await;
        }
        self.orchestrator.store().close().await;
        Ok(())
    }
}

/// Steps and verifications still running at shutdown get this long to finish.
const WORKER_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// A JetStream consumer on `OPS_CMD` per worker.
pub fn worker_consumers(
    nats: &Arc<JetStreamTransport>,
    handlers: &[Arc<workers::WorkerHandler>],
    max_deliver: i64,
    metrics: &Metrics,
    stopped: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let metrics = metrics.clone();
    let on_dead_letter: Arc<dyn Fn(&str) + Send + Sync> =
        Arc::new(move |consumer| metrics.dead_letter(consumer));
    handlers
        .iter()
        .map(|handler| {
            let run = bus::run_consumer(
                nats.clone(),
                handler.consumer_settings(max_deliver),
                handler.clone(),
                on_dead_letter.clone(),
                stopped.clone(),
            );
            let role = handler.role();
            tokio::spawn(async move {
                if let Err(error) = run.await {
                    tracing::error!(role, error = %error, "worker consumer stopped");
                }
            })
        })
        .collect()
}

/// A client gets this long to complete its TLS handshake; one that stalls is dropped rather
/// than holding a socket and a task for ever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Yields connections whose TLS handshake is done, so HTTPS goes through [`serve::serve`] with
/// exactly the plain listener's graceful shutdown. Handshakes run in tasks of their own: one
/// slow client must not hold up accepting the next.
struct TlsListener {
    local_addr: SocketAddr,
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, tls: TlsAcceptor) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, handshaken) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_tls(listener, tls, sender));
        Ok(Self {
            local_addr,
            handshaken,
            acceptor,
        })
    }
}

/// [`serve::serve`] drops its listener when shutdown starts. Aborting the acceptor closes the
/// port and abandons unfinished handshakes, as dropping a `TcpListener` does for plain HTTP.
impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The acceptor ends only when aborted, which happens after the last accept; there is
            // no error to report here, so never resolve rather than invent a connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_tls(
    mut listener: TcpListener,
    tls: TlsAcceptor,
    handshaken: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    // Owned here so that aborting this task aborts every handshake still in progress.
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            // axum's own accept: it retries, and backs off on errors such as EMFILE.
            (stream, peer) = axum::serve::Listener::accept(&mut listener) => {
                let tls = tls.clone();
                let handshaken = handshaken.clone();
                handshakes.spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = handshaken.send((stream, peer)).await;
                        }
                        // Scanners and plain-HTTP clients end up here: not worth a warning.
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            // Reap finished handshakes so the set holds only those in progress.
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
}

/// The log stores of `[sensor.loki]` and `[sensor.openobserve]`, masking with the redactor.
pub fn log_stores(config: &Config) -> sensor::logs::LogStores {
    let redactor = config.redactor();
    sensor::logs::LogStores::new(
        config.sensor.loki.clone(),
        config.sensor.openobserve(),
        Arc::new(move |text: &str| redactor.text(text)),
    )
}

/// Connect to NATS and make sure the streams exist; fails fast, naming the setting.
pub async fn connect_bus(url: &str, config: &Config) -> anyhow::Result<JetStreamTransport> {
    JetStreamTransport::connect(url, &config.bus.jetstream_settings())
        .await
        .with_context(|| format!("cannot use the bus at {url} (bus.nats_url, OPSCASE_NATS_URL)"))
}

/// The orchestrator on the configured database, migrated.
pub async fn open_orchestrator(config: &Config) -> anyhow::Result<Orchestrator> {
    // Before any SQLite connection opens: each one then has sqlite-vec's functions.
    librarian::sqlite_vec::register();
    let url = config.database_url();
    let store = orchestrator::connect_with(
        &url,
        orchestrator::PoolSettings {
            size: config.database.pool_size,
            acquire_timeout: Duration::from_secs_f64(config.database.pool_timeout_s),
            sqlite_durability: config.database.sqlite_synchronous,
        },
    )
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
            redactor: config.redactor(),
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
