//! `opscase kb import DIR`: every Markdown page under a directory, upserted, and with `prune`
//! the pages gone from it removed.

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::Serialize;

use orchestrator::StoreError;

use crate::chunk::is_index_page;
use crate::store::{DocInput, KbStore, Upserted};

/// What an import did, page by page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub pruned: u64,
    /// Chunks written by the pages created or updated.
    pub chunks_written: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Import the `*.md` pages under `dir` (index pages skipped) as documents of `source` for
/// `tenant` (`None`: global); each is known by its path relative to `dir`.
pub async fn import_dir(
    store: &KbStore,
    dir: &Path,
    tenant: Option<&str>,
    source: &str,
    prune: bool,
) -> Result<ImportReport, ImportError> {
    let mut pages = markdown_pages(dir)?;
    pages.sort();
    let mut report = ImportReport::default();
    let mut kept = Vec::with_capacity(pages.len());
    for page in pages {
        let text = std::fs::read_to_string(&page).map_err(|source| ImportError::Read {
            path: page.clone(),
            source,
        })?;
        let relative = page.strip_prefix(dir).unwrap_or(&page);
        let relative = relative.to_string_lossy().replace('\\', "/");
        let stem = page
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let doc = DocInput::markdown(
            tenant.map(str::to_string),
            source,
            &relative,
            &text,
            &stem,
            None,
        );
        kept.push(doc.id.clone());
        match store.upsert(&doc, Utc::now()).await? {
            Upserted::Created => report.created += 1,
            Upserted::Updated => report.updated += 1,
            Upserted::Unchanged => {
                report.unchanged += 1;
                continue;
            }
        }
        report.chunks_written += doc.chunks.len();
    }
    if prune {
        report.pruned = store.prune(tenant, source, &kept).await?;
    }
    Ok(report)
}

/// The Markdown pages under `dir`, depth first, as an import reads them: hidden entries and
/// index pages skipped.
pub fn markdown_pages(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let mut pages = Vec::new();
    collect_pages(dir, &mut pages)?;
    Ok(pages)
}

fn collect_pages(dir: &Path, pages: &mut Vec<PathBuf>) -> Result<(), ImportError> {
    let read_error = |source| ImportError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_pages(&path, pages)?;
        } else if name.ends_with(".md") && !is_index_page(&name) {
            pages.push(path);
        }
    }
    Ok(())
}
