//! The corpora the bench searches: the shared runbooks as they are, a synthetic corpus grown
//! from them (deterministic), and the alert set written from kube-prometheus' rules.

use std::path::Path;

use anyhow::Context;
use librarian::DocInput;

/// The source the documents are imported under.
pub const SOURCE: &str = "runbooks";

/// One Markdown page of the corpus: its path relative to the corpus root and its text.
pub struct Page {
    pub relative: String,
    pub stem: String,
    pub text: String,
}

/// The corpus' pages (index pages skipped, as `import_dir` does), sorted by path.
pub fn pages(root: &Path) -> anyhow::Result<Vec<Page>> {
    let mut paths = librarian::import::markdown_pages(root)?;
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            let stem = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Page {
                relative,
                stem,
                text,
            })
        })
        .collect()
}

/// A small deterministic generator (64-bit LCG, high bits out).
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// The words of the corpus' bodies (letters only, 3 characters or more), sorted, once each:
/// what the synthetic copies draw their substitutions from.
fn vocabulary(pages: &[Page]) -> Vec<String> {
    let mut words: Vec<String> = pages
        .iter()
        .flat_map(|page| page.text.split(|c: char| !c.is_ascii_alphabetic()))
        .filter(|word| word.len() >= 3)
        .map(str::to_ascii_lowercase)
        .collect();
    words.sort();
    words.dedup();
    words
}

/// Copy `copy` (1, 2, ...) of `page`: its alert name and title renamed (`…V<copy>`), about one
/// body word in five replaced by another word of the corpus, under its own path. Copy 0 is the
/// page itself.
fn variant(page: &Page, copy: usize, page_index: usize, vocabulary: &[String]) -> String {
    if copy == 0 {
        return page.text.clone();
    }
    let mut rng = Lcg::new(((copy as u64) << 20) ^ page_index as u64);
    let suffix = format!("V{copy}");
    let mut out = String::with_capacity(page.text.len() + 64);
    let mut in_front_matter = false;
    for (number, line) in page.text.lines().enumerate() {
        if number == 0 && line.trim() == "---" {
            in_front_matter = true;
            out.push_str(line);
        } else if in_front_matter {
            if line.trim() == "---" {
                in_front_matter = false;
                out.push_str(line);
            } else if let Some(title) = line.strip_prefix("title:") {
                out.push_str(&format!("title:{title} {suffix}"));
            } else {
                out.push_str(line);
            }
        } else if line.starts_with('#') {
            // Headings keep their words; the page's alert name gets the copy's suffix.
            out.push_str(&line.replace(&page.stem, &format!("{}{suffix}", page.stem)));
        } else {
            let mut first = true;
            for word in line.split(' ') {
                if !first {
                    out.push(' ');
                }
                first = false;
                let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphabetic());
                if plain && rng.next() % 5 == 0 {
                    out.push_str(&vocabulary[(rng.next() as usize) % vocabulary.len()]);
                } else {
                    out.push_str(word);
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Documents grown from `pages` until they hold at least `target` chunks: the pages as they
/// are, then copy 1 of every page, copy 2, ... (see [`variant`]). Deterministic.
pub fn synthetic(pages: &[Page], target: usize) -> Vec<DocInput> {
    let vocabulary = vocabulary(pages);
    let mut docs = Vec::new();
    let mut chunks = 0;
    for copy in 0.. {
        for (index, page) in pages.iter().enumerate() {
            if chunks >= target {
                return docs;
            }
            let text = variant(page, copy, index, &vocabulary);
            let path = if copy == 0 {
                page.relative.clone()
            } else {
                format!("synthetic/{copy:05}/{}", page.relative)
            };
            let doc = DocInput::markdown(None, SOURCE, &path, &text, &page.stem, None);
            chunks += doc.chunks.len();
            docs.push(doc);
        }
    }
    docs
}

/// One alert of the set: name, summary, description; its runbook is the page named after it.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    pub summary: String,
    pub description: String,
}

impl Alert {
    /// As an alert reads with its name: "Name: summary description".
    pub fn with_name(&self) -> String {
        format!("{}: {} {}", self.name, self.summary, self.description)
    }

    /// Summary and description alone.
    pub fn without_name(&self) -> String {
        format!("{} {}", self.summary, self.description)
    }
}

/// The alert set (`alerts.tsv`, compiled in).
pub fn alerts() -> Vec<Alert> {
    include_str!("alerts.tsv")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let mut fields = line.split('\t');
            Some(Alert {
                name: fields.next()?.to_string(),
                summary: fields.next()?.to_string(),
                description: fields.next()?.to_string(),
            })
        })
        .collect()
}
