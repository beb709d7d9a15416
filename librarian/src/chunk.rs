//! Markdown in, chunks out (pure): the front matter is read, the body is split along its
//! headings so every chunk knows where it sits ("KubePodCrashLooping › Mitigation"), and a
//! section too long for one chunk is split further on paragraphs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use rust_stemmers::{Algorithm, Stemmer};

use sha2::{Digest, Sha256};

/// Separator between the headings of a heading path.
pub const PATH_SEPARATOR: &str = " › ";

/// A section longer than this many tokens is split on paragraphs.
pub const CHUNK_TOKEN_BUDGET: usize = 300;

/// One chunk of a document, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub idx: usize,
    /// The headings above it, outermost first (empty for text before any heading).
    pub heading_path: Vec<String>,
    pub content: String,
    pub token_count: usize,
}

impl Chunk {
    /// The heading path as stored and shown: `KubePodCrashLooping › Mitigation`.
    pub fn heading_path_text(&self) -> String {
        self.heading_path.join(PATH_SEPARATOR)
    }
}

/// A Markdown document read: its title, front matter and chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedDoc {
    /// The first level-one heading (a runbook's alert name), else the front matter's `title`,
    /// else the fallback given (the file's name).
    pub title: String,
    /// The front matter's `key: value` lines (values unquoted).
    pub front_matter: BTreeMap<String, String>,
    pub chunks: Vec<Chunk>,
}

impl ParsedDoc {
    /// What the title field of the lexical index holds: the title, its CamelCase words apart
    /// (so "crash looping" finds `KubePodCrashLooping`) and the front matter's title.
    pub fn search_title(&self) -> String {
        search_title(
            &self.title,
            self.front_matter.get("title").map(String::as_str),
        )
    }
}

/// See [`ParsedDoc::search_title`].
pub fn search_title(title: &str, front_title: Option<&str>) -> String {
    let mut text = title.to_string();
    let words = split_camel_case(title).join(" ");
    if words != title {
        text.push(' ');
        text.push_str(&words);
    }
    if let Some(front) = front_title.filter(|front| !text.contains(front)) {
        text.push(' ');
        text.push_str(front);
    }
    text
}

/// Read a Markdown document; `fallback_title` names it when neither a level-one heading nor a
/// front matter `title` does.
pub fn parse_markdown(text: &str, fallback_title: &str) -> ParsedDoc {
    let (front_matter, body) = split_front_matter(text);
    let title = first_level_one_heading(body)
        .or_else(|| front_matter.get("title").cloned())
        .unwrap_or_else(|| fallback_title.to_string());
    let mut chunks = Vec::new();
    for section in sections(body) {
        for content in split_to_budget(&section.text, CHUNK_TOKEN_BUDGET) {
            chunks.push(Chunk {
                idx: chunks.len(),
                heading_path: section.heading_path.clone(),
                token_count: token_count(&content),
                content,
            });
        }
    }
    ParsedDoc {
        title,
        front_matter,
        chunks,
    }
}

/// Index pages of a Hugo/Docsy tree (`_index.md`, `index.md`) describe a folder, not an
/// alert: an import skips them.
pub fn is_index_page(file_name: &str) -> bool {
    matches!(file_name, "_index.md" | "index.md")
}

/// SHA-256 (hex) over the parts, each ended by a NUL so `("ab", "c")` and `("a", "bc")` differ.
pub fn content_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// Tokens as counted for a chunk's budget: whitespace-separated words. Rough, but stable and
/// close enough to a model's word pieces for sizing chunks.
pub fn token_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// A plain-text query as search terms: lower-cased runs of letters and digits, CamelCase
/// words also apart, each once, function words ([`STOP_WORDS`]) left out. Everything else
/// (quotes, colons, parentheses, `%`, `-`, `*`) only separates words, so no character of a
/// query can ever be query syntax.
pub fn query_terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    let mut push = |term: String| {
        if !terms.contains(&term) && !STOP_WORDS.contains(&term.as_str()) {
            terms.push(term);
        }
    };
    for word in query.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        push(word.to_lowercase());
        let parts = split_camel_case(word);
        if parts.len() > 1 {
            for part in parts {
                push(part.to_lowercase());
            }
        }
    }
    terms
}

