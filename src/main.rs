use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use opscase::config::ConfigError;
use opscase::{Application, Config, LogFormat, Overrides};
use orchestrator::{NewApiKey, Role};
use uuid::Uuid;

/// jemalloc instead of the system allocator (glibc's malloc): glibc keeps what the service freed
/// in per-thread arenas and rarely gives it back, so the RSS stayed at its peak after a burst
/// (24 → 97 MiB after bad input, bench/results/memory-*.md). jemalloc hands it back (below);
/// mimalloc, tried too, kept 157 MiB after the same burst and started at 42 MiB idle.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, compiled in (`_RJEM_MALLOC_CONF` in the environment adds to them):
/// `dirty_decay_ms:0,muzzy_decay_ms:0` hand freed pages back to the OS as soon as they are
/// freed (`MADV_DONTNEED`), rather than keeping them for reuse for a while (default 10 s) or
/// marking them lazily reclaimable (`MADV_FREE`, which keeps counting in the RSS). Tried
/// against a 1 s decay with jemalloc's background purging thread, same binary, same run: that
/// one peaked at 312 MiB under bad input (this one 106) and stayed at 43 MiB 30 s later (this
/// one 37); transitions/s were within the run-to-run noise (bench/results/memory-*.md).
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: JemallocConf = JemallocConf(c"dirty_decay_ms:0,muzzy_decay_ms:0".as_ptr());

/// The `const char *` jemalloc reads its compiled-in options from.
#[cfg(feature = "jemalloc")]
#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);

// SAFETY: it points at a string literal, which is immutable and lives for the whole program.
#[cfg(feature = "jemalloc")]
unsafe impl Sync for JemallocConf {}

