//! The facts cache: a statement's facts by its text, or by the text with
//! its literals blanked, shared by all sessions, so a statement is
//! classified once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::facts::{from_sql, SharedFacts, UnitFacts};

/// Facts by statement text, shared by all sessions, so a statement a
/// driver prepares or sends again and again is parsed once. Bounded: when
/// full it is cleared, which costs re-parsing, never correctness.
#[derive(Debug)]
pub struct FactsCache {
    map: dashmap::DashMap<String, SharedFacts, foldhash::fast::RandomState>,
    capacity: usize,
    /// [`FactsCache::learn_write`] has learned a write (never unset: see
    /// [`cached_query`]).
    learned: AtomicBool,
}

impl FactsCache {
    pub fn new(capacity: usize) -> FactsCache {
        FactsCache {
            map: dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default()),
            capacity,
            learned: AtomicBool::new(false),
        }
    }

    /// Texts longer than this are classified every time, never kept: a
    /// client must not fill the proxy's memory with one-off giant queries.
    pub const MAX_CACHED_SQL_BYTES: usize = 16 * 1024;

    pub fn get_or_insert(&self, sql: &str, make: impl FnOnce() -> UnitFacts) -> SharedFacts {
        if let Some(found) = self.map.get(sql) {
            return found.clone();
        }
        let facts = Arc::new(make());
        if sql.len() > Self::MAX_CACHED_SQL_BYTES || self.capacity == 0 {
            return facts;
        }
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(sql.to_string(), facts.clone());
        facts
    }
}

impl FactsCache {
    /// Records that `sql` needs the primary after all (a replica refused
    /// it), so every session routes it there from now on. Kept until the
    /// cache is next cleared, when a replica will teach it again.
    pub fn learn_write(&self, sql: &str, reason: &'static str) {
        if sql.len() > Self::MAX_CACHED_SQL_BYTES || self.capacity == 0 {
            return;
        }
        let mut facts = match self.map.get(sql) {
            Some(found) => (**found).clone(),
            None => from_sql(sql, &[]),
        };
        if facts.write_reason.is_some() {
            return;
        }
        facts.write_reason = Some(reason);
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(sql.to_string(), Arc::new(facts));
        self.learned.store(true, Ordering::Release);
    }
}

/// The facts of a SQL text, from the cache or the classifier.
///
/// Looked up by exact text first (drivers repeat prepared texts), then by
/// the text with its literals blanked (simple-protocol clients inline
/// values). Only facts that hold no text of their own are shared under
/// the blanked key: a SET's replay statement must be its own. Blanked keys
/// start with a NUL, which no statement text holds, so a key is never
/// taken for a text: `SELECT set_config('', '', false)` filed under its
/// own text is not found by the key of `SELECT set_config('a', 'x',
/// false)`, nor `EXPLAIN (ANALYZE 0) ...` by that of `(ANALYZE 1)`.
pub fn cached(cache: &FactsCache, sql: &str, extra_write_functions: &[String]) -> SharedFacts {
    if sql.len() > FactsCache::MAX_CACHED_SQL_BYTES {
        // Never kept, under its text or its key: classified every time.
        return Arc::new(from_sql(sql, extra_write_functions));
    }
    if let Some(found) = cache.map.get(sql) {
        return found.clone();
    }
    with_key(|key| {
        if !key_of(sql, key).is_empty() {
            if let Some(found) = cache.map.get(key.as_str()) {
                return found.clone();
            }
        }
        classify_and_file(cache, sql, key, extra_write_functions)
    })
}

/// The key is built in a buffer kept per thread: most lookups hit, and a
/// hit should not allocate. Holds `\0` and the key of the text last looked
/// up, or is empty when that text had none.
fn with_key<T>(f: impl FnOnce(&mut String) -> T) -> T {
    thread_local! {
        static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    KEY.with_borrow_mut(f)
}

/// Writes the literal-blind key of `sql` into `key`, after a `\0`, and
/// returns it; leaves `key` empty when the text cannot be scanned with
/// certainty.
fn key_of<'k>(sql: &str, key: &'k mut String) -> &'k str {
    key.clear();
    key.push('\0');
    if !super::normalize::write_literal_blind_key(sql, key) {
        key.clear();
    }
    key
}