/// English function words, which say nothing about which page a query means: the Snowball
/// list PostgreSQL's `english` configuration uses, less the words that do in an alert
/// (`down`, `up`, `not`, `out`, `over`, ...: `TargetDown`, `KubePodNotReady`).
pub const STOP_WORDS: &[&str] = &[
    "i",
    "me",
    "my",
    "myself",
    "we",
    "our",
    "ours",
    "ourselves",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "he",
    "him",
    "his",
    "himself",
    "she",
    "her",
    "hers",
    "herself",
    "it",
    "its",
    "itself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
    "what",
    "which",
    "who",
    "whom",
    "this",
    "that",
    "these",
    "those",
    "am",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "have",
    "has",
    "had",
    "having",
    "do",
    "does",
    "did",
    "doing",
    "a",
    "an",
    "the",
    "and",
    "but",
    "if",
    "or",
    "because",
    "as",
    "until",
    "while",
    "of",
    "at",
    "by",
    "for",
    "with",
    "about",
    "against",
    "between",
    "into",
    "through",
    "during",
    "to",
    "from",
    "in",
    "on",
    "then",
    "here",
    "there",
    "when",
    "where",
    "why",
    "how",
    "all",
    "any",
    "both",
    "each",
    "other",
    "some",
    "such",
    "nor",
    "only",
    "own",
    "same",
    "so",
    "than",
    "too",
    "very",
    "s",
    "t",
    "can",
    "will",
    "just",
    "don",
    "should",
    "now",
];

/// The key a word's statistics are kept under: lower-cased and stemmed (Snowball English), so
/// `failed`, `failing` and `fails` count as one, as the lexical index matches them.
pub fn term_key(word: &str) -> String {
    static STEMMER: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));
    STEMMER.stem(&word.to_lowercase()).into_owned()
}

/// The key under which the term counts keep the number of chunks themselves (no word is
/// empty), so the sum over all documents is the number of chunks a term's rarity is measured
/// against.
pub const ALL_CHUNKS_KEY: &str = "";

/// For each term key of a document, how many of its chunks hold it: what the lexical index
/// sees of a chunk is the document's title field, the chunk's heading path and its text, cut
/// into runs of letters and digits as its tokenizer does. [`ALL_CHUNKS_KEY`] holds the number
/// of chunks.
pub fn chunk_term_counts(title_field: &str, chunks: &[Chunk]) -> BTreeMap<String, i64> {
    let title_keys = word_keys(title_field);
    let mut counts = BTreeMap::new();
    if !chunks.is_empty() {
        counts.insert(ALL_CHUNKS_KEY.to_string(), chunks.len() as i64);
    }
    for chunk in chunks {
        let mut keys = title_keys.clone();
        keys.extend(word_keys(&chunk.heading_path_text()));
        keys.extend(word_keys(&chunk.content));
        for key in keys {
            *counts.entry(key).or_insert(0) += 1;
        }
    }
    counts
}

fn word_keys(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(term_key)
        .collect()
}

/// The query terms a lexical match is made of, given each term's chunk count: all of them
/// while their counts add up to at most `budget`, else the rarest first (at least one) until
/// the next would pass it.
///
/// A term in a large share of the chunks adds little to any chunk's relevance (its inverse
/// document frequency is low) but a lot to the cost of ranking every chunk that holds it: this
/// is Lucene's common-terms cut. Below `budget` chunks in all, nothing is left out.
pub fn selective_terms(terms: &[(String, i64)], budget: i64) -> Vec<&str> {
    let mut by_count: Vec<&(String, i64)> = terms.iter().collect();
    by_count.sort_by_key(|(_, count)| *count);
    let mut chosen = Vec::new();
    let mut total = 0;
    for (term, count) in by_count {
        if !chosen.is_empty() && total + count > budget {
            break;
        }
        total += count;
        chosen.push(term.as_str());
    }
    chosen
}

