//! Causal LSNs shared between connections: every session that names the
//! same client (`causeway.client_id`, or the login role) reads at least as
//! fresh as the newest write any of them committed.
//!
//! A concurrent map with expiry and a size bound: a client unheard of for
//! `ttl` is forgotten (its writes are long replayed everywhere by then), and
//! a flood of distinct ids cannot grow memory past `max_entries`.

//! Every LSN is kept with its epoch (the timeline switches seen when it was
//! written: [`Mark`]), so that after a promotion it can be carried into the
//! new timeline (see [`crate::replicas::History`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::replicas::Mark;

#[derive(Debug)]
pub struct CausalMap {
    map: DashMap<String, (Mark, Instant)>,
    ttl: Duration,
    max_entries: usize,
    /// The newest commit of any session (`causal_scope = "global"`). A
    /// lock, not an atomic: the LSN and its epoch move together.
    newest: Mutex<Option<Mark>>,
}

impl CausalMap {
    pub fn new(ttl: Duration, max_entries: usize) -> CausalMap {
        CausalMap {
            map: DashMap::new(),
            ttl,
            max_entries: max_entries.max(1),
            newest: Mutex::new(None),
        }
    }

    /// The newest commit any session of this proxy has seen, if any.
    pub fn newest(&self) -> Option<Mark> {
        *self.newest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises the proxy-wide newest commit to at least `mark`.
    pub fn advance_newest(&self, mark: Mark) {
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        *newest = Some(newest.map_or(mark, |old| old.max(mark)));
    }

    /// The client's causal LSN, if it wrote within the last `ttl`.
    pub fn get(&self, client: &str) -> Option<Mark> {
        let entry = self.map.get(client)?;
        let (mark, at) = *entry;
        (at.elapsed() < self.ttl).then_some(mark)
    }

    /// Raises the client's causal LSN to at least `mark`.
    pub fn advance(&self, client: &str, mark: Mark) {
        let now = Instant::now();
        if let Some(mut entry) = self.map.get_mut(client) {
            let (old, at) = *entry;
            let fresh = at.elapsed() < self.ttl;
            *entry = (if fresh { old.max(mark) } else { mark }, now);
            return;
        }
        if self.map.len() >= self.max_entries {
            self.make_room(now);
        }
        self.map.insert(client.to_string(), (mark, now));
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

    /// Every client's causal LSN still within the TTL.
    pub fn entries(&self) -> Vec<(String, Mark)> {
        self.map
            .iter()
            .filter(|e| e.value().1.elapsed() < self.ttl)
            .map(|e| (e.key().clone(), e.value().0))
            .collect()
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
    use crate::lsn::Lsn;

    fn at(lsn: u64) -> Mark {
        Mark {
            lsn: Lsn(lsn),
            epoch: 0,
        }
    }

    #[test]
    fn advance_only_moves_forward() {
        let map = CausalMap::new(Duration::from_secs(60), 10);
        map.advance("alice", at(100));
        map.advance("alice", at(50));
        assert_eq!(map.get("alice"), Some(at(100)));
        map.advance("alice", at(150));
        assert_eq!(map.get("alice"), Some(at(150)));
        assert_eq!(map.get("bob"), None);
    }

    #[test]
    fn entries_expire() {
        let map = CausalMap::new(Duration::from_millis(20), 10);
        map.advance("alice", at(100));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(map.get("alice"), None);
        map.advance("alice", at(10));
        assert_eq!(
            map.get("alice"),
            Some(at(10)),
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
            map.advance(&format!("client-{i}"), at(i));
            assert!(map.len() <= 10_000);
        }
        // The newest client is always kept.
        assert_eq!(map.get("client-999999"), Some(at(999_999)));
    }
}
