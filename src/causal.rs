//! Causal LSNs shared between connections: every session that names the
//! same client (`causeway.client_id`, or the login role) reads at least as
//! fresh as the newest write any of them committed.
//!
//! A concurrent map with expiry and a size bound: a client unheard of for
//! `ttl` is forgotten (its writes are long replayed everywhere by then), and
//! a flood of distinct ids cannot grow memory past `max_entries`.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::lsn::Lsn;

#[derive(Debug)]
pub struct CausalMap {
    map: DashMap<String, (Lsn, Instant)>,
    ttl: Duration,
    max_entries: usize,
    /// The newest commit LSN of any session (`causal_scope = "global"`).
    newest: std::sync::atomic::AtomicU64,
}

impl CausalMap {
    pub fn new(ttl: Duration, max_entries: usize) -> CausalMap {
        CausalMap {
            map: DashMap::new(),
            ttl,
            max_entries: max_entries.max(1),
            newest: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The newest commit LSN any session of this proxy has seen, if any.
    pub fn newest(&self) -> Option<Lsn> {
        match self.newest.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            lsn => Some(Lsn(lsn)),
        }
    }

    /// Raises the proxy-wide newest commit LSN to at least `lsn`.
    pub fn advance_newest(&self, lsn: Lsn) {
        self.newest
            .fetch_max(lsn.0, std::sync::atomic::Ordering::AcqRel);
    }

    /// The client's causal LSN, if it wrote within the last `ttl`.
    pub fn get(&self, client: &str) -> Option<Lsn> {
        let entry = self.map.get(client)?;
        let (lsn, at) = *entry;
        (at.elapsed() < self.ttl).then_some(lsn)
    }

    /// Raises the client's causal LSN to at least `lsn`.
    pub fn advance(&self, client: &str, lsn: Lsn) {
        let now = Instant::now();
        if let Some(mut entry) = self.map.get_mut(client) {
            let (old, at) = *entry;
            let fresh = at.elapsed() < self.ttl;
            *entry = (if fresh { old.max(lsn) } else { lsn }, now);
            return;
        }
        if self.map.len() >= self.max_entries {
            self.make_room(now);
        }
        self.map.insert(client.to_string(), (lsn, now));
    }

    /// Drops expired entries; if the map is still full, the oldest tenth.
    fn make_room(&self, now: Instant) {
        self.map
            .retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        if self.map.len() < self.max_entries {
            return;
        }
        let mut ages: Vec<Instant> = self.map.iter().map(|e| e.value().1).collect();
        let cut = (ages.len() / 10).max(1);
        ages.select_nth_unstable(cut - 1);
        let threshold = ages[cut - 1];
        self.map.retain(|_, (_, at)| *at > threshold);
    }

    /// Forgets expired clients; run now and then.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.map
            .retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_only_moves_forward() {
        let map = CausalMap::new(Duration::from_secs(60), 10);
        map.advance("alice", Lsn(100));
        map.advance("alice", Lsn(50));
        assert_eq!(map.get("alice"), Some(Lsn(100)));
        map.advance("alice", Lsn(150));
        assert_eq!(map.get("alice"), Some(Lsn(150)));
        assert_eq!(map.get("bob"), None);
    }

    #[test]
    fn entries_expire() {
        let map = CausalMap::new(Duration::from_millis(20), 10);
        map.advance("alice", Lsn(100));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(map.get("alice"), None);
        map.advance("alice", Lsn(10));
        assert_eq!(
            map.get("alice"),
            Some(Lsn(10)),
            "an expired LSN does not come back"
        );
        std::thread::sleep(Duration::from_millis(30));
        map.sweep();
        assert!(map.is_empty());
    }

    #[test]
    fn a_million_clients_stay_within_the_bound() {
        let map = CausalMap::new(Duration::from_secs(300), 10_000);
        for i in 0..1_000_000u64 {
            map.advance(&format!("client-{i}"), Lsn(i));
            assert!(map.len() <= 10_000);
        }
        // The newest client is always kept.
        assert_eq!(map.get("client-999999"), Some(Lsn(999_999)));
    }
}
