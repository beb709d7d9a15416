//! kb-bench: the knowledge base (Librarian) on both backends. Run on demand (never by
//! `cargo test`):
//!
//! ```sh
//! cargo run --release -p opscase-bench --bin kb-bench
//! ```
//!
//! - Import rate (chunks/s) of the shared runbooks corpus and of synthetic corpora grown from
//!   it (default about 1,000 and 100,000 chunks: the pages, then copies with their alert names
//!   renamed and about one body word in five swapped for another word of the corpus).
//! - Search latency (p50/p99) at those sizes, lexical and hybrid; the hybrid runs use an
//!   in-process embeddings stand-in (hashed bag of words), so only their latency means
//!   anything.
//! - Retrieval quality on the real corpus: for every kube-prometheus alert with a runbook page
//!   (`alerts.tsv`), the query with name, summary and description, and with summary and
//!   description alone: recall@1, recall@3 and MRR (lexical), counted by document.
//!
//! Each backend gets a fresh database per corpus (a temp file; `opscase_bench_<random>` on
//! PostgreSQL, dropped after).

mod corpus;
mod standin;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use clap::Parser;
use librarian::{
    import_dir, EmbedderSettings, EmbeddingSettings, Hit, KbMetrics, KnowledgeBase, SearchFilter,
    Vectors,
};
use opscase_bench::format::{met, ms, thousands, write_results};
use opscase_bench::setup::{machine_facts, BenchDatabase};
use opscase_bench::stats::{round3, Summary};
use orchestrator::{SqlPool, Store};
use serde_json::{json, Value};

use corpus::{Alert, Page, SOURCE};

#[derive(Parser)]
#[command(
    name = "kb-bench",
    about = "Import rate, search latency and retrieval quality of the knowledge base"
)]
struct Cli {
    /// Backends, comma-separated: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<Engine>,
    /// Synthetic corpus sizes in chunks, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
    sizes: Vec<usize>,
    /// The runbooks corpus (Markdown, one page per alert).
    #[arg(long, default_value = "../shared/corpora/runbooks")]
    corpus: PathBuf,
    /// Measured passes over the query set per corpus and mode (after one warm-up pass).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Hits asked for per search.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Lexical search only (no embeddings stand-in).
    #[arg(long)]
    no_hybrid: bool,
    /// Retrieval quality only (no synthetic corpora, no latency).
    #[arg(long)]
    quality_only: bool,
    /// Leave the databases in place (their URLs are printed), to look into them.
    #[arg(long)]
    keep_databases: bool,
    /// Dimensions of the stand-in's vectors.
    #[arg(long, default_value_t = 384)]
    dimensions: usize,
    /// Longest wait for every chunk of a corpus to get its vector; the hybrid search is
    /// measured over what is embedded by then (and the report says so).
    #[arg(long, default_value_t = 900)]
    embed_timeout_s: u64,
    /// A PostgreSQL database to connect to for CREATE / DROP DATABASE (loopback only).
    #[arg(
        long,
        env = "OPSCASE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Directory for kb-<UTC timestamp>.json and .md.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// Targets from the issue.
const TARGET_P99_MS: f64 = 20.0;
const TARGET_P99_AT: usize = 100_000;
const TARGET_R1_WITH_NAME: f64 = 0.98;
const TARGET_R1_WITHOUT_NAME: f64 = 0.93;
/// Chunks fetched per quality query, to rank documents beyond the first few.
const QUALITY_DEPTH: usize = 50;

/// A fresh database of one backend.
struct Db {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<BenchDatabase>,
    keep: bool,
}

impl Db {
    async fn open(engine: Engine, cli: &Cli) -> anyhow::Result<Self> {
        let admin_url = cli.postgres_url.as_str();
        let (url, dir, postgres) = match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("kb.db").display());
                // A kept database's directory outlives the run.
                let dir = if cli.keep_databases {
                    eprintln!("kb-bench: keeping {url}");
                    let _ = dir.keep();
                    None
                } else {
                    Some(dir)
                };
                (url, dir, None)
            }
            Engine::Postgres => {
                let database = BenchDatabase::create(admin_url).await?;
                (database.url.clone(), None, Some(database))
            }
        };
        let store = orchestrator::connect(&url, 4)
            .await
            .with_context(|| format!("cannot open {url}"))?;
        store.migrate().await.context("migrate")?;
        Ok(Self {
            store,
            _dir: dir,
            postgres,
            keep: cli.keep_databases,
        })
    }

    fn pool(&self) -> SqlPool {
        self.store.pool()
    }

    async fn close(self) {
        match self.store.pool() {
            SqlPool::Sqlite(pool) => pool.close().await,
            SqlPool::Postgres(pool) => pool.close().await,
        }
        match &self.postgres {
            Some(database) if self.keep => eprintln!("kb-bench: kept {}", database.url),
            Some(database) => database.drop_database().await,
            None => {}
        }
    }
}

