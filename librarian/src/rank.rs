//! The order of a search's candidates (pure): BM25F over a chunk's three fields, then each
//! chunk lifted by the best other chunk of its document.
//!
//! Each backend's lexical index finds the candidates (the chunks that hold the query's rarer
//! terms) and gives a first order; this one is the same on both. PostgreSQL's `ts_rank`
//! knows nothing of how rare a term is, so a query of twenty words ranked by it favours the
//! page that repeats the common ones; BM25F weighs each term by its inverse document frequency
//! over all chunks (`kb_term`) and saturates repeats, field by field (title and alert name
//! above the heading path above the body).
//!
//! A chunk is a part of a page: a question often matches the page, not one part (the alert's
//! summary in the title, its description in "Meaning", the words of its fix under
//! "Mitigation"). So a chunk's score adds [`DOCUMENT_CONTEXT`] times the best score among the
//! other candidates of its document: a page matched in several places ranks above one matched
//! in a single place as well.

use std::collections::HashMap;

use crate::chunk::term_key;

/// BM25's term-frequency saturation and length normalisation (the usual values).
pub const K1: f64 = 1.2;
pub const B: f64 = 0.75;

/// Field weights, as the SQLite index's `bm25()` weighs them: title (with the alert name),
/// heading path, body.
pub const TITLE_WEIGHT: f64 = 10.0;
pub const HEADING_WEIGHT: f64 = 4.0;
pub const BODY_WEIGHT: f64 = 1.0;

/// The share of the best other chunk of the same document added to a chunk's score.
pub const DOCUMENT_CONTEXT: f64 = 0.5;

/// One candidate's text, field by field, and its document.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub doc: &'a str,
    /// The document's title field: its title and the title's CamelCase words apart.
    pub title: &'a str,
    pub heading: &'a str,
    pub body: &'a str,
}

/// A query term's key ([`term_key`]) and how many chunks hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermStat {
    pub key: String,
    pub chunks: i64,
}

/// The score of each candidate (in their order): BM25F with the query's terms, whose chunk
/// counts are `terms`, among `total_chunks` chunks, plus the document context. Field lengths
/// are normalised by their average over the candidates.
pub fn scores(terms: &[TermStat], total_chunks: i64, candidates: &[Fields<'_>]) -> Vec<f64> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for stat in terms {
        let next = index.len();
        index.entry(stat.key.as_str()).or_insert(next);
    }
    let idf: Vec<f64> = {
        let mut idf = vec![0.0; index.len()];
        for stat in terms {
            let n = total_chunks.max(stat.chunks).max(1) as f64;
            let df = stat.chunks.max(0) as f64;
            idf[index[stat.key.as_str()]] = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        }
        idf
    };
    let prefixes: Vec<&str> = index.keys().map(|key| prefix(key)).collect();
    let counted: Vec<[FieldCount; 3]> = candidates
        .iter()
        .map(|c| [c.title, c.heading, c.body].map(|text| count_terms(text, &index, &prefixes)))
        .collect();
    let average = |field: usize| {
        let total: usize = counted.iter().map(|fields| fields[field].length).sum();
        (total as f64 / counted.len().max(1) as f64).max(1.0)
    };
    let averages = [average(0), average(1), average(2)];
    let weights = [TITLE_WEIGHT, HEADING_WEIGHT, BODY_WEIGHT];
    let own: Vec<f64> = counted
        .iter()
        .map(|fields| {
            let mut weighted = vec![0.0; idf.len()];
            for (field, count) in fields.iter().enumerate() {
                let norm = 1.0 - B + B * count.length as f64 / averages[field];
                for (term, &tf) in count.tf.iter().enumerate() {
                    weighted[term] += weights[field] * tf as f64 / norm;
                }
            }
            weighted
                .iter()
                .zip(&idf)
                .map(|(tf, idf)| idf * tf * (K1 + 1.0) / (K1 + tf))
                .sum()
        })
        .collect();
    own.iter()
        .enumerate()
        .map(|(i, score)| {
            let best_other = own
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i && candidates[j].doc == candidates[i].doc)
                .map(|(_, score)| *score)
                .fold(0.0, f64::max);
            score + DOCUMENT_CONTEXT * best_other
        })
        .collect()
}

/// A field's length in words and how often it holds each query term.
#[derive(Debug, Clone)]
struct FieldCount {
    length: usize,
    tf: Vec<u32>,
}

