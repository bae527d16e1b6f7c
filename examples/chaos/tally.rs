//! What a chaos run saw: how statements failed, the counters every session
//! adds to, the events worth a line of their own (stale reads, lost writes,
//! closed sessions), and the summary printed at the end.
//!
//! Plain data and formatting, no I/O besides printing an event as it
//! happens, so that a stale read shows up in the log next to the chaos
//! action that preceded it rather than only in the final count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Events of each kind kept for the summary; the rest are only printed.
const EVENTS_KEPT: usize = 20;
/// Occurrences of each kind of error printed as they happen.
const ERRORS_PRINTED: u64 = 3;

/// How one statement failed, in the terms a client can act on.
#[derive(Debug, Clone)]
pub enum Failure {
    /// An ErrorResponse, from a server or from causeway speaking as one.
    Db {
        severity: String,
        code: String,
        message: String,
    },
    /// The connection ended without an error message.
    Closed(String),
    /// No answer within the statement timeout: the session is abandoned.
    Timeout,
    /// Anything else the client library reported, or an answer that was not
    /// the shape asked for.
    Other(String),
}

impl Failure {
    pub fn from_pg(error: &tokio_postgres::Error) -> Failure {
        if let Some(db) = error.as_db_error() {
            Failure::Db {
                severity: db.severity().to_string(),
                code: db.code().code().to_string(),
                message: db.message().to_string(),
            }
        } else if error.is_closed() {
            Failure::Closed(error.to_string())
        } else {
            Failure::Other(error.to_string())
        }
    }

    /// What failures are counted by: severity and SQLSTATE, or the kind.
    pub fn key(&self) -> String {
        match self {
            Failure::Db { severity, code, .. } => format!("{severity} {code}"),
            Failure::Closed(_) => "connection closed".to_string(),
            Failure::Timeout => "timeout".to_string(),
            Failure::Other(_) => "client error".to_string(),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Db { message, .. } => message,
            Failure::Closed(message) | Failure::Other(message) => message,
            Failure::Timeout => "no answer within the statement timeout",
        }
    }

    /// Whether the connection cannot carry another statement.
    pub fn ends_connection(&self) -> bool {
        match self {
            Failure::Db { severity, .. } => severity == "FATAL" || severity == "PANIC",
            Failure::Closed(_) | Failure::Timeout => true,
            Failure::Other(_) => false,
        }
    }

    /// Whether an autocommit write that failed this way certainly did not
    /// commit. A plain ERROR from Postgres rolls the statement back, and
    /// causeway's 57P03 means it was never sent; a lost connection (class
    /// 08, causeway's 08006 included), a server shutting down (57P01,
    /// 57P02), an internal error or a timeout leave the outcome unknown.
    pub fn surely_not_committed(&self) -> bool {
        match self {
            Failure::Db { severity, code, .. } => {
                severity == "ERROR"
                    && (code == "57P03"
                        || !(code.starts_with("08")
                            || code.starts_with("57")
                            || code.starts_with("XX")))
            }
            _ => false,
        }
    }
}

/// Where a read ran, from `pg_is_in_recovery()` and `inet_server_port()`
/// selected with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Server {
    pub in_recovery: bool,
    pub port: i32,
}

/// Counters of one run, shared by all sessions behind a mutex that is never
/// held across an await.
#[derive(Debug, Default)]
pub struct Tally {
    pub cycles: u64,
    pub writes_ok: u64,
    pub block_writes_ok: u64,
    pub write_errors: BTreeMap<String, u64>,
    /// Writes that failed in a way that may have committed.
    pub unknown_outcomes: u64,
    pub reads_ok: u64,
    pub reads_by_server: BTreeMap<Server, u64>,
    pub read_errors: BTreeMap<String, u64>,
    /// Reads made while the session's last write was of unknown outcome.
    pub reads_unchecked: u64,
    pub primary_reads_ok: u64,
    pub primary_read_errors: BTreeMap<String, u64>,
    pub stale_reads: u64,
    /// Acknowledged writes the primary no longer has.
    pub lost_writes: u64,
    pub lost_write_events: u64,
    /// Reads older than the session's last write whose cause could not be
    /// told, because the primary did not answer in time.
    pub unresolved_reads: u64,
    /// Answers that fit no story: a value ahead of every write, a write that
    /// skipped a number, a primary-hinted read served by a replica.
    pub anomalies: u64,
    /// Closed sessions, by what closed them and in which step.
    pub sessions_closed: BTreeMap<String, u64>,
    pub reconnects: u64,
    pub connect_errors: BTreeMap<String, u64>,
    /// Each kind of error (what failed, and the failure key): how often,
    /// when first and last, and its first message.
    pub seen: BTreeMap<(&'static str, String), Seen>,
    pub events: BTreeMap<&'static str, Vec<String>>,
    /// Sessions still inside a statement when the run ended.
    pub stuck_at_end: usize,
}

/// When an error was seen, to line it up with the chaos actions.
#[derive(Debug)]
pub struct Seen {
    pub count: u64,
    pub first: String,
    pub last: String,
    pub message: String,
}

impl Tally {
    pub fn write_error(&mut self, session: u32, failure: &Failure) {
        self.count(Count::Write, session, failure);
    }