fn metrics() -> Arc<KbMetrics> {
    Arc::new(KbMetrics::register(&prometheus::Registry::new()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    librarian::sqlite_vec::register();
    let started_at = Utc::now();
    let pages = corpus::pages(&cli.corpus)?;
    if pages.is_empty() {
        bail!("no Markdown pages under {}", cli.corpus.display());
    }
    let alerts = corpus::alerts();
    let missing: Vec<_> = alerts
        .iter()
        .filter(|alert| !pages.iter().any(|page| page.stem == alert.name))
        .map(|alert| alert.name.clone())
        .collect();
    if !missing.is_empty() {
        bail!("alerts without a runbook page in the corpus: {missing:?}");
    }
    let facts = machine_facts(&cli.postgres_url, None).await?;
    let standin = if cli.no_hybrid {
        None
    } else {
        Some(standin::StandIn::start(cli.dimensions).await?)
    };

    let mut quality = Vec::new();
    let mut scale = Vec::new();
    for &engine in &cli.backends {
        eprintln!("kb-bench: {}: the runbooks corpus", engine.name());
        quality.push(run_quality(engine, &cli, &alerts).await?);
        let sizes: &[usize] = if cli.quality_only { &[] } else { &cli.sizes };
        for &size in sizes {
            eprintln!(
                "kb-bench: {}: {} chunks",
                engine.name(),
                thousands(size as u64)
            );
            scale.push(run_scale(engine, size, &cli, &pages, &alerts, standin.as_ref()).await?);
        }
    }

    let report = json!({
        "bench": "kb",
        "started_at": started_at.to_rfc3339(),
        "finished_at": Utc::now().to_rfc3339(),
        "machine": facts,
        "settings": {
            "corpus": cli.corpus.display().to_string(),
            "pages": pages.len(),
            "alerts": alerts.len(),
            "k": cli.k,
            "rounds": cli.rounds,
            "embeddings": if cli.no_hybrid { Value::Null } else { json!({
                "endpoint": "in-process stand-in (hashed bag of words), not a model",
                "dimensions": cli.dimensions,
            }) },
        },
        "targets": {
            "search_p99_ms_at_100000": TARGET_P99_MS,
            "recall_at_1_with_name": TARGET_R1_WITH_NAME,
            "recall_at_1_summary_description": TARGET_R1_WITHOUT_NAME,
        },
        "quality": quality,
        "scale": scale,
    });
    let markdown = markdown(&report);
    let paths = write_results(&cli.out, "kb", started_at, &report, &markdown)?;
    println!("{markdown}");
    for path in paths {
        eprintln!("kb-bench: wrote {}", path.display());
    }
    Ok(())
}

/// The runbooks imported as they are (timed), then every alert's two queries.
async fn run_quality(engine: Engine, cli: &Cli, alerts: &[Alert]) -> anyhow::Result<Value> {
    let db = Db::open(engine, cli).await?;
    let kb = KnowledgeBase::lexical(db.pool(), metrics());
    let started = Instant::now();
    let imported = import_dir(kb.store(), &cli.corpus, None, SOURCE, false).await?;
    let seconds = started.elapsed().as_secs_f64();
    let chunks = imported.chunks_written;
    let mut modes = Vec::new();
    for (mode, with_name) in [
        ("name_summary_description", true),
        ("summary_description", false),
    ] {
        let mut ranks = Vec::new();
        let mut misses = Vec::new();
        for alert in alerts {
            let query = if with_name {
                alert.with_name()
            } else {
                alert.without_name()
            };
            let hits = kb
                .search(&query, QUALITY_DEPTH, &SearchFilter::default())
                .await?;
            let docs = ranked_documents(&hits);
            let rank = docs
                .iter()
                .position(|stem| *stem == alert.name)
                .map(|i| i + 1);
            if rank != Some(1) {
                misses.push(json!({
                    "alert": alert.name,
                    "rank": rank,
                    "first": docs.first(),
                }));
            }
            ranks.push(rank);
        }
        let n = ranks.len() as f64;
        let at = |k: usize| ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / n;
        let mrr = ranks
            .iter()
            .map(|r| r.map_or(0.0, |r| 1.0 / r as f64))
            .sum::<f64>()
            / n;
        let target = if with_name {
            TARGET_R1_WITH_NAME
        } else {
            TARGET_R1_WITHOUT_NAME
        };
        modes.push(json!({
            "query": mode,
            "alerts": ranks.len(),
            "recall_at_1": round3(at(1)),
            "recall_at_3": round3(at(3)),
            "mrr": round3(mrr),
            "target_recall_at_1": target,
            "met": at(1) >= target,
            "misses": misses,
        }));
    }
    db.close().await;
    Ok(json!({
        "backend": engine.name(),
        "documents": imported.created,
        "chunks": chunks,
        "import_seconds": round3(seconds),
        "import_chunks_per_s": (chunks as f64 / seconds).round(),
        "modes": modes,
    }))
}

/// The documents of `hits` (by file stem), best first, each once.
fn ranked_documents(hits: &[Hit]) -> Vec<String> {
    let mut docs: Vec<String> = Vec::new();
    for hit in hits {
        let stem = Path::new(&hit.url)
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !docs.contains(&stem) {
            docs.push(stem);
        }
    }
    docs
}

/// A synthetic corpus of about `size` chunks: import rate, then lexical and hybrid latency.
async fn run_scale(
    engine: Engine,
    size: usize,
    cli: &Cli,
    pages: &[Page],
    alerts: &[Alert],
    standin: Option<&standin::StandIn>,
) -> anyhow::Result<Value> {
    let docs = corpus::synthetic(pages, size);
    let chunks: usize = docs.iter().map(|doc| doc.chunks.len()).sum();
    let db = Db::open(engine, cli).await?;
    let kb = KnowledgeBase::lexical(db.pool(), metrics());
    let started = Instant::now();
    for doc in &docs {
        kb.store().upsert(doc, Utc::now()).await?;
    }
    let import_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "kb-bench: {}: {} chunks imported in {:.1} s",
        engine.name(),
        thousands(chunks as u64),
        import_seconds
    );
    let queries: Vec<String> = alerts
        .iter()
        .flat_map(|alert| [alert.with_name(), alert.without_name()])
        .collect();
    let lexical = latency(&kb, &queries, cli.k, cli.rounds).await?;

    let mut hybrid = Value::Null;
    if let Some(standin) = standin {
        let settings = EmbeddingSettings {
            base_url: standin.base_url.clone(),
            model: standin::MODEL.into(),
            dimensions: cli.dimensions,
            send_dimensions: true,
            batch_size: 128,
            timeout: Duration::from_secs(10),
            api_key: None,
        };
        let kb = Arc::new(KnowledgeBase::open(db.pool(), metrics(), Some(settings)).await?);
        hybrid = match kb.vectors().clone() {
            Vectors::Ready { index, .. } => {
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let embedder = tokio::spawn(
                    kb.clone()
                        .run_embedder(EmbedderSettings::default(), stopped),
                );
                let started = Instant::now();
                let deadline = started + Duration::from_secs(cli.embed_timeout_s);
                let mut embedded = index.count().await?;
                while (embedded as usize) < chunks && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    embedded = index.count().await?;
                }
                let embed_seconds = started.elapsed().as_secs_f64();
                let _ = stop.send(true);
                let _ = embedder.await;
                eprintln!(
                    "kb-bench: {}: {} of {} chunks embedded in {:.1} s",
                    engine.name(),
                    thousands(embedded as u64),
                    thousands(chunks as u64),
                    embed_seconds
                );
                let searches = latency(&kb, &queries, cli.k, cli.rounds).await?;
                json!({
                    "chunks_embedded": embedded,
                    "all_embedded": embedded as usize >= chunks,
                    "embed_seconds": round3(embed_seconds),
                    "vectors_per_s": (embedded as f64 / embed_seconds).round(),
                    "errors": kb.metrics().embedding_errors(),
                    "search_ms": searches,
                })
            }
            Vectors::Unavailable(reason) => json!({ "unavailable": reason }),
            Vectors::Off => Value::Null,
        };
    }
    db.close().await;
    Ok(json!({
        "backend": engine.name(),
        "target_chunks": size,
        "documents": docs.len(),
        "chunks": chunks,
        "import_seconds": round3(import_seconds),
        "import_chunks_per_s": (chunks as f64 / import_seconds).round(),
        "lexical_search_ms": lexical,
        "hybrid": hybrid,
    }))
}