/// As [`cached`], for a text that likely holds literals (a simple-protocol
/// Query's: clients inline their values there): looked up by its key
/// first, which is where such texts' facts are filed, so the usual lookup
/// is one search of the shared map instead of a miss by text and a hit by
/// key. Facts filed under a key hold for every text of that key (what
/// could differ by a literal is never filed under one), unless a text of
/// it was learned to write since the proxy started, which only a search by
/// text finds: then the order is [`cached`]'s.
pub fn cached_query(
    cache: &FactsCache,
    sql: &str,
    extra_write_functions: &[String],
) -> SharedFacts {
    if sql.len() > FactsCache::MAX_CACHED_SQL_BYTES || cache.learned.load(Ordering::Acquire) {
        return cached(cache, sql, extra_write_functions);
    }
    with_key(|key| {
        // A text without literals (or without a key) is filed under itself.
        let by_key = !key_of(sql, key).is_empty() && key[1..] != *sql;
        if by_key {
            if let Some(found) = cache.map.get(key.as_str()) {
                return found.clone();
            }
        }
        if let Some(found) = cache.map.get(sql) {
            return found.clone();
        }
        classify_and_file(cache, sql, key, extra_write_functions)
    })
}

/// The facts of `sql`, found neither under its text nor under its key
/// (or nothing) in `key`: classified, and filed under the key if they hold
/// for every text of it, else under the text.
fn classify_and_file(
    cache: &FactsCache,
    sql: &str,
    key: &str,
    extra_write_functions: &[String],
) -> SharedFacts {
    let facts = from_sql(sql, extra_write_functions);
    // Some literals decide a verdict, and may be written as strings or
    // numbers: set_config's third argument (is_local) whether it pins the
    // session, EXPLAIN's `ANALYZE 0` / `ANALYZE 'on'` whether the
    // statement runs, a setting's name (`current_setting(...)`, a row of
    // `pg_settings`) whether the primary must answer, being
    // `transaction_read_only` (see `classify::asks_server_role`). Never
    // share a verdict that may hang on them.
    let mentions = |word: &[u8]| {
        sql.as_bytes()
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
    };
    let literal_decides = mentions(b"set_config")
        || mentions(b"analyze")
        || mentions(b"analyse")
        || mentions(b"current_setting")
        || mentions(b"pg_settings");
    let shareable = facts.effects.is_empty()
        && facts.executes.is_empty()
        && facts.pins.is_empty()
        && !literal_decides;
    // A text without literals is its own key: filed under the text, the
    // first lookup finds it next time (drivers send such texts again and
    // again, with `$1` parameters).
    if shareable && !key.is_empty() && key[1..] != *sql {
        cache.get_or_insert(key, || facts)
    } else {
        cache.get_or_insert(sql, || facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::facts::{Effect, Hint, UNREADABLE};

    #[test]
    fn cache_returns_the_same_facts_and_stays_bounded() {
        let cache = FactsCache::new(4);
        let extra = vec!["mark_seen".to_string()];
        let first = cached(&cache, "SELECT mark_seen(1)", &extra);
        let again = cached(&cache, "SELECT mark_seen(1)", &extra);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.write_reason, Some("configured writing function"));
        for n in 0..20 {
            let facts = cached(&cache, &format!("SELECT {n}"), &extra);
            assert!(facts.is_read());
            assert!(cache.map.len() <= 4);
        }
        let huge = format!(
            "SELECT {}1",
            "1 + ".repeat(FactsCache::MAX_CACHED_SQL_BYTES / 4)
        );
        let cache = FactsCache::new(4);
        assert!(cached(&cache, &huge, &extra).is_read());
        assert!(cache.map.is_empty());
    }

    #[test]
    fn set_config_verdicts_are_never_shared_by_literal_blind_key() {
        let cache = FactsCache::new(100);
        let local = cached(&cache, "SELECT set_config('a', 'x', 'true')", &[]);
        assert!(local.pins.is_empty());
        let session = cached(
            &cache,
            "SELECT set_config('search_path', 'leak', 'false')",
            &[],
        );
        assert!(session.pins.is_empty());
        assert_eq!(
            session.effects,
            vec![Effect::Set {
                name: "search_path".into(),
                sql: "SELECT set_config('search_path', 'leak', 'false')".into()
            }]
        );
        let computed = cached(
            &cache,
            "SELECT set_config('search_path', 'a' || 'b', 'false')",
            &[],
        );
        assert_eq!(computed.pins, vec!["set_config"]);
    }

    #[test]
    fn setting_name_verdicts_are_never_shared_by_literal_blind_key() {
        let cache = FactsCache::new(100);
        // Either first: each text gets its own verdict.
        for (first, second) in [
            ("'transaction_read_only'", "'search_path'"),
            ("'work_mem'", "'in_hot_standby'"),
        ] {
            for template in [
                "SELECT current_setting(X)",
                "SELECT setting FROM pg_settings WHERE name = X",
            ] {
                for text in [first, second] {
                    let sql = template.replace('X', text);
                    let facts = cached_query(&cache, &sql, &[]);
                    let role = text.contains("read_only") || text.contains("standby");
                    assert_eq!(facts.hint == Some(Hint::Primary), role, "{sql}");
                }
            }
        }
    }

    /// The lexer refuses `E'\777'` (a byte the server takes in a
    /// database whose encoding is not UTF-8); the literal-blind scanner
    /// does not. The refusal must not become the verdict of a text that
    /// differs only in its literals: that one's SET would go unseen.
    #[test]
    fn an_unreadable_text_pins_and_shares_no_verdict() {
        let cache = FactsCache::new(100);
        let unreadable = cached(&cache, "SELECT E'\\777' ; SET app.tenant = ''", &[]);
        assert_eq!(unreadable.pins, vec![UNREADABLE]);
        assert!(unreadable.writes());
        let readable = cached(&cache, "SELECT E'\\x41' ; SET app.tenant = 'mine'", &[]);
        assert!(readable.pins.is_empty());
        assert_eq!(
            readable.effects,
            vec![Effect::Set {
                name: "app.tenant".into(),
                sql: "SET app.tenant = 'mine'".into()
            }]
        );
    }

    /// A Query's text is looked up by its key first. Whatever the order
    /// texts come in, and after a text is learned to write, it gets the
    /// facts a lookup by text first gives.
    #[test]
    fn a_query_looked_up_by_key_first_gets_the_facts_of_its_own_text() {
        let texts = [
            "SELECT abalance FROM t WHERE aid = 5",
            "SELECT abalance FROM t WHERE aid = 6",
            "UPDATE t SET a = a + -3 WHERE aid = 5",
            "SET app.tenant = 'a'",
            "SET app.tenant = 'b'",
            "SELECT set_config('a', 'x', 'true')",
            "SELECT set_config('a', 'x', 'false')",
            "EXPLAIN (ANALYZE 'off') DELETE FROM t WHERE aid = 1",
            "EXPLAIN (ANALYZE 'on') DELETE FROM t WHERE aid = 1",
            "SELECT now()",
            "BEGIN",
            "SELECT E'\\777' ; SET app.tenant = ''",
            "SELECT E'\\x41' ; SET app.tenant = 'mine'",
        ];
        for rotation in 0..texts.len() {
            let cache = FactsCache::new(100);
            for _ in 0..2 {
                for sql in texts.iter().cycle().skip(rotation).take(texts.len()) {
                    assert_eq!(*cached_query(&cache, sql, &[]), from_sql(sql, &[]), "{sql}");
                }
            }
        }
        let cache = FactsCache::new(100);
        let learned = "SELECT my_writer(1)";
        assert!(cached_query(&cache, learned, &[]).is_read());
        cache.learn_write(learned, "refused by a replica");
        assert!(cached_query(&cache, learned, &[]).writes());
        assert!(cached_query(&cache, "SELECT my_writer(2)", &[]).is_read());
    }
}
