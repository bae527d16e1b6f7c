//! Session settings as a client or a server connection has them: name ->
//! the SQL that sets it.
//!
//! Before each unit a session asks whether its connection's settings are
//! its own. Comparing two maps of startup settings (`application_name`,
//! `DateStyle`, ...) on every unit costs more than the rest of the
//! catch-up, so each map carries a stamp: a value taken from a process-wide
//! counter whenever the map changes, and copied with it. Two maps with the
//! same stamp are copies of one state, and equal without a look inside.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Stamps handed out so far; 0 is the empty map's.
static STAMPS: AtomicU64 = AtomicU64::new(1);

fn fresh_stamp() -> u64 {
    STAMPS.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Clone, Default)]
pub struct Settings {
    map: BTreeMap<String, String>,
    /// Equal stamps mean equal maps (never the converse).
    stamp: u64,
}

impl Settings {
    pub fn insert(&mut self, name: String, sql: String) {
        self.map.insert(name, sql);
        self.stamp = fresh_stamp();
    }

    pub fn remove(&mut self, name: &str) {
        if self.map.remove(name).is_some() {
            self.stamp = fresh_stamp();
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.stamp = 0;
    }

    pub fn retain(&mut self, keep: impl FnMut(&String, &mut String) -> bool) {
        let before = self.map.len();
        self.map.retain(keep);
        if self.map.len() != before {
            self.stamp = if self.map.is_empty() {
                0
            } else {
                fresh_stamp()
            };
        }
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.map.get(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.map.iter()
    }

    /// Whether `self` holds what `other` holds. One comparison when they
    /// are copies of one state; otherwise the maps are compared, and when
    /// equal `self` takes `other`'s stamp, so the next question is cheap.
    pub fn matches(&mut self, other: &Settings) -> bool {
        if self.stamp == other.stamp {
            return true;
        }
        if self.map != other.map {
            return false;
        }
        self.stamp = other.stamp;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str) -> (String, String) {
        (name.to_string(), format!("SET {name} = 'x'"))
    }

    #[test]
    fn copies_match_and_changes_do_not() {
        let mut session = Settings::default();
        let (name, sql) = set("datestyle");
        session.insert(name, sql);
        let mut conn = session.clone();
        assert!(conn.matches(&session));
        let (name, sql) = set("search_path");
        session.insert(name, sql);
        assert!(!conn.matches(&session));
        session.remove("search_path");
        // Same contents, different stamps: compared, then adopted.
        assert!(conn.matches(&session));
        assert_eq!(conn.stamp, session.stamp);
    }

    #[test]
    fn the_same_change_made_on_both_sides_matches() {
        let mut session = Settings::default();
        let mut conn = Settings::default();
        assert!(conn.matches(&session));
        let (name, sql) = set("timezone");
        session.insert(name.clone(), sql.clone());
        conn.insert(name, sql);
        assert_ne!(conn.stamp, session.stamp);
        assert!(conn.matches(&session));
        conn.insert("timezone".into(), "SET timezone = 'UTC'".into());
        assert!(!conn.matches(&session));
    }

    #[test]
    fn emptied_maps_match_the_empty_map() {
        let mut conn = Settings::default();
        let (name, sql) = set("role");
        conn.insert(name, sql);
        let mut empty = Settings::default();
        assert!(!empty.matches(&conn));
        conn.retain(|_, _| false);
        assert!(conn.matches(&Settings::default()));
        conn.insert("a".into(), "SET a = 1".into());
        conn.clear();
        assert!(conn.matches(&Settings::default()));
        // A retain that keeps everything changes nothing.
        let mut kept = Settings::default();
        kept.insert("b".into(), "SET b = 1".into());
        let copy = kept.clone();
        kept.retain(|_, _| true);
        assert_eq!(kept.stamp, copy.stamp);
    }
}