/// One warm-up pass over `queries`, then `rounds` measured passes, one search at a time.
async fn latency(
    kb: &KnowledgeBase,
    queries: &[String],
    k: usize,
    rounds: usize,
) -> anyhow::Result<Value> {
    let filter = SearchFilter::default();
    for query in queries {
        kb.search(query, k, &filter).await?;
    }
    let mut samples = Vec::with_capacity(queries.len() * rounds);
    for _ in 0..rounds {
        for query in queries {
            let started = Instant::now();
            let hits = kb.search(query, k, &filter).await?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
            std::hint::black_box(hits);
        }
    }
    Ok(Summary::of(samples).map_or(Value::Null, Summary::to_json))
}

fn markdown(report: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# kb-bench — {}\n\n",
        report["started_at"].as_str().unwrap_or_default()
    ));
    let machine = &report["machine"];
    out.push_str(&format!(
        "Machine: {} cores ({}), {} GiB; PostgreSQL {}; commit {}.\n\n",
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["mem_total_gib"],
        machine["postgres"]["server_version"]
            .as_str()
            .unwrap_or("?"),
        machine["git_commit"].as_str().unwrap_or("?"),
    ));
    let settings = &report["settings"];
    out.push_str(&format!(
        "Searches one at a time, k = {}, over the alert set's {} queries (each alert with its \
         name, and summary + description alone): one warm-up pass, then {} measured passes. ",
        settings["k"],
        settings["alerts"].as_u64().unwrap_or(0) * 2,
        settings["rounds"],
    ));
    if settings["embeddings"].is_null() {
        out.push_str("Lexical search only (`--no-hybrid`).\n\n");
    } else {
        out.push_str(&format!(
            "Hybrid = lexical + vectors fused by reciprocal rank; **the vectors come from an \
             in-process stand-in endpoint (hashed bag of words, {} dimensions), not a model: \
             the hybrid figures are latency only.**\n\n",
            settings["embeddings"]["dimensions"],
        ));
    }

    out.push_str("## Import and search latency\n\n");
    out.push_str(
        "| backend | corpus | docs | chunks | import (chunks/s) | lexical p50 / p99 | hybrid p50 / p99 | vectors stored (/s) |\n\
         |---|---|---:|---:|---:|---|---|---:|\n",
    );
    let empty = Vec::new();
    for quality in report["quality"].as_array().unwrap_or(&empty) {
        out.push_str(&format!(
            "| {} | runbooks (real) | {} | {} | {} | | | |\n",
            quality["backend"].as_str().unwrap_or("?"),
            quality["documents"],
            quality["chunks"],
            thousands(quality["import_chunks_per_s"].as_f64().unwrap_or(0.0) as u64),
        ));
    }
    for row in report["scale"].as_array().unwrap_or(&empty) {
        let hybrid = &row["hybrid"];
        let (hybrid_latency, vectors) = if hybrid.is_null() {
            ("—".to_string(), "—".to_string())
        } else if let Some(reason) = hybrid["unavailable"].as_str() {
            (format!("unavailable: {reason}"), "—".into())
        } else {
            let partial = if hybrid["all_embedded"].as_bool() == Some(true) {
                String::new()
            } else {
                format!(
                    " (only {} embedded)",
                    thousands(hybrid["chunks_embedded"].as_u64().unwrap_or(0))
                )
            };
            (
                format!("{}{partial}", p50_p99(&hybrid["search_ms"])),
                thousands(hybrid["vectors_per_s"].as_f64().unwrap_or(0.0) as u64),
            )
        };
        out.push_str(&format!(
            "| {} | synthetic {} | {} | {} | {} | {} | {} | {} |\n",
            row["backend"].as_str().unwrap_or("?"),
            thousands(row["target_chunks"].as_u64().unwrap_or(0)),
            thousands(row["documents"].as_u64().unwrap_or(0)),
            thousands(row["chunks"].as_u64().unwrap_or(0)),
            thousands(row["import_chunks_per_s"].as_f64().unwrap_or(0.0) as u64),
            p50_p99(&row["lexical_search_ms"]),
            hybrid_latency,
            vectors,
        ));
    }
    out.push('\n');
    for row in report["scale"].as_array().unwrap_or(&empty) {
        if row["target_chunks"].as_u64() != Some(TARGET_P99_AT as u64) {
            continue;
        }
        let lexical = row["lexical_search_ms"]["p99"].as_f64().unwrap_or(f64::MAX);
        let mut line = format!(
            "- Target p99 < {TARGET_P99_MS} ms at 100,000 chunks, {}: lexical {} ({})",
            row["backend"].as_str().unwrap_or("?"),
            ms(lexical),
            met(lexical < TARGET_P99_MS)
        );
        if let Some(hybrid) = row["hybrid"]["search_ms"]["p99"].as_f64() {
            line.push_str(&format!(
                "; hybrid {} ({})",
                ms(hybrid),
                met(hybrid < TARGET_P99_MS)
            ));
        }
        out.push_str(&line);
        out.push_str(".\n");
    }

    out.push_str("\n## Retrieval quality (lexical, real corpus)\n\n");
    out.push_str(
        "Per alert, the rank of its runbook among the documents of the hits (a document's \
         best chunk counts).\n\n\
         | backend | query | alerts | recall@1 | recall@3 | MRR | target recall@1 | |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for quality in report["quality"].as_array().unwrap_or(&empty) {
        for mode in quality["modes"].as_array().unwrap_or(&empty) {
            out.push_str(&format!(
                "| {} | {} | {} | {:.1}% | {:.1}% | {:.3} | {:.0}% | {} |\n",
                quality["backend"].as_str().unwrap_or("?"),
                match mode["query"].as_str() {
                    Some("name_summary_description") => "name + summary + description",
                    _ => "summary + description",
                },
                mode["alerts"],
                mode["recall_at_1"].as_f64().unwrap_or(0.0) * 100.0,
                mode["recall_at_3"].as_f64().unwrap_or(0.0) * 100.0,
                mode["mrr"].as_f64().unwrap_or(0.0),
                mode["target_recall_at_1"].as_f64().unwrap_or(0.0) * 100.0,
                met(mode["met"].as_bool() == Some(true)),
            ));
        }
    }
    out.push_str("\nMisses (runbook not first: its rank, and the document ranked first):\n\n");
    for quality in report["quality"].as_array().unwrap_or(&empty) {
        for mode in quality["modes"].as_array().unwrap_or(&empty) {
            let misses: Vec<String> = mode["misses"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|miss| {
                    format!(
                        "{} ({}, first: {})",
                        miss["alert"].as_str().unwrap_or("?"),
                        miss["rank"]
                            .as_u64()
                            .map_or("not found".into(), |r| format!("rank {r}")),
                        miss["first"].as_str().unwrap_or("none"),
                    )
                })
                .collect();
            out.push_str(&format!(
                "- {}, {}: {}\n",
                quality["backend"].as_str().unwrap_or("?"),
                mode["query"].as_str().unwrap_or("?"),
                if misses.is_empty() {
                    "none".to_string()
                } else {
                    misses.join("; ")
                }
            ));
        }
    }
    out
}

fn p50_p99(summary: &Value) -> String {
    match (summary["p50"].as_f64(), summary["p99"].as_f64()) {
        (Some(p50), Some(p99)) => format!("{} / {}", ms(p50), ms(p99)),
        _ => "no data".into(),
    }
}
