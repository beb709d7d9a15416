//! The first pass of a vector search on SQLite (pure): every embedded chunk's sign bits in
//! memory, ranked by Hamming distance to the query's.
//!
//! A vector's sign bits (one a dimension, 48 bytes at 384) keep its neighbourhood roughly;
//! the best few hundred by Hamming distance are then ranked by exact cosine distance in
//! SQLite. Scanning the bits in SQL cost ~15 ms at 100,000 chunks (a function call and a row
//! decoded per chunk; sqlite-vec's `vec0` KNN was slower still); in memory it is about a
//! millisecond. The table stays the truth: [`BitSet`] is a copy kept current by the
//! counters its triggers keep (see `vector.rs`).

use std::collections::{BinaryHeap, HashMap};

use crate::store::SearchFilter;

/// The sign bits of `vector` as sqlite-vec's `vec_quantize_binary` writes them: bit `i % 8`
/// of byte `i / 8` is set when dimension `i` is positive.
pub fn sign_bits(vector: &[f32]) -> Vec<u8> {
    let mut bits = vec![0u8; vector.len().div_ceil(8)];
    for (i, value) in vector.iter().enumerate() {
        if *value > 0.0 {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    bits
}

/// Where the table stood when a [`BitSet`] was read: rows inserted and deleted so far (each
/// only grows). Inserts alone since then are the rows above the highest rowid read (SQLite
/// gives a new row the highest rowid plus one, and reuses one only after a delete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableVersion {
    pub inserted: i64,
    pub deleted: i64,
}

/// What a [`BitSet`] needs to be current again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    Current,
    /// Read the rows above this rowid and add them.
    Append {
        after_rowid: i64,
    },
    /// Read the whole table again.
    Reload,
}

/// The sign bits of a table's rows, each with its rowid, tenant and source.
#[derive(Debug, Clone, Default)]
pub struct BitSet {
    version: TableVersion,
    bytes_per_vector: usize,
    /// Each vector's bits as whole words (the last one padded with zeros).
    words_per_vector: usize,
    rowids: Vec<i64>,
    tenants: Vec<Option<u32>>,
    sources: Vec<u32>,
    words: Vec<u64>,
    /// Tenants and sources, each stored once, by number.
    name_ids: HashMap<String, u32>,
}

impl BitSet {
    /// An empty set for vectors of `dimensions`, read at `version`.
    pub fn new(dimensions: usize, version: TableVersion) -> Self {
        Self {
            version,
            bytes_per_vector: dimensions.div_ceil(8),
            words_per_vector: dimensions.div_ceil(64),
            ..Self::default()
        }
    }

    /// An empty set for vectors of the same width, read at `version`.
    pub fn emptied(&self, version: TableVersion) -> Self {
        Self {
            version,
            bytes_per_vector: self.bytes_per_vector,
            words_per_vector: self.words_per_vector,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.rowids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rowids.is_empty()
    }

    pub fn version(&self) -> TableVersion {
        self.version
    }

    /// What it takes to bring this set to the table at `now`.
    pub fn refresh_for(&self, now: TableVersion) -> Refresh {
        if now == self.version {
            Refresh::Current
        } else if now.deleted == self.version.deleted && now.inserted > self.version.inserted {
            Refresh::Append {
                after_rowid: self.rowids.last().copied().unwrap_or(0),
            }
        } else {
            Refresh::Reload
        }
    }

    /// Add one row (in rowid order); bits of the wrong length are not a vector of this set
    /// and are left out.
    pub fn push(&mut self, rowid: i64, tenant: Option<&str>, source: &str, bits: &[u8]) {
        if bits.len() != self.bytes_per_vector {
            return;
        }
        let tenant = tenant.map(|tenant| self.name_id(tenant));
        let source = self.name_id(source);
        self.rowids.push(rowid);
        self.tenants.push(tenant);
        self.sources.push(source);
        self.words.extend(words(bits, self.words_per_vector));
    }

    /// Mark the set as read up to `version` (after its rows were pushed).
    pub fn set_version(&mut self, version: TableVersion) {
        self.version = version;
    }

    fn name_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.name_ids.get(name) {
            return *id;
        }
        let id = self.name_ids.len() as u32;
        self.name_ids.insert(name.to_string(), id);
        id
    }

    /// The rowids of the `n` rows `filter` lets see nearest to `query` (its sign bits) by
    /// Hamming distance, nearest first (ties by rowid).
    pub fn nearest(&self, query: &[u8], n: usize, filter: &SearchFilter) -> Vec<i64> {
        if n == 0 || self.words_per_vector == 0 || query.len() != self.bytes_per_vector {
            return Vec::new();
        }
        // A name this set has never seen matches no row.
        let id = |name: &Option<String>| name.as_ref().map(|name| self.name_ids.get(name));
        let tenant = id(&filter.tenant);
        let source = id(&filter.source);
        let not_source = id(&filter.not_source);
        let visible = |i: usize| {
            let tenant_ok = match tenant {
                None => true,
                Some(wanted) => self.tenants[i].is_none() || self.tenants[i].as_ref() == wanted,
            };
            let source_ok = match source {
                None => true,
                Some(wanted) => Some(&self.sources[i]) == wanted,
            };
            let not_source_ok = match not_source {
                None | Some(None) => true,
                Some(Some(excluded)) => self.sources[i] != *excluded,
            };
            tenant_ok && source_ok && not_source_ok
        };
        let query: Vec<u64> = words(query, self.words_per_vector).collect();
        let unfiltered = tenant.is_none() && source.is_none() && not_source.is_none();
        // The best `n` so far, the worst on top.
        let mut best: BinaryHeap<(u32, i64)> = BinaryHeap::with_capacity(n + 1);
        for (i, bits) in self.words.chunks_exact(self.words_per_vector).enumerate() {
            let distance: u32 = bits
                .iter()
                .zip(&query)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            let candidate = (distance, self.rowids[i]);
            if best.len() == n && best.peek().is_some_and(|worst| candidate >= *worst) {
                continue;
            }
            if !unfiltered && !visible(i) {
                continue;
            }
            best.push(candidate);
            if best.len() > n {
                best.pop();
            }
        }
        best.into_sorted_vec()
            .into_iter()
            .map(|(_, rowid)| rowid)
            .collect()
    }
}