/// `KubePodCrashLooping` → `Kube Pod Crash Looping`; `etcdGRPCRequestsSlow` → `etcd GRPC
/// Requests Slow`; words of one case stay whole.
pub fn split_camel_case(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    let mut words = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            continue;
        }
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1).copied();
        // A word starts at an upper-case letter after a lower-case one or a digit ("podCrash"),
        // or at the last capital of an acronym followed by lower case ("GRPCRequests").
        let boundary = c.is_uppercase()
            && prev.is_some_and(|p| {
                p.is_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_uppercase() && next.is_some_and(char::is_lowercase))
            });
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The `---` block at the very top, as `key: value` pairs, and the body after it. Nested YAML
/// is not needed by runbooks: a line that is not `key: value` is skipped.
fn split_front_matter(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut fields = BTreeMap::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return (fields, text);
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        offset += line.len();
        let line = line.trim_end();
        if line == "---" {
            return (fields, &rest[offset..]);
        }
        if let Some((key, value)) = line.split_once(':') {
            let key = key.trim();
            if !key.is_empty() && !key.starts_with(char::is_whitespace) && !key.starts_with('#') {
                let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                fields.insert(key.to_string(), value.to_string());
            }
        }
    }
    // No closing `---`: not front matter after all.
    (BTreeMap::new(), text)
}

/// The text under one heading, up to the next heading.
struct Section {
    heading_path: Vec<String>,
    text: String,
}

/// Split the body at its ATX headings (`#` to `######`), outside fenced code blocks (where `#`
/// starts a shell comment). Sections with no text are dropped; their headings still shape the
/// paths below them.
fn sections(body: &str) -> Vec<Section> {
    let mut sections = Vec::new();
    // (level, heading) of the headings enclosing the current line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut current = String::new();
    let mut fence: Option<&str> = None;
    let flush = |stack: &[(usize, String)], current: &mut String, sections: &mut Vec<Section>| {
        let text = current.trim().to_string();
        current.clear();
        if !text.is_empty() {
            sections.push(Section {
                heading_path: stack.iter().map(|(_, h)| h.clone()).collect(),
                text,
            });
        }
    };
    for line in body.lines() {
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
        } else if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
        } else if let Some((level, heading)) = atx_heading(line) {
            flush(&stack, &mut current, &mut sections);
            stack.retain(|(l, _)| *l < level);
            stack.push((level, heading));
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    flush(&stack, &mut current, &mut sections);
    sections
}

/// The first `# Heading` of the body (outside code).
fn first_level_one_heading(body: &str) -> Option<String> {
    let mut in_fence = false;
    for line in body.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        } else if !in_fence {
            if let Some((1, heading)) = atx_heading(line) {
                return Some(heading);
            }
        }
    }
    None
}

/// `## Mitigation` → `(2, "Mitigation")`; at most three spaces of indent, a space after the
/// hashes, closing hashes dropped.
fn atx_heading(line: &str) -> Option<(usize, String)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let line = &line[indent..];
    let level = line.len() - line.trim_start_matches('#').len();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &line[level..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    let heading = rest.trim().trim_end_matches('#').trim();
    (!heading.is_empty()).then(|| (level, heading.to_string()))
}

/// The section's text in pieces of at most `budget` tokens, cut between paragraphs (never
/// inside a fenced code block); a single paragraph over the budget stays whole.
fn split_to_budget(text: &str, budget: usize) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    if token_count(text) <= budget {
        return vec![text.to_string()];
    }
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for paragraph in paragraphs(text) {
        if !piece.is_empty() && token_count(&piece) + token_count(&paragraph) > budget {
            pieces.push(std::mem::take(&mut piece).trim().to_string());
        }
        if !piece.is_empty() {
            piece.push_str("\n\n");
        }
        piece.push_str(&paragraph);
    }
    if !piece.trim().is_empty() {
        pieces.push(piece.trim().to_string());
    }
    pieces
}

