//! What the primary's `pg_proc` says about the functions a read may call.
//!
//! A `SELECT` that calls a user-defined VOLATILE function may write (a
//! PL/pgSQL function that updates a table, called from `SELECT`): it must
//! run on the primary, and its commit must move the session's causal LSN.
//! The classifier sees only names, so each database's catalog is read from
//! the primary: the names of VOLATILE functions outside `pg_catalog` (the
//! built-ins are judged by the classifier's own table, which knows
//! `random()` from `nextval()`). Reads calling only STABLE or IMMUTABLE
//! functions, or built-ins, keep going to replicas.
//!
//! When it is read: by the first session of a database, on its greeting
//! connection before the client is told it is in; again right after any
//! statement that may create, change or drop functions (pipelined behind
//! it on the same primary connection); and afresh after `RELOAD`, which
//! builds a new, empty set of catalogs. A database whose catalog could
//! not be read treats every call as a possible write: every doubt goes to
//! the primary.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

/// The names of VOLATILE functions outside the system schemas, lowercased
/// (the classifier compares names case-insensitively, which can only
/// over-approximate).
pub const VOLATILE_FUNCTIONS_QUERY: &str = "SELECT DISTINCT lower(p.proname) \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.provolatile = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// One database's volatile functions, or `None` until read (or when
/// reading failed).
#[derive(Debug, Default)]
pub struct Catalog {
    volatile: RwLock<Option<Arc<HashSet<String>>>>,
}

impl Catalog {
    pub fn is_loaded(&self) -> bool {
        self.snapshot().is_some()
    }

    fn snapshot(&self) -> Option<Arc<HashSet<String>>> {
        match self.volatile.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the catalog with what the primary answered.
    pub fn load(&self, names: impl IntoIterator<Item = String>) {
        let set: HashSet<String> = names.into_iter().collect();
        tracing::debug!(volatile_functions = set.len(), "function catalog read");
        let mut guard = match self.volatile.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Some(Arc::new(set));
    }

    /// The first of `calls` that may write: a known VOLATILE user function,
    /// or any call at all while the catalog is unknown.
    pub fn writing_call<'a>(&self, calls: &'a [String]) -> Option<&'a str> {
        if calls.is_empty() {
            return None;
        }
        match self.snapshot() {
            Some(volatile) => calls
                .iter()
                .find(|c| volatile.contains(c.as_str()))
                .map(String::as_str),
            None => calls.first().map(String::as_str),
        }
    }
}

/// Catalogs by database name.
#[derive(Debug, Default)]
pub struct Catalogs {
    by_database: DashMap<String, Arc<Catalog>>,
}

impl Catalogs {
    pub fn get(&self, database: &str) -> Arc<Catalog> {
        if let Some(found) = self.by_database.get(database) {
            return found.clone();
        }
        self.by_database
            .entry(database.to_string())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn only_volatile_user_functions_write_once_loaded() {
        let catalogs = Catalogs::default();
        let catalog = catalogs.get("app");
        // Unknown catalog: every call is a doubt.
        assert_eq!(catalog.writing_call(&calls(&["count"])), Some("count"));
        assert_eq!(catalog.writing_call(&[]), None);
        catalog.load(calls(&["apply_payment"]));
        assert!(catalogs.get("app").is_loaded());
        assert!(!catalogs.get("other").is_loaded());
        assert_eq!(catalog.writing_call(&calls(&["count", "lower"])), None);
        assert_eq!(
            catalog.writing_call(&calls(&["count", "apply_payment"])),
            Some("apply_payment")
        );
    }
}