#[derive(Parser)]
#[command(name = "opscase", version, about = "AI-ops case orchestrator")]
struct Cli {
    /// Configuration file (default: ./opscase.toml when present).
    #[arg(long, global = true, env = "OPSCASE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: json (default) or text.
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    /// The service a client command (case, evidence, plan, kb search) talks to.
    #[arg(
        long,
        global = true,
        env = "OPSCASE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// The API key a client command sends (`Authorization: Bearer`).
    #[arg(long, global = true, env = "OPSCASE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// How a client command prints: table (for people) or json (the API's answer). (The long
    /// form is `--format`: `analyst score --output` names its file.)
    #[arg(
        short = 'o',
        long = "format",
        global = true,
        value_enum,
        default_value = "table"
    )]
    format: opscase::client::Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (SQLite in --data-dir unless OPSCASE_DATABASE_URL names PostgreSQL).
    Serve {
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// PEM certificate chain: serve HTTPS instead of HTTP (needs --tls-key).
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// Leave the planner, gatekeeper, executor and verifier to `opscase worker` processes.
        #[arg(long)]
        no_workers: bool,
    },
    /// Run worker roles against the bus (needs OPSCASE_NATS_URL; `serve` runs them in-process).
    Worker {
        /// planner, gatekeeper, executor, verifier or all; repeat for several.
        #[arg(long = "role", required = true, value_enum)]
        roles: Vec<opscase::workers::Role>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run only the outbox relay (needs OPSCASE_NATS_URL); `serve` runs one in-process too.
    Relay {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Manage API keys directly in the database (the same as /v1/keys for admins).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// The knowledge base (the Librarian).
    Kb {
        #[command(subcommand)]
        action: KbAction,
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// The Analyst's detectors, offline.
    Analyst {
        #[command(subcommand)]
        action: AnalystAction,
    },
    /// Cases on a running service (over its REST API: --url, --key).
    Case {
        #[command(subcommand)]
        action: opscase::client::CaseAction,
    },
    /// Evidence on a running service's cases.
    Evidence {
        #[command(subcommand)]
        action: opscase::client::EvidenceAction,
    },
    /// Plans on a running service's cases.
    Plan {
        #[command(subcommand)]
        action: opscase::client::PlanAction,
    },
    /// Print a shell completion script: `opscase completions bash > /etc/bash_completion.d/opscase`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the OpenAPI document (the committed copy is openapi/openapi.json).
    Openapi,
    /// Print the Mermaid state diagram generated from the transition table.
    StateDiagram,
}

#[derive(Subcommand)]
enum AnalystAction {
    /// Score a CSV of `timestamp,value` rows: writes `timestamp,value,anomaly_score`, one row
    /// per input row, each score from the rows before it only (the NAB interface).
    Score {
        /// default (the default), threshold, robust_z, ewma or seasonal.
        #[arg(long)]
        detector: Option<String>,
        /// A detector parameter, as in a rule's `detector` table; repeat for several.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        #[arg(long, value_name = "IN.csv")]
        input: PathBuf,
        #[arg(long, value_name = "OUT.csv")]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum KbAction {
    /// Import every Markdown page under DIR (index pages skipped): new and changed pages are
    /// written, unchanged ones left alone; each is known by its path relative to DIR.
    Import {
        dir: PathBuf,
        /// The tenant the pages belong to; without it they are global.
        #[arg(long)]
        tenant: Option<String>,
        /// The source the pages are filed under.
        #[arg(long, default_value = "runbooks")]
        source: String,
        /// Also remove the source's documents (for this tenant) whose page is gone from DIR.
        #[arg(long)]
        prune: bool,
    },
    /// Write down every CLOSED and PARKED case as a document of source `cases` (the service
    /// does this as each case closes or parks; this catches up on cases that ended before).
    Cases {
        /// Only this tenant's cases.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Search a running service's knowledge base (over its REST API: --url, --key).
    Search {
        query: String,
        /// How many chunks.
        #[arg(long, default_value_t = 5)]
        k: u32,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print its secret (once).
    Create {
        #[arg(long)]
        name: String,
        /// viewer, operator, approver, admin, metrics, sensor or librarian; repeat for several.
        #[arg(long = "role", required = true, value_parser = parse_role)]
        roles: Vec<Role>,
        /// Confine the key to one tenant's cases.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime such as 90d, 12h, 30m.
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<chrono::Duration>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key: it is refused from the next request on.
    Revoke { id: Uuid },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let target = opscase::client::Target {
        url: cli.url.clone(),
        key: cli.key.clone(),
        output: cli.format,
    };
    match cli.command {
        Command::Case { action } => client(opscase::client::case(&target, action)),
        Command::Evidence { action } => client(opscase::client::evidence(&target, action)),
        Command::Plan { action } => client(opscase::client::plan(&target, action)),
        Command::Kb {
            action: KbAction::Search { query, k },
            ..
        } => client(opscase::client::kb_search(&target, &query, k)),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "opscase",
                &mut script,
            );
            // A closed pipe (`| head`) is the reader's choice, not a failure.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            ExitCode::SUCCESS
        }
        Command::Openapi => {
            print!("{}", api::openapi::document_json());
            ExitCode::SUCCESS
        }
        Command::StateDiagram => {
            print!("{}", workflow::mermaid_state_diagram());
            ExitCode::SUCCESS
        }
        Command::Analyst {
            action:
                AnalystAction::Score {
                    detector,
                    params,
                    input,
                    output,
                },
        } => match opscase::analyst_cli::score(detector.as_deref(), &params, &input, &output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("opscase analyst score: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Serve {
            listen,
            data_dir,
            tls_cert,
            tls_key,
            no_workers,
        } => run(
            &cli.config,
            Overrides {
                listen,
                data_dir,
                log_format: cli.log_format,
                tls_cert,
                tls_key,
                no_workers,
            },
            true,
        ),
        Command::Worker { roles, data_dir } => worker(
            &cli.config,
            Overrides {
                data_dir,
                log_format: cli.log_format,
                ..Overrides::default()
            },
            &roles,
        ),
        Command::Migrate { data_dir } => run(
            &cli.config,
            Overrides {
                data_dir,
                log_format: cli.log_format,
                ..Overrides::default()
            },
            false,
        ),
        Command::Relay { data_dir } => relay(
            &cli.config,
            Overrides {
                data_dir,
                log_format: cli.log_format,
                ..Overrides::default()
            },
        ),
        Command::Kb { action, data_dir } => kb(
            &cli.config,
            Overrides {
                data_dir,
                log_format: cli.log_format,
                ..Overrides::default()
            },
            action,
        ),
        Command::Keys { action, data_dir } => keys(
            &cli.config,
            Overrides {
                data_dir,
                log_format: cli.log_format,
                ..Overrides::default()
            },
            action,
        ),
    }
}

/// Run a client command: its answer on stdout, or its failure as one line on stderr and exit
/// code 1.
fn client(
    command: impl std::future::Future<Output = Result<String, opscase::client::ClientError>>,
) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(command) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("opscase: {error}");
            ExitCode::FAILURE
        }
    }
}

fn keys(config_file: &Option<PathBuf>, overrides: Overrides, action: KeysAction) -> ExitCode {
    let config = match load_config(config_file, &overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let orchestrator = opscase::open_orchestrator(&config).await?;
        match action {
            KeysAction::Create {
                name,
                roles,
                tenant,
                expires_in,
            } => {
                let (key, secret) = orchestrator
                    .create_key(NewApiKey {
                        name,
                        roles,
                        tenant,
                        expires_at: expires_in.map(|d| chrono::Utc::now() + d),
                        created_by: "cli".into(),
                    })
                    .await?;
                println!(
                    "created key {} ({}); its secret is shown only now:",
                    key.id, key.name
                );
                println!("{secret}");
            }
            KeysAction::List => {
                println!(
                    "{:<36}  {:<24}  {:<24}  {:<12}  {:<20}  state",
                    "id", "name", "roles", "tenant", "expires"
                );
                let now = chrono::Utc::now();
                for key in orchestrator.list_keys().await? {
                    let roles: Vec<&str> = key.roles.iter().map(|r| r.as_str()).collect();
                    let state = if key.revoked_at.is_some() {
                        "revoked"
                    } else if key.is_usable(now) {
                        "active"
                    } else {
                        "expired"
                    };
                    println!(
                        "{:<36}  {:<24}  {:<24}  {:<12}  {:<20}  {state}",
                        key.id,
                        key.name,
                        roles.join(","),
                        key.tenant.as_deref().unwrap_or("*"),
                        key.expires_at
                            .map_or("never".into(), |at| at.format("%Y-%m-%d %H:%M").to_string()),
                    );
                }
            }
            KeysAction::Revoke { id } => {
                let key = orchestrator.revoke_key(id).await?;
                println!("revoked key {} ({})", key.id, key.name);
            }
        }
        orchestrator.store().close().await;
        Ok(())
    });
    exit_code(result)
}

fn kb(config_file: &Option<PathBuf>, overrides: Overrides, action: KbAction) -> ExitCode {
    let config = match load_config(config_file, &overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let orchestrator = opscase::open_orchestrator(&config).await?;
        match action {
            KbAction::Import {
                dir,
                tenant,
                source,
                prune,
            } => {
                if let Some(tenant) = &tenant {
                    anyhow::ensure!(
                        api::contract::is_tenant(tenant),
                        "--tenant must be 1 to 64 of A-Z a-z 0-9 - _ ."
                    );
                }
                let store = librarian::KbStore::new(orchestrator.store().pool().clone());
                let report =
                    librarian::import_dir(&store, &dir, tenant.as_deref(), &source, prune).await?;
                println!(
                    "imported {}: {} created, {} updated, {} unchanged, {} pruned; {} chunks written",
                    dir.display(),
                    report.created,
                    report.updated,
                    report.unchanged,
                    report.pruned,
                    report.chunks_written
                );
            }
            KbAction::Cases { tenant } => {
                let report = librarian::Librarian::new(orchestrator.store().clone())
                    .sweep(tenant.as_deref())
                    .await?;
                println!(
                    "cases written down: {} created, {} updated, {} unchanged",
                    report.created, report.updated, report.unchanged
                );
            }
            KbAction::Search { .. } => unreachable!("a client command: main runs it"),
        }
        orchestrator.store().close().await;
        Ok(())
    });
    exit_code(result)
}