/// Paragraphs: runs of lines between blank lines, a fenced code block kept in one.
fn paragraphs(text: &str) -> Vec<String> {
    let mut paragraphs = Vec::new();
    let mut current = String::new();
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        }
        if line.trim().is_empty() && !in_fence {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    paragraphs
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: &str = "../../shared/corpora/runbooks";

    fn page(path: &str) -> String {
        let path = format!("{}/{CORPUS}/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn paths(doc: &ParsedDoc) -> Vec<String> {
        doc.chunks.iter().map(Chunk::heading_path_text).collect()
    }

    #[test]
    fn a_runbook_is_chunked_along_its_headings() {
        let doc = parse_markdown(&page("kubernetes/KubePodCrashLooping.md"), "x");
        assert_eq!(doc.title, "KubePodCrashLooping");
        assert_eq!(doc.front_matter["title"], "Kube Pod Crash Looping");
        assert_eq!(doc.front_matter["weight"], "20");
        assert_eq!(
            paths(&doc),
            [
                "KubePodCrashLooping › Meaning",
                "KubePodCrashLooping › Impact",
                "KubePodCrashLooping › Diagnosis",
                "KubePodCrashLooping › Mitigation",
            ]
        );
        let mitigation = &doc.chunks[3];
        assert_eq!(mitigation.idx, 3);
        assert!(mitigation.content.starts_with("Talk with developers"));
        assert!(!mitigation.content.contains("## Mitigation"));
        assert_eq!(mitigation.token_count, token_count(&mitigation.content));
        assert_eq!(
            doc.search_title(),
            "KubePodCrashLooping Kube Pod Crash Looping"
        );
    }

    #[test]
    fn a_page_without_front_matter_takes_its_title_from_the_heading() {
        let doc = parse_markdown(&page("etcd/etcdNoLeader.md"), "fallback");
        assert!(doc.front_matter.is_empty());
        assert_eq!(doc.title, "etcdNoLeader");
        assert_eq!(doc.chunks[0].heading_path, ["etcdNoLeader", "Meaning"]);
        assert_eq!(doc.search_title(), "etcdNoLeader etcd No Leader");
    }

    #[test]
    fn a_hash_in_a_code_block_is_no_heading_and_subheadings_nest() {
        let doc = parse_markdown(&page("node/NodeFilesystemSpaceFillingUp.md"), "x");
        let paths = paths(&doc);
        assert!(!paths.iter().any(|p| p.contains("TODO")), "{paths:?}");
        assert!(doc
            .chunks
            .iter()
            .any(|c| c.content.contains("# TODO: Command needed")));
        let etcd = parse_markdown(&page("etcd/etcdHighFsyncDurations.md"), "x");
        assert!(
            paths
                .iter()
                .all(|p| p.starts_with("NodeFilesystemSpaceFillingUp › ")),
            "{paths:?}"
        );
        assert!(etcd
            .chunks
            .iter()
            .all(|c| c.heading_path[0] == "etcdHighFsyncDurations"));
    }

    #[test]
    fn a_long_section_is_split_on_paragraphs_to_the_budget() {
        let paragraph = "word ".repeat(120);
        let text = format!(
            "# Alert\n\n## Diagnosis\n\n{p}\n\n{p}\n\n```\n# not a heading\n\nstill code\n```\n\n{p}\n",
            p = paragraph.trim()
        );
        let doc = parse_markdown(&text, "x");
        assert_eq!(doc.chunks.len(), 2, "{:?}", doc.chunks);
        assert!(doc
            .chunks
            .iter()
            .all(|c| c.heading_path_text() == "Alert › Diagnosis"));
        assert!(doc
            .chunks
            .iter()
            .all(|c| c.token_count <= CHUNK_TOKEN_BUDGET));
        // The code block, blank line and all, stays in one piece.
        assert!(doc.chunks[0]
            .content
            .ends_with("```\n# not a heading\n\nstill code\n```"));
        assert_eq!(doc.chunks.iter().map(|c| c.idx).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn every_page_of_the_corpus_chunks_under_its_alert_name() {
        let root = format!("{}/{CORPUS}", env!("CARGO_MANIFEST_DIR"));
        let mut pages = 0;
        for dir in std::fs::read_dir(&root).unwrap() {
            let dir = dir.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir).unwrap() {
                let file = file.unwrap().path();
                let name = file.file_name().unwrap().to_str().unwrap().to_string();
                if !name.ends_with(".md") || is_index_page(&name) {
                    continue;
                }
                pages += 1;
                let stem = name.trim_end_matches(".md");
                let doc = parse_markdown(&std::fs::read_to_string(&file).unwrap(), stem);
                assert!(!doc.chunks.is_empty(), "{name}");
                assert!(
                    doc.chunks.iter().all(|c| !c.content.trim().is_empty()
                        && c.heading_path.first().is_some_and(|h| h == &doc.title)),
                    "{name}: {:?}",
                    paths(&doc)
                );
            }
        }
        assert!(pages > 100, "{pages}");
    }

    #[test]
    fn front_matter_needs_its_closing_line_and_index_pages_are_known() {
        let doc = parse_markdown("---\ntitle: x\n# Heading\n\ntext\n", "f");
        assert!(doc.front_matter.is_empty());
        let doc = parse_markdown("---\ntitle: \"Quoted\"\n---\n\nno heading here\n", "f");
        assert_eq!(doc.title, "Quoted");
        assert_eq!(doc.chunks[0].heading_path, Vec::<String>::new());
        assert_eq!(parse_markdown("just text", "file").title, "file");
        assert!(is_index_page("_index.md"));
        assert!(!is_index_page("KubeAPIDown.md"));
    }

    #[test]
    fn queries_are_words_never_syntax() {
        assert_eq!(
            query_terms(r#""foo" (bar): 100% -baz* NEAR/2 a:b"#),
            ["foo", "bar", "100", "baz", "near", "2", "b"]
        );
        assert_eq!(
            query_terms("The node is not ready: it is down"),
            ["node", "not", "ready", "down"]
        );
        assert_eq!(
            query_terms("KubePodCrashLooping pod"),
            ["kubepodcrashlooping", "kube", "pod", "crash", "looping"]
        );
        assert!(query_terms(" :: %% ").is_empty());
        assert_eq!(
            split_camel_case("etcdGRPCRequestsSlow"),
            ["etcd", "GRPC", "Requests", "Slow"]
        );
        assert_eq!(split_camel_case("KubeAPIDown"), ["Kube", "API", "Down"]);
        assert_eq!(split_camel_case("Watchdog"), ["Watchdog"]);
    }

    #[test]
    fn a_term_counts_once_per_chunk_under_its_stem() {
        let doc = parse_markdown(
            "# KubeletDown\n\n## Meaning\n\nKubelets failed, failing.\n\n## Mitigation\n\nRestart.\n",
            "f",
        );
        let counts = chunk_term_counts("KubeletDown Kubelet Down", &doc.chunks);
        assert_eq!(doc.chunks.len(), 2);
        // The title field is in every chunk; `failed` and `failing` are one key, once.
        assert_eq!(counts["kubeletdown"], 2);
        assert_eq!(counts["down"], 2);
        assert_eq!(counts[&term_key("failing")], 1);
        assert_eq!(term_key("failed"), term_key("failing"));
        assert_eq!(counts["mitig"], 1);
        assert_eq!(counts["restart"], 1);
        assert_eq!(counts[ALL_CHUNKS_KEY], 2, "and the chunks themselves");
        assert!(chunk_term_counts("Empty", &[]).is_empty());
    }

    #[test]
    fn common_terms_are_cut_rarest_first_within_the_budget() {
        let terms = [
            ("kubelet".to_string(), 40),
            ("prometheus".to_string(), 900),
            ("disappeared".to_string(), 5),
            ("target".to_string(), 300),
        ];
        // Everything fits: nothing is left out.
        assert_eq!(selective_terms(&terms, 10_000).len(), 4);
        assert_eq!(
            selective_terms(&terms, 400),
            ["disappeared", "kubelet", "target"]
        );
        assert_eq!(selective_terms(&terms, 100), ["disappeared", "kubelet"]);
        // The rarest is always kept, whatever its count.
        assert_eq!(selective_terms(&terms, 1), ["disappeared"]);
        assert!(selective_terms(&[], 1).is_empty());
    }

    #[test]
    fn the_hash_separates_its_parts() {
        assert_ne!(content_hash(&["ab", "c"]), content_hash(&["a", "bc"]));
        assert_eq!(content_hash(&["x"]).len(), 64);
    }
}