/// Bytes as little-endian words, `count` of them (zeros past the bytes' end): two vectors'
/// Hamming distance is the same over their words.
fn words(bytes: &[u8], count: usize) -> impl Iterator<Item = u64> + '_ {
    (0..count).map(move |i| {
        let mut word = [0u8; 8];
        let chunk = bytes.get(i * 8..).unwrap_or_default();
        let len = chunk.len().min(8);
        word[..len].copy_from_slice(&chunk[..len]);
        u64::from_le_bytes(word)
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    fn version(inserted: i64, deleted: i64) -> TableVersion {
        TableVersion { inserted, deleted }
    }

    fn filter(
        tenant: Option<&str>,
        source: Option<&str>,
        not_source: Option<&str>,
    ) -> SearchFilter {
        SearchFilter {
            tenant: tenant.map(String::from),
            source: source.map(String::from),
            not_source: not_source.map(String::from),
        }
    }

    #[test]
    fn sign_bits_are_laid_out_as_sqlite_vec_lays_them() {
        let mut vector = vec![-1.0f32; 16];
        vector[0] = 0.5;
        vector[9] = 2.0;
        vector[15] = 0.1;
        vector[3] = 0.0; // zero is not positive
        assert_eq!(sign_bits(&vector), [0b0000_0001, 0b1000_0010]);
    }

    #[test]
    fn the_nearest_rows_come_first_and_ties_go_by_rowid() {
        let mut set = BitSet::new(72, version(4, 0));
        let query = [0u8; 9];
        set.push(10, None, "runbooks", &[0xff, 0, 0, 0, 0, 0, 0, 0, 0]); // 8 bits off
        set.push(11, None, "runbooks", &[0, 0, 0, 0, 0, 0, 0, 0, 0x01]); // 1, in the tail
        set.push(12, None, "runbooks", &[0; 9]); // equal
        set.push(13, None, "runbooks", &[0, 0, 0, 0, 0, 0, 0, 0x80, 0]); // 1
        assert_eq!(
            set.nearest(&query, 3, &SearchFilter::default()),
            [12, 11, 13]
        );
        assert_eq!(
            set.nearest(&query, 10, &SearchFilter::default()),
            [12, 11, 13, 10]
        );
        assert!(set.nearest(&query, 0, &SearchFilter::default()).is_empty());
        assert!(
            set.nearest(&[0; 8], 3, &SearchFilter::default()).is_empty(),
            "other width"
        );
    }

    #[test]
    fn a_tenant_sees_its_own_rows_and_the_global_ones_only() {
        let mut set = BitSet::new(8, version(4, 0));
        set.push(1, Some("acme"), "runbooks", &[0]);
        set.push(2, Some("globex"), "runbooks", &[0]);
        set.push(3, None, "runbooks", &[0]);
        set.push(4, None, "cases", &[0]);
        let all = |f: &SearchFilter| set.nearest(&[0], 10, f);
        assert_eq!(all(&filter(Some("acme"), None, None)), [1, 3, 4]);
        assert_eq!(all(&filter(Some("initech"), None, None)), [3, 4]);
        assert_eq!(all(&filter(None, None, None)), [1, 2, 3, 4]);
        assert_eq!(all(&filter(None, Some("cases"), None)), [4]);
        assert_eq!(all(&filter(None, Some("wiki"), None)), Vec::<i64>::new());
        assert_eq!(all(&filter(Some("acme"), None, Some("cases"))), [1, 3]);
        assert_eq!(all(&filter(None, None, Some("wiki"))), [1, 2, 3, 4]);
    }

    #[test]
    fn inserts_alone_append_anything_else_reloads() {
        let mut set = BitSet::new(8, version(2, 1));
        set.push(5, None, "runbooks", &[0]);
        set.push(7, None, "runbooks", &[0]);
        set.push(9, None, "runbooks", &[0, 0]); // not a vector of this width
        assert_eq!(set.len(), 2);
        assert_eq!(set.refresh_for(version(2, 1)), Refresh::Current);
        assert_eq!(
            set.refresh_for(version(5, 1)),
            Refresh::Append { after_rowid: 7 }
        );
        assert_eq!(set.refresh_for(version(5, 2)), Refresh::Reload);
        assert_eq!(set.refresh_for(version(2, 2)), Refresh::Reload);
        // Counters that went back (a database restored from an older copy, say).
        assert_eq!(set.refresh_for(version(1, 0)), Refresh::Reload);
        set.set_version(version(5, 1));
        assert_eq!(set.version(), version(5, 1));
        // Read again: empty, the same width.
        let mut fresh = set.emptied(version(6, 2));
        assert!(fresh.is_empty());
        assert_eq!(fresh.version(), version(6, 2));
        fresh.push(8, None, "runbooks", &[0]);
        assert_eq!(fresh.len(), 1);
    }
}
