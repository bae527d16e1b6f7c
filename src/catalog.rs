//! What the primary's `pg_proc` says about the functions a statement may
//! call.
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
//! A function may also change the session's settings where the proxy cannot
//! see: `PERFORM set_config('app.tenant', t, false)` in a `set_tenant(t)`.
//! Postgres 15 reports no custom setting, so the proxy could neither replay
//! it on the session's next connection nor undo it for the next client. The
//! catalog also names such *setters*: user functions whose source mentions
//! `set_config`, or starts a statement with `SET` or `RESET` (also inside an
//! `EXECUTE` string), and the functions whose source names a setter as a
//! word, to any depth (the sources are cut into words once, and each round
//! is a join: a regex per pair of functions took a second for 2,000
//! functions). A call of a setter pins the session to its connection. A
//! setter the source does not show (a name built at run time, a C
//! function, a caller naming it as `"odd.name"`, which is not one word) is
//! not found.
//!
//! When it is read: by the first session of a database, on its greeting
//! connection before the client is told it is in; again right after any
//! statement that may create, change or drop functions (pipelined behind
//! it on the same primary connection); every
//! `[routing] function_catalog_refresh_ms`, behind the next unit that ends
//! work on the primary or at the next client's greeting, whichever comes
//! first (functions created without the proxy); and afresh after `RELOAD`,
//! which builds a new, empty set of catalogs. A database whose catalog could
//! not be read treats every call as a possible write: every doubt goes to
//! the primary.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

/// One column: the names of VOLATILE functions outside the system schemas,
/// lowercased (the classifier compares names case-insensitively, which can
/// only over-approximate), then the names of setters with
/// [`SETTER_MARK`] in front.
pub const VOLATILE_FUNCTIONS_QUERY: &str = r#"WITH RECURSIVE user_functions AS (
    SELECT lower(p.proname) AS name, p.prosrc AS source, p.provolatile AS volatility
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
), words AS MATERIALIZED (
    SELECT DISTINCT f.name, w.word
    FROM user_functions f, regexp_split_to_table(lower(f.source), E'[^a-z0-9_$]+') AS w(word)
), setters(name) AS (
    SELECT name FROM user_functions
    WHERE source ~* E'(set_config|(^|[;\'"$]|\\m(begin|then|else|loop))\\s*(re)?set\\M)'
    UNION
    SELECT w.name FROM words w JOIN setters s ON w.word = s.name
)
SELECT DISTINCT name FROM user_functions WHERE volatility = 'v'
UNION ALL
SELECT DISTINCT '=' || name FROM setters"#;

/// In front of a setter's name in [`VOLATILE_FUNCTIONS_QUERY`]'s answer (no
/// function name, once lowercased, starts with `=` unquoted; a quoted one
/// that does is taken for a setter, which only pins more).
pub const SETTER_MARK: char = '=';

#[derive(Debug)]
struct Functions {
    volatile: HashSet<String>,
    setters: HashSet<String>,
}

/// One database's functions, or `None` until read (or when reading
/// failed).
#[derive(Debug, Default)]
pub struct Catalog {
    functions: RwLock<Option<Arc<Functions>>>,
    /// Time to read it again (`[routing] function_catalog_refresh_ms`).
    due: AtomicBool,
    /// The last read found setters.
    any_setters: AtomicBool,
}

impl Catalog {
    pub fn is_loaded(&self) -> bool {
        self.snapshot().is_some()
    }

    /// True once after each [`Catalogs::mark_due`]: the session that takes
    /// it reads the catalog again. One load when it is not due.
    pub fn take_due(&self) -> bool {
        self.due.load(Ordering::Relaxed) && self.due.swap(false, Ordering::Relaxed)
    }

