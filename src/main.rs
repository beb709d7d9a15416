use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use opscase::{Application, Config, LogFormat, Overrides};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "opscase", version, about = "AI-ops case orchestrator")]
struct Cli {
    /// Configuration file (default: ./opscase.toml when present).
    #[arg(long, global = true, env = "OPSCASE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: json (default) or text.
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
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
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print the OpenAPI document (the committed copy is openapi/openapi.json).
    Openapi,
    /// Print the Mermaid state diagram generated from the transition table.
    StateDiagram,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            print!("{}", api::openapi::document_json());
            ExitCode::SUCCESS
        }
        Command::StateDiagram => {
            print!("{}", workflow::mermaid_state_diagram());
            ExitCode::SUCCESS
        }
        Command::Serve { listen, data_dir } => run(
            &cli.config,
            Overrides {
                listen,
                data_dir,
                log_format: cli.log_format,
            },
            true,
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
    }
}

fn run(config_file: &Option<PathBuf>, overrides: Overrides, serve: bool) -> ExitCode {
    let config = match Config::load(
        config_file.as_deref(),
        |name| std::env::var(name).ok(),
        &overrides,
    ) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("opscase: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let result = runtime.block_on(async {
        let app = Application::build(&config).await?;
        if serve {
            tracing::info!(
                address = %format!("http://{}", app.local_addr()),
                database = %opscase::redact_url(&config.database_url()),
                "opscase is ready"
            );
            app.run_until(opscase::shutdown_signal()).await
        } else {
            tracing::info!(database = %opscase::redact_url(&config.database_url()), "migrations applied");
            Ok(())
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "opscase stopped");
            eprintln!("opscase: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}
