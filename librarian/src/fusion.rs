//! Reciprocal rank fusion (pure): ranked lists from several retrievers become one, each chunk
//! scored by the sum of `1 / (k + rank)` over the lists that hold it.

use std::collections::HashMap;

use crate::store::Hit;

/// The constant `k` of reciprocal rank fusion (Cormack, Clarke and Büttcher, 2009).
pub const RRF_K: f64 = 60.0;

/// Fuse `lists` (each best first, named by its retriever) into the best `limit` hits. A chunk
/// found by several retrievers appears once, with every retriever that found it (in the order
/// of `lists`) and the content of its first list; its score is its fused score. Ties keep the
/// order of the first list a chunk appeared in, then (doc id, chunk) order.
pub fn reciprocal_rank_fusion(lists: &[(&str, Vec<Hit>)], limit: usize) -> Vec<Hit> {
    let mut fused: Vec<(Hit, f64, (usize, usize))> = Vec::new();
    let mut by_chunk: HashMap<(String, i64), usize> = HashMap::new();
    for (list_index, (retriever, hits)) in lists.iter().enumerate() {
        for (position, hit) in hits.iter().enumerate() {
            let contribution = 1.0 / (RRF_K + (position + 1) as f64);
            let key = (hit.doc_id.clone(), hit.chunk_idx);
            match by_chunk.get(&key) {
                Some(&at) => {
                    let (existing, score, _) = &mut fused[at];
                    *score += contribution;
                    if !existing.retrievers.iter().any(|r| r == retriever) {
                        existing.retrievers.push(retriever.to_string());
                    }
                }
                None => {
                    let mut hit = hit.clone();
                    hit.retrievers = vec![retriever.to_string()];
                    by_chunk.insert(key, fused.len());
                    fused.push((hit, contribution, (list_index, position)));
                }
            }
        }
    }
    fused.sort_by(|(a, a_score, a_first), (b, b_score, b_first)| {
        b_score
            .total_cmp(a_score)
            .then(a_first.1.cmp(&b_first.1))
            .then(a_first.0.cmp(&b_first.0))
            .then_with(|| (&a.doc_id, a.chunk_idx).cmp(&(&b.doc_id, b.chunk_idx)))
    });
    fused
        .into_iter()
        .take(limit)
        .map(|(mut hit, score, _)| {
            hit.score = score;
            hit
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, idx: i64) -> Hit {
        Hit {
            doc_id: doc.into(),
            title: doc.to_uppercase(),
            url: format!("{doc}.md"),
            source: "runbooks".into(),
            tenant: None,
            chunk_idx: idx,
            heading_path: format!("{doc} › {idx}"),
            content: format!("{doc} {idx}"),
            score: 0.0,
            retrievers: vec!["whatever".into()],
        }
    }

    fn keys(hits: &[Hit]) -> Vec<(String, i64, Vec<String>)> {
        hits.iter()
            .map(|h| (h.doc_id.clone(), h.chunk_idx, h.retrievers.clone()))
            .collect()
    }

    fn owned(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_chunk_both_retrievers_found_ranks_above_those_only_one_found() {
        let lexical = vec![hit("a", 0), hit("b", 0), hit("c", 0)];
        let vector = vec![hit("d", 0), hit("b", 0), hit("e", 1)];
        let fused = reciprocal_rank_fusion(&[("lexical", lexical), ("vector", vector)], 10);
        assert_eq!(
            keys(&fused),
            vec![
                ("b".into(), 0, owned(&["lexical", "vector"])),
                ("a".into(), 0, owned(&["lexical"])),
                ("d".into(), 0, owned(&["vector"])),
                ("c".into(), 0, owned(&["lexical"])),
                ("e".into(), 1, owned(&["vector"])),
            ]
        );
        let expected = 2.0 / 62.0;
        assert!(
            (fused[0].score - expected).abs() < 1e-12,
            "{}",
            fused[0].score
        );
        assert!((fused[1].score - 1.0 / 61.0).abs() < 1e-12);
        // Equal ranks in two lists: the first list's hit first.
        assert_eq!(fused[1].score, fused[2].score);
    }

    #[test]
    fn the_limit_holds_and_one_list_keeps_its_order() {
        let lexical = vec![hit("a", 0), hit("a", 1), hit("b", 0)];
        let fused = reciprocal_rank_fusion(&[("lexical", lexical), ("vector", vec![])], 2);
        assert_eq!(
            keys(&fused),
            vec![
                ("a".into(), 0, owned(&["lexical"])),
                ("a".into(), 1, owned(&["lexical"])),
            ]
        );
        assert!(reciprocal_rank_fusion(&[], 5).is_empty());
    }

    #[test]
    fn chunks_of_one_document_stay_apart() {
        let fused = reciprocal_rank_fusion(
            &[
                ("lexical", vec![hit("a", 0)]),
                ("vector", vec![hit("a", 1)]),
            ],
            5,
        );
        assert_eq!(fused.len(), 2);
        assert_eq!(fused[0].chunk_idx, 0);
        assert_eq!(fused[1].retrievers, owned(&["vector"]));
    }

    #[test]
    fn a_later_rank_in_the_second_list_still_adds() {
        // a: lexical 1st only; b: lexical 2nd and vector 3rd; 1/62 + 1/63 > 1/61.
        let lexical = vec![hit("a", 0), hit("b", 0)];
        let vector = vec![hit("x", 0), hit("y", 0), hit("b", 0)];
        let fused = reciprocal_rank_fusion(&[("lexical", lexical), ("vector", vector)], 3);
        assert_eq!(fused[0].doc_id, "b");
        assert_eq!(fused[1].doc_id, "a");
        assert_eq!(fused[2].doc_id, "x");
    }
}