    fn snapshot(&self) -> Option<Arc<Functions>> {
        match self.functions.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the catalog with what the primary answered to
    /// [`VOLATILE_FUNCTIONS_QUERY`].
    pub fn load(&self, names: impl IntoIterator<Item = String>) {
        let mut functions = Functions {
            volatile: HashSet::new(),
            setters: HashSet::new(),
        };
        for name in names {
            match name.strip_prefix(SETTER_MARK) {
                Some(setter) => functions.setters.insert(setter.to_string()),
                None => functions.volatile.insert(name),
            };
        }
        tracing::debug!(
            volatile_functions = functions.volatile.len(),
            setters = functions.setters.len(),
            "function catalog read"
        );
        let mut guard = match self.functions.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.any_setters
            .store(!functions.setters.is_empty(), Ordering::Relaxed);
        *guard = Some(Arc::new(functions));
    }

    /// Whether any function is known to change settings: a statement that
    /// is a write anyway needs a look at the catalog only then (one load,
    /// where a look takes the lock; `INSERT INTO t (a, b)` reads as a call
    /// of `t`).
    pub fn has_setters(&self) -> bool {
        self.any_setters.load(Ordering::Relaxed)
    }

    /// What the catalog says of `calls`, from one look at it (every
    /// statement that calls a function asks both questions).
    pub fn judge<'a>(&self, calls: &'a [String]) -> Calls<'a> {
        if calls.is_empty() {
            return Calls::default();
        }
        let Some(functions) = self.snapshot() else {
            return Calls {
                writer: calls.first().map(String::as_str),
                setter: None,
            };
        };
        let find = |set: &HashSet<String>| calls.iter().find(|c| set.contains(c.as_str()));
        Calls {
            writer: find(&functions.volatile).map(String::as_str),
            setter: find(&functions.setters).map(String::as_str),
        }
    }
}

/// What the catalog says of a statement's calls.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Calls<'a> {
    /// The first that may write: a known VOLATILE user function, or any
    /// call at all while the catalog is unknown.
    pub writer: Option<&'a str>,
    /// The first that may change the session's settings unseen: a known
    /// setter. None while the catalog is unknown (such calls go to the
    /// primary as possible writes; a setter among them is not found).
    pub setter: Option<&'a str>,
}

/// Catalogs by database name.
#[derive(Debug, Default)]
pub struct Catalogs {
    by_database: DashMap<String, Arc<Catalog>>,
}

impl Catalogs {
    /// Marks every catalog read so far to be read again, by the next
    /// session of its database that can (functions may have been created
    /// on the server without the proxy seeing the DDL).
    pub fn mark_due(&self) {
        for catalog in self.by_database.iter() {
            if catalog.is_loaded() {
                catalog.due.store(true, Ordering::Relaxed);
            }
        }
    }

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
        assert_eq!(catalog.judge(&calls(&["count"])).writer, Some("count"));
        assert_eq!(catalog.judge(&[]).writer, None);
        catalog.load(calls(&["apply_payment"]));
        assert!(catalogs.get("app").is_loaded());
        assert!(!catalogs.get("other").is_loaded());
        assert_eq!(catalog.judge(&calls(&["count", "lower"])).writer, None);
        assert_eq!(
            catalog.judge(&calls(&["count", "apply_payment"])).writer,
            Some("apply_payment")
        );
    }

    #[test]
    fn a_refresh_is_taken_once_and_only_for_read_catalogs() {
        let catalogs = Catalogs::default();
        let read = catalogs.get("app");
        read.load(calls(&["apply_payment"]));
        let unread = catalogs.get("other");
        assert!(!read.take_due());
        catalogs.mark_due();
        assert!(!unread.take_due(), "a catalog never read is read anyway");
        assert!(read.take_due());
        assert!(!read.take_due(), "one session reads it again, not all");
    }

    #[test]
    fn setters_are_told_apart_by_their_mark() {
        let catalog = Catalog::default();
        assert_eq!(catalog.judge(&calls(&["set_tenant"])).setter, None);
        assert!(!catalog.has_setters());
        catalog.load(calls(&[
            "set_tenant",
            "apply_payment",
            "=set_tenant",
            "=stable_setter",
        ]));
        assert!(catalog.has_setters());
        assert_eq!(catalog.judge(&calls(&["stable_setter"])).writer, None);
        assert_eq!(
            catalog.judge(&calls(&["count", "stable_setter"])).setter,
            Some("stable_setter")
        );
        assert_eq!(catalog.judge(&calls(&["apply_payment"])).setter, None);
        assert_eq!(
            catalog.judge(&calls(&["set_tenant"])).writer,
            Some("set_tenant")
        );
    }
}
