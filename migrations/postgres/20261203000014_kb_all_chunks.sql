-- The term counts keep the number of chunks under the empty term (librarian::chunk::
-- ALL_CHUNKS_KEY), so a search measures a term's rarity against the whole knowledge base
-- without counting it. Documents stored before hold it from now on; those stored before the
-- counts existed (term_counts NULL) count once imported again, as their terms do.
UPDATE kb_doc d SET term_counts = d.term_counts || jsonb_build_object('',
    (SELECT COUNT(*) FROM kb_chunk c WHERE c.doc_id = d.id))
WHERE d.term_counts IS NOT NULL AND EXISTS (SELECT 1 FROM kb_chunk c WHERE c.doc_id = d.id);
INSERT INTO kb_term (term, chunks)
SELECT '', COUNT(*) FROM kb_chunk c JOIN kb_doc d ON d.id = c.doc_id
WHERE d.term_counts IS NOT NULL HAVING COUNT(*) > 0
ON CONFLICT (term) DO UPDATE SET chunks = EXCLUDED.chunks;