/// Snowball's English stemmer changes only a word's ending and never its first two letters
/// but in three of its exceptional forms ([`RESTEMMED`]), so another word that does not begin
/// as some query term's key does cannot be one: only the others are stemmed (most words of a
/// chunk are not).
fn prefix(key: &str) -> &str {
    let end = key.char_indices().nth(2).map_or(key.len(), |(i, _)| i);
    &key[..end]
}

/// The words whose stem does not begin with their first two letters: `dying` → `die`.
const RESTEMMED: [&str; 3] = ["dying", "lying", "tying"];

fn may_be_a_term(lower: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| lower.starts_with(p)) || RESTEMMED.contains(&lower)
}

fn count_terms(text: &str, index: &HashMap<&str, usize>, prefixes: &[&str]) -> FieldCount {
    let mut count = FieldCount {
        length: 0,
        tf: vec![0; index.len()],
    };
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        count.length += 1;
        let lower = word.to_lowercase();
        if !may_be_a_term(&lower, prefixes) {
            continue;
        }
        if let Some(&term) = index.get(term_key(&lower).as_str()) {
            count.tf[term] += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(key: &str, chunks: i64) -> TermStat {
        TermStat {
            key: key.into(),
            chunks,
        }
    }

    fn fields<'a>(doc: &'a str, title: &'a str, heading: &'a str, body: &'a str) -> Fields<'a> {
        Fields {
            doc,
            title,
            heading,
            body,
        }
    }

    #[test]
    fn a_rare_term_outweighs_a_common_one_repeated() {
        let terms = [stat("kubelet", 3), stat("target", 900)];
        let candidates = [
            fields("a", "A", "A › Meaning", "target target target target"),
            fields("b", "B", "B › Meaning", "the kubelet went away"),
        ];
        let scores = scores(&terms, 1_000, &candidates);
        assert!(scores[1] > scores[0], "{scores:?}");
    }

    #[test]
    fn words_count_under_their_stem_and_the_title_weighs_most() {
        let terms = [stat(&term_key("failing"), 10)];
        let candidates = [
            fields("a", "Failed", "A", "nothing"),
            fields("b", "B", "B", "it fails"),
            fields("c", "C", "C", "nothing at all"),
        ];
        let scores = scores(&terms, 100, &candidates);
        assert!(scores[0] > scores[1] && scores[1] > 0.0, "{scores:?}");
        assert_eq!(scores[2], 0.0);
    }

    #[test]
    fn a_chunk_is_lifted_by_the_best_other_chunk_of_its_page() {
        let terms = [stat("disk", 10), stat("raid", 5)];
        let candidates = [
            fields("one", "One", "One › Meaning", "the raid array"),
            fields("one", "One", "One › Mitigation", "replace the disk"),
            fields("two", "Two", "Two › Meaning", "the raid array"),
        ];
        let scores = scores(&terms, 100, &candidates);
        assert!(scores[0] > scores[2], "{scores:?}");
        let alone = super::scores(&terms, 100, &candidates[2..]);
        assert!(
            (alone[0] - scores[2]).abs() < 1e-9,
            "no other chunk, no lift"
        );
    }

    #[test]
    fn the_prefix_check_never_hides_a_word_that_stems_to_a_term() {
        let words = [
            "skies",
            "dying",
            "lying",
            "tying",
            "ties",
            "cries",
            "early",
            "only",
            "gently",
            "ugly",
            "yelling",
            "ies",
            "news",
            "replicas",
            "throttling",
            "discovery",
            "5xx",
        ];
        // And every word of the runbooks corpus.
        let mut vocabulary: std::collections::BTreeSet<String> =
            words.iter().map(|w| w.to_string()).collect();
        let root = format!(
            "{}/../../shared/corpora/runbooks",
            env!("CARGO_MANIFEST_DIR")
        );
        for entry in walk(std::path::Path::new(&root)) {
            let text = std::fs::read_to_string(entry).unwrap();
            for word in text.split(|c: char| !c.is_alphanumeric()) {
                vocabulary.insert(word.to_lowercase());
            }
        }
        assert!(
            vocabulary.len() > 1_000,
            "the corpus is there: {}",
            vocabulary.len()
        );
        for word in &vocabulary {
            let key = term_key(word);
            assert!(may_be_a_term(word, &[prefix(&key)]), "{word} → {key}");
        }
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
        files
    }

    #[test]
    fn no_terms_or_no_candidates_score_nothing() {
        assert!(scores(&[], 10, &[]).is_empty());
        assert_eq!(scores(&[], 10, &[fields("a", "A", "", "words")]), [0.0]);
    }
}
