//! [`ClassifyCache`]: [`classify`] memoised by SQL text.
//!
//! Applications send the same few texts over and over (prepared statement
//! bodies, ORM queries with `$n` parameters), and classifying one means
//! tokenizing it and often parsing it, so the verdict is worth keeping. It
//! sits apart from the classifier because it is the only part with state:
//! everything else in this module is a pure function of the text.

use std::sync::Arc;

use dashmap::DashMap;

use super::{classify, Classification};

/// Memoises [`classify`] by SQL text. Bounded: when full, about half the
/// entries are dropped (cheaper than LRU bookkeeping on every hit; the
/// texts a workload repeats come straight back). Texts longer than
/// [`ClassifyCache::MAX_CACHED_SQL_BYTES`] are classified but not kept.
/// The extra write functions are fixed per cache: build a new one on reload.
pub struct ClassifyCache {
    entries: DashMap<String, Arc<Classification>>,
    capacity: usize,
    extra_write_functions: Vec<String>,
}

impl ClassifyCache {
    pub const MAX_CACHED_SQL_BYTES: usize = 16 * 1024;

    pub fn new(capacity: usize, extra_write_functions: Vec<String>) -> Self {
        ClassifyCache {
            entries: DashMap::new(),
            capacity,
            extra_write_functions,
        }
    }

    pub fn get_or_classify(&self, sql: &str) -> Arc<Classification> {
        if let Some(hit) = self.entries.get(sql) {
            return Arc::clone(hit.value());
        }
        let classified = Arc::new(classify(sql, &self.extra_write_functions));
        if self.capacity > 0 && sql.len() <= Self::MAX_CACHED_SQL_BYTES {
            if self.entries.len() >= self.capacity {
                let mut keep = false;
                self.entries.retain(|_, _| {
                    keep = !keep;
                    keep
                });
            }
            self.entries.insert(sql.to_owned(), Arc::clone(&classified));
        }
        classified
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