fn relay(config_file: &Option<PathBuf>, overrides: Overrides) -> ExitCode {
    let config = match load_config(config_file, &overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some(url) = config.bus.nats_url.clone() else {
        eprintln!("opscase: configuration: the relay needs bus.nats_url (OPSCASE_NATS_URL)");
        return ExitCode::from(2);
    };
    opscase::logging::init(&config);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let orchestrator = opscase::open_orchestrator(&config).await?;
        let transport = Arc::new(opscase::connect_bus(&url, &config).await?);
        // Commits happen in other processes: the poll interval finds their rows.
        let relay = orchestrator::Relay::new(
            orchestrator.store().clone(),
            transport,
            orchestrator.metrics().clone(),
            Arc::new(tokio::sync::Notify::new()),
            config.bus.relay_settings(),
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            opscase::shutdown_signal().await;
            let _ = stop.send(true);
        });
        tracing::info!(bus = %url, database = %opscase::redact_url(&config.database_url()), "opscase relay is running");
        relay.run(stopped).await;
        orchestrator.store().close().await;
        Ok(())
    });
    // Spans of the last moments still go out (when OTLP export is on).
    opscase::telemetry::shutdown_global();
    exit_code(result)
}

fn worker(
    config_file: &Option<PathBuf>,
    overrides: Overrides,
    roles: &[opscase::workers::Role],
) -> ExitCode {
    let config = match load_config(config_file, &overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some(url) = config.bus.nats_url.clone() else {
        eprintln!("opscase: configuration: workers need bus.nats_url (OPSCASE_NATS_URL)");
        return ExitCode::from(2);
    };
    let audits_model_calls =
        opscase::workers::Role::uses_model(roles) && config.llm.base_url.is_some();
    if audits_model_calls && config.database.url.is_none() {
        eprintln!(
            "opscase: configuration: the model calls of the planner, the gatekeeper and the \
             analyst are audited in the service's database (llm_call); set database.url \
             (OPSCASE_DATABASE_URL)"
        );
        return ExitCode::from(2);
    }
    if opscase::workers::Role::reads_database(roles) && config.database.url.is_none() {
        // A local SQLite file would hold no metrics: the API writes them to the shared database.
        eprintln!(
            "opscase: configuration: the verifier and the analyst read metric_1m (and the \
             analyst its other tables), and the planner the knowledge base, from the service's \
             database; set database.url (OPSCASE_DATABASE_URL)"
        );
        return ExitCode::from(2);
    }
    opscase::logging::init(&config);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let result: anyhow::Result<()> = runtime.block_on(async {
        // The database serves the verifier's and the analyst's tables; workers never touch the
        // case tables.
        let orchestrator = opscase::open_orchestrator(&config).await?;
        let transport = Arc::new(opscase::connect_bus(&url, &config).await?);
        let claims = Arc::new(bus::StreamClaims::open(&transport).await?);
        let publisher: Arc<dyn bus::Publisher> =
            Arc::new(bus::TransportPublisher(transport.clone()));
        let handlers: Vec<_> = opscase::workers::build(&config, roles, &orchestrator, claims)?
            .into_iter()
            .map(|w| Arc::new(opscase::workers::WorkerHandler::new(w, publisher.clone())))
            .collect();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let consumers = opscase::worker_consumers(
            &transport,
            &handlers,
            config.bus.max_deliver,
            orchestrator.metrics(),
            &stopped,
        );
        let names: Vec<&str> = handlers.iter().map(|h| h.role()).collect();
        tracing::info!(bus = %url, roles = %names.join(","), "opscase worker is running");
        opscase::shutdown_signal().await;
        let _ = stop.send(true);
        // Each consumer finishes the commands in hand before it returns.
        for consumer in consumers {
            let _ = consumer.await;
        }
        orchestrator.store().close().await;
        Ok(())
    });
    // Spans of the last moments still go out (when OTLP export is on).
    opscase::telemetry::shutdown_global();
    exit_code(result)
}

/// The configuration, or the exit code (2) after saying which setting is wrong.
fn load_config(config_file: &Option<PathBuf>, overrides: &Overrides) -> Result<Config, ExitCode> {
    Config::load(
        config_file.as_deref(),
        |name| std::env::var(name).ok(),
        overrides,
    )
    .map_err(|error| {
        eprintln!("opscase: {error}");
        ExitCode::from(2)
    })
}

/// Success, or the error and its causes on stderr.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("opscase: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| {
        format!("{text:?} is not one of viewer, operator, approver, admin, metrics, sensor")
    })
}