    pub fn read_error(&mut self, session: u32, failure: &Failure) {
        self.count(Count::Read, session, failure);
    }

    pub fn primary_read_error(&mut self, session: u32, failure: &Failure) {
        self.count(Count::PrimaryRead, session, failure);
    }

    pub fn connect_error(&mut self, session: u32, failure: &Failure) {
        self.count(Count::Connect, session, failure);
    }

    fn count(&mut self, what: Count, session: u32, failure: &Failure) {
        let key = failure.key();
        let (map, name) = match what {
            Count::Write => (&mut self.write_errors, "write"),
            Count::Read => (&mut self.read_errors, "read"),
            Count::PrimaryRead => (&mut self.primary_read_errors, "primary read"),
            Count::Connect => (&mut self.connect_errors, "connect"),
        };
        *map.entry(key.clone()).or_default() += 1;
        let now = clock();
        let seen = self
            .seen
            .entry((name, key.clone()))
            .or_insert_with(|| Seen {
                count: 0,
                first: now.clone(),
                last: now.clone(),
                message: failure.message().to_string(),
            });
        seen.count += 1;
        seen.last.clone_from(&now);
        if seen.count <= ERRORS_PRINTED {
            println!(
                "chaos error: {now} session {session}: {name} {key}: {}",
                failure.message()
            );
        }
    }

    pub fn read_ok(&mut self, server: Server) {
        self.reads_ok += 1;
        *self.reads_by_server.entry(server).or_default() += 1;
    }

    pub fn session_closed(&mut self, why: String) {
        *self.sessions_closed.entry(why).or_default() += 1;
    }

    /// Prints an event at once, with the time (UTC, as the server logs of
    /// the local cluster) and keeps the first few for the summary.
    pub fn event(&mut self, kind: &'static str, session: u32, text: &str) {
        let line = format!("{} session {session}: {text}", clock());
        println!("chaos {kind}: {line}");
        let kept = self.events.entry(kind).or_default();
        if kept.len() < EVENTS_KEPT {
            kept.push(line);
        }
    }

    pub fn sessions_closed_total(&self) -> u64 {
        self.sessions_closed.values().sum()
    }

    /// One line for the periodic progress report.
    pub fn progress(&self, elapsed: Duration) -> String {
        format!(
            "chaos progress: {}s cycles {} writes ok {} write errors {} reads ok {} \
             (replica {}) read errors {} stale {} lost writes {} sessions closed {}",
            elapsed.as_secs(),
            self.cycles,
            self.writes_ok,
            total(&self.write_errors),
            self.reads_ok,
            self.reads_on(true),
            total(&self.read_errors),
            self.stale_reads,
            self.lost_writes,
            self.sessions_closed_total(),
        )
    }

    fn reads_on(&self, in_recovery: bool) -> u64 {
        self.reads_by_server
            .iter()
            .filter(|(s, _)| s.in_recovery == in_recovery)
            .map(|(_, n)| n)
            .sum()
    }

