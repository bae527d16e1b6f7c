//! The status line: one line of numbers, every few seconds, so the demo can
//! be watched without reading its per-event logs. Formatting only; where
//! each number comes from is `status::Reporter`'s business (see there).
//!
//! A number that could not be had this time is `?`, never a guess.

use std::fmt;
use std::time::Duration;

use crate::simulate::Summary;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// Since the simulator started.
    pub elapsed: Duration,
    /// The simulator's own counters.
    pub rides: Summary,
    /// Reads causeway sent to replicas and to the primary since the
    /// simulator started, and how many of the primary's fell back to it.
    pub reads: Option<Reads>,
    /// The 99th percentile of read waits since the last line: `Some(None)`
    /// when no read waited.
    pub read_wait_p99: Option<Option<Duration>>,
    /// Per consumer (by name), stream entries it has not yet committed.
    pub consumer_lag: Option<Vec<(String, Lag)>>,
    /// WAL bytes the CDC slot has not consumed.
    pub cdc_lag_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub replica: u64,
    pub primary: u64,
    /// Primary reads no replica could take (none caught up, or none healthy).
    pub fell_back: u64,
}

/// Entries behind; `at_least` when counting stopped at a cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    pub entries: u64,
    pub at_least: bool,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rides = &self.rides;
        write!(
            f,
            "[{:>3}s] rides: {} created, {} declined, {} gave up ({} failed attempts retried)",
            self.elapsed.as_secs(),
            rides.created,
            rides.declined,
            rides.gave_up,
            rides.failed_attempts(),
        )?;
        match self.reads {
            Some(Reads {
                replica,
                primary,
                fell_back,
            }) => {
                let share = (replica * 100)
                    .checked_div(replica + primary)
                    .map_or("-".to_string(), |percent| format!("{percent}%"));
                write!(
                    f,
                    " | reads: replica {replica} ({share}), primary {primary} ({fell_back} fell back)"
                )?;
            }
            None => write!(f, " | reads: ?")?,
        }
        write!(f, " | stale: {}", rides.stale_reads)?;
        match self.read_wait_p99 {
            Some(Some(p99)) => write!(f, " | read-wait p99: {}", millis(p99))?,
            Some(None) => write!(f, " | read-wait p99: - (no waits)")?,
            None => write!(f, " | read-wait p99: ?")?,
        }
        match &self.consumer_lag {
            Some(lags) => {
                let lags: Vec<String> = lags
                    .iter()
                    .map(|(name, lag)| {
                        let plus = if lag.at_least { "+" } else { "" };
                        format!("{name}={}{plus}", lag.entries)
                    })
                    .collect();
                write!(f, " | consumer lag: {}", lags.join(" "))?;
            }
            None => write!(f, " | consumer lag: ?")?,
        }
        match self.cdc_lag_bytes {
            Some(bytes) => write!(f, " | cdc lag: {}", size(bytes)),
            None => write!(f, " | cdc lag: ?"),
        }
    }
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} kB", b as f64 / 1024.0),
        b => format!("{:.1} MB", b as f64 / (1024.0 * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_with_every_number() {
        let mut rides = Summary {
            rides: 60,
            created: 58,
            declined: 2,
            ..Summary::default()
        };
        rides.requests_by_status.insert(201, 58);
        rides.requests_by_status.insert(402, 2);
        rides.requests_by_status.insert(500, 25);
        rides.requests_by_status.insert(503, 3);
        let status = Status {
            elapsed: Duration::from_secs(35),
            rides,
            reads: Some(Reads {
                replica: 970,
                primary: 30,
                fell_back: 4,
            }),
            read_wait_p99: Some(Some(Duration::from_micros(1840))),
            consumer_lag: Some(vec![
                ("a".into(), Lag::default()),
                (
                    "b".into(),
                    Lag {
                        entries: 1000,
                        at_least: true,
                    },
                ),
            ]),
            cdc_lag_bytes: Some(2150),
        };
        assert_eq!(
            status.to_string(),
            "[ 35s] rides: 58 created, 2 declined, 0 gave up (28 failed attempts retried) \
             | reads: replica 970 (97%), primary 30 (4 fell back) | stale: 0 \
             | read-wait p99: 1.8ms | consumer lag: a=0 b=1000+ | cdc lag: 2.1 kB"
        );
    }

    #[test]
    fn unknown_numbers_are_question_marks() {
        let status = Status {
            read_wait_p99: Some(None),
            ..Status::default()
        };
        let line = status.to_string();
        assert!(line.contains("reads: ?"), "{line}");
        assert!(line.contains("read-wait p99: - (no waits)"), "{line}");
        assert!(line.contains("consumer lag: ?"), "{line}");
        assert!(line.ends_with("cdc lag: ?"), "{line}");
        assert!(!line.contains('\n'));
    }
}