fn parse_lifetime(text: &str) -> Result<chrono::Duration, String> {
    let invalid = || format!("{text:?} is not a lifetime like 90d, 12h or 30m");
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let amount: i64 = number.parse().map_err(|_| invalid())?;
    match unit {
        "d" => Ok(chrono::Duration::days(amount)),
        "h" => Ok(chrono::Duration::hours(amount)),
        "m" => Ok(chrono::Duration::minutes(amount)),
        _ => Err(invalid()),
    }
}

fn run(config_file: &Option<PathBuf>, overrides: Overrides, serve: bool) -> ExitCode {
    let config = match load_config(config_file, &overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    opscase::logging::init(&config);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let result = runtime.block_on(async {
        if !serve {
            // Only the schema: no port, no keys, so it also runs beside a live server.
            let orchestrator = opscase::open_orchestrator(&config).await?;
            orchestrator.store().close().await;
            tracing::info!(database = %opscase::redact_url(&config.database_url()), "migrations applied");
            return Ok(());
        }
        let mut app = Application::build(&config).await?;
        if let Some(key) = app.take_bootstrap_key() {
            // Printed, never logged: this line is the only place the key will ever appear.
            println!("opscase: first start: created an admin API key (shown only this once): {key}");
        }
        let scheme = if app.serves_tls() { "https" } else { "http" };
        tracing::info!(
            address = %format!("{scheme}://{}", app.local_addr()),
            database = %opscase::redact_url(&config.database_url()),
            "opscase is ready"
        );
        app.run_until(opscase::shutdown_signal()).await
    });
    // Spans of the last moments still go out (when OTLP export is on).
    opscase::telemetry::shutdown_global();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "opscase stopped");
            eprintln!("opscase: {error:#}");
            // A setting that is only found wrong at start-up (an unreadable TLS file) exits
            // like one that `Config::load` refuses.
            if error.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks a subcommand's arguments only when it is parsed: check them all, so that a
    /// global flag never collides with a subcommand's own (`analyst score --output`).
    #[test]
    fn every_subcommand_s_arguments_are_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