    /// The end-of-run report.
    pub fn summary(&self, elapsed: Duration, sessions: u32, seed: u64) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            let _ = writeln!(out, "  {label:<18} {value}");
        };
        line(
            "ran",
            format!("{}s, {sessions} sessions, seed {seed}", elapsed.as_secs()),
        );
        line("cycles", self.cycles.to_string());
        line(
            "writes ok",
            format!(
                "{} ({} autocommit, {} in BEGIN/COMMIT blocks)",
                self.writes_ok,
                self.writes_ok - self.block_writes_ok,
                self.block_writes_ok
            ),
        );
        line("write errors", counts(&self.write_errors));
        line(
            "unknown outcome",
            format!(
                "{} (writes that may have committed; re-read from the primary)",
                self.unknown_outcomes
            ),
        );
        line(
            "reads ok",
            format!(
                "{}: in recovery (replicas) {} [{}], not in recovery (the primary) {} [{}]",
                self.reads_ok,
                self.reads_on(true),
                self.ports(true),
                self.reads_on(false),
                self.ports(false)
            ),
        );
        line("read errors", counts(&self.read_errors));
        line(
            "reads unchecked",
            format!(
                "{} (while the last write's outcome was unknown)",
                self.reads_unchecked
            ),
        );
        line(
            "primary reads",
            format!(
                "{} ok (/* causeway: primary */), errors {}",
                self.primary_reads_ok,
                counts(&self.primary_read_errors)
            ),
        );
        line(
            "STALE READS",
            format!(
                "{} (older than the session's last acknowledged write, which the primary has)",
                self.stale_reads
            ),
        );
        line(
            "lost writes",
            format!(
                "{} acknowledged writes in {} events (missing on the primary after a promotion)",
                self.lost_writes, self.lost_write_events
            ),
        );
        line("unresolved reads", self.unresolved_reads.to_string());
        line("anomalies", self.anomalies.to_string());
        line("sessions closed", counts(&self.sessions_closed));
        line("reconnects", self.reconnects.to_string());
        line("connect errors", counts(&self.connect_errors));
        if self.stuck_at_end > 0 {
            line(
                "stuck at end",
                format!(
                    "{} sessions had no answer when the run ended",
                    self.stuck_at_end
                ),
            );
        }
        if !self.seen.is_empty() {
            let _ = writeln!(
                out,
                "  errors (how many, first and last seen, first message):"
            );
            for ((what, key), seen) in &self.seen {
                let _ = writeln!(
                    out,
                    "    {what} {key} ×{} {}–{}: {}",
                    seen.count, seen.first, seen.last, seen.message
                );
            }
        }
        for (kind, lines) in &self.events {
            let _ = writeln!(out, "  {kind} (first {}):", lines.len());
            for l in lines {
                let _ = writeln!(out, "    {l}");
            }
        }
        out
    }

    fn ports(&self, in_recovery: bool) -> String {
        let parts: Vec<String> = self
            .reads_by_server
            .iter()
            .filter(|(s, _)| s.in_recovery == in_recovery)
            .map(|(s, n)| format!("port {}: {n}", s.port))
            .collect();
        parts.join(", ")
    }

    /// Why the run failed, empty when it passed. Stale reads always fail
    /// it; with `strict`, so do failed reads and closed or stuck sessions.
    pub fn failures(&self, strict: bool) -> Vec<String> {
        let mut why = Vec::new();
        if self.stale_reads > 0 {
            why.push(format!("{} stale reads", self.stale_reads));
        }
        if self.reads_ok == 0 {
            why.push("no read succeeded: nothing was checked".to_string());
        }
        if strict {
            let read_errors = total(&self.read_errors);
            if read_errors > 0 {
                why.push(format!("{read_errors} failed reads"));
            }
            if self.sessions_closed_total() > 0 {
                why.push(format!("{} sessions closed", self.sessions_closed_total()));
            }
            if self.unresolved_reads + self.anomalies > 0 {
                why.push(format!(
                    "{} unresolved reads and {} anomalies",
                    self.unresolved_reads, self.anomalies
                ));
            }
            if self.stuck_at_end > 0 {
                why.push(format!("{} sessions stuck", self.stuck_at_end));
            }
        }
        why
    }
}

enum Count {
    Write,
    Read,
    PrimaryRead,
    Connect,
}

fn total(map: &BTreeMap<String, u64>) -> u64 {
    map.values().sum()
}

/// `12: ERROR 57P03 ×10, FATAL 57P01 ×2`, or `0`.
fn counts(map: &BTreeMap<String, u64>) -> String {
    match total(map) {
        0 => "0".to_string(),
        n => format!("{n}: {}", counts_only(map)),
    }
}

fn counts_only(map: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    parts.join(", ")
}

/// The wall clock as HH:MM:SS.mmm UTC, to line events up with server logs.
pub fn clock() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(severity: &str, code: &str) -> Failure {
        Failure::Db {
            severity: severity.into(),
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn only_errors_that_roll_back_or_were_never_sent_are_known_not_committed() {
        for (failure, known) in [
            (db("ERROR", "57P03"), true),
            (db("ERROR", "40001"), true),
            (db("ERROR", "53300"), true),
            (db("ERROR", "08006"), false),
            (db("ERROR", "57P01"), false),
            (db("FATAL", "57P01"), false),
            (db("ERROR", "XX000"), false),
            (Failure::Closed(String::new()), false),
            (Failure::Timeout, false),
        ] {
            assert_eq!(failure.surely_not_committed(), known, "{failure:?}");
        }
    }

    #[test]
    fn counts_read_like_a_list() {
        let mut map = BTreeMap::new();
        assert_eq!(counts(&map), "0");
        map.insert("ERROR 57P03".to_string(), 10);
        map.insert("FATAL 57P01".to_string(), 2);
        assert_eq!(counts(&map), "12: ERROR 57P03 ×10, FATAL 57P01 ×2");
    }
}
