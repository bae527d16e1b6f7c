//! What the simulator counted, and the one line it prints.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rides attempted (iterations).
    pub rides: u64,
    /// Rides that ended in a 201.
    pub created: u64,
    /// Rides that ended in a 402.
    pub declined: u64,
    /// Rides left unfinished on purpose for the completer.
    pub abandoned: u64,
    /// Rides still failing after the last retry, or refused (4xx).
    pub gave_up: u64,
    /// Every `POST /rides` answer, by status (0: no answer at all).
    pub requests_by_status: BTreeMap<u16, u64>,
    /// Every read of a created ride, by the server that answered.
    pub reads_by_server: BTreeMap<String, u64>,
    /// Reads that did not find the ride just created. Must stay 0.
    pub stale_reads: u64,
    /// Reads that failed otherwise (not counted as stale).
    pub read_errors: u64,
}

impl Summary {
    pub fn requests(&self) -> u64 {
        self.requests_by_status.values().sum()
    }

    pub fn reads(&self) -> u64 {
        self.reads_by_server.values().sum()
    }

    /// `POST /rides` attempts that failed in a way the simulator retries
    /// (no answer, 409, 5xx): mostly the failures the demo injects.
    pub fn failed_attempts(&self) -> u64 {
        self.requests_by_status
            .iter()
            .filter(|&(&status, _)| status == 0 || status == 409 || status >= 500)
            .map(|(_, n)| n)
            .sum()
    }
}

fn counts<K: fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    let items: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    items.join(" ")
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulator: {} rides ({} created, {} declined, {} abandoned, {} gave up); \
             {} requests [{}]; {} reads [{}]; {} read errors; stale reads: {}",
            self.rides,
            self.created,
            self.declined,
            self.abandoned,
            self.gave_up,
            self.requests(),
            counts(&self.requests_by_status),
            self.reads(),
            counts(&self.reads_by_server),
            self.read_errors,
            self.stale_reads,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line() {
        let mut s = Summary {
            rides: 2,
            created: 2,
            ..Summary::default()
        };
        s.requests_by_status.insert(201, 2);
        s.requests_by_status.insert(500, 1);
        s.reads_by_server.insert("replica0".into(), 2);
        let line = s.to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains("3 requests [201=2 500=1]"), "{line}");
        assert!(line.contains("2 reads [replica0=2]"), "{line}");
        assert!(line.ends_with("stale reads: 0"), "{line}");
    }
}
