//! One session of the chaos load. It owns one row of `chaos_counter`, adds
//! one to it and reads it back through causeway, and judges every answer
//! against the session's last acknowledged write (its *expectation*).
//!
//! A read older than the expectation is re-read on the primary (the
//! `/* causeway: primary */` hint, same connection) to tell causeway's fault
//! (the primary has the write: a stale read) from the cluster's (the primary
//! lost it: an asynchronous promotion dropped the tail). A write whose
//! outcome is unknown, and a new connection, take their expectation from
//! the primary, so that neither is ever counted as stale.
//!
//! Odd sessions use prepared statements (extended protocol), even ones the
//! simple protocol, so both paths through the proxy are exercised.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, NoTls, Statement};

use crate::tally::{Failure, Server, Tally};

const WRITE: &str = "UPDATE chaos_counter SET n = n + 1 WHERE id = $1 RETURNING n";
const READ: &str =
    "SELECT n, pg_is_in_recovery(), inet_server_port() FROM chaos_counter WHERE id = $1";
const PRIMARY_HINT: &str = "/* causeway: primary */ ";

/// How long a read older than the expectation is retried on the primary
/// before it is reported as unresolved.
const RESOLVE_FOR: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Pause after a failed statement, so an outage is not a busy loop.
const AFTER_ERROR: Duration = Duration::from_millis(50);

/// What every session shares.
pub struct Settings {
    pub config: tokio_postgres::Config,
    pub statement_timeout: Duration,
    pub pause: Duration,
    pub seed: u64,
    pub tally: Arc<Mutex<Tally>>,
    pub stop: Arc<AtomicBool>,
}

/// The kinds of cycle, drawn at random: mostly autocommit writes, some in
/// an explicit block, some cycles that only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycle {
    Autocommit,
    Block,
    ReadOnly,
}

impl Cycle {
    fn name(self) -> &'static str {
        match self {
            Cycle::Autocommit => "an autocommit write",
            Cycle::Block => "a BEGIN/COMMIT block",
            Cycle::ReadOnly => "a read",
        }
    }
}

/// A write that failed: why, and whether it may have committed.
struct WriteFailure {
    failure: Failure,
    may_have_committed: bool,
}

/// A value of the row and where it was read.
#[derive(Debug, Clone, Copy)]
struct Reading {
    n: i64,
    server: Server,
}

/// The statements of a prepared-protocol session, prepared once per
/// connection.
struct Prepared {
    write: Statement,
    read: Statement,
    read_primary: Statement,
}

struct Connection {
    client: Client,
    prepared: Option<Prepared>,
}

pub struct Session {
    id: u32,
    settings: Arc<Settings>,
    use_prepared: bool,
    rng: StdRng,
    connection: Option<Connection>,
    /// The row's value after the session's last acknowledged write, or as
    /// the primary last told it; `None` while unknown.
    expected: Option<i64>,
}

impl Session {
    pub fn new(id: u32, settings: Arc<Settings>) -> Session {
        let rng = StdRng::seed_from_u64(settings.seed.wrapping_mul(1000).wrapping_add(id.into()));
        Session {
            id,
            settings,
            use_prepared: id % 2 == 1,
            rng,
            connection: None,
            expected: None,
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        // A session that panicked holding the lock leaves counts that are
        // still worth printing.
        self.settings
            .tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stopped(&self) -> bool {
        self.settings.stop.load(Ordering::Relaxed)
    }

    pub async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        let mut connected_before = false;
        while !self.stopped() {
            if self.connection.is_none() {
                match self.connect().await {
                    Ok(connection) => {
                        self.connection = Some(connection);
                        backoff = FIRST_BACKOFF;
                        if connected_before {
                            self.tally().reconnects += 1;
                        }
                        connected_before = true;
                        self.resync().await;
                    }
                    Err(failure) => {
                        self.tally().connect_error(self.id, &failure);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                continue;
            }
            self.cycle().await;
            if !self.settings.pause.is_zero() {
                tokio::time::sleep(self.settings.pause).await;
            }
        }
    }

    async fn connect(&self) -> Result<Connection, Failure> {
        let connecting = self.settings.config.connect(NoTls);
        let (client, connection) = self.timed(connecting).await?;
        tokio::spawn(async move {
            // The connection's end is seen by the client as a closed error.
            let _ = connection.await;
        });
        let prepared = if self.use_prepared {
            let primary_read = format!("{PRIMARY_HINT}{READ}");
            Some(Prepared {
                write: self.timed(client.prepare(WRITE)).await?,
                read: self.timed(client.prepare(READ)).await?,
                read_primary: self.timed(client.prepare(&primary_read)).await?,
            })
        } else {
            None
        };
        Ok(Connection { client, prepared })
    }

    async fn timed<T, F>(&self, operation: F) -> Result<T, Failure>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        match tokio::time::timeout(self.settings.statement_timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Failure::from_pg(&error)),
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn cycle(&mut self) {
        let cycle = match self.rng.gen_range(0..10) {
            0 | 1 => Cycle::Block,
            2 | 3 => Cycle::ReadOnly,
            _ => Cycle::Autocommit,
        };
        self.tally().cycles += 1;
        if cycle != Cycle::ReadOnly {
            let written = match cycle {
                Cycle::Block => self.write_in_block().await,
                _ => self.write().await,
            };
            match written {
                Ok(n) => self.judge_write(n, cycle),
                Err(failed) => {
                    self.tally().write_error(self.id, &failed.failure);
                    if failed.may_have_committed {
                        self.tally().unknown_outcomes += 1;
                        self.expected = None;
                    }
                    if self.lost_connection(&failed.failure, cycle) {
                        return;
                    }
                    if failed.may_have_committed {
                        self.resync().await;
                    }
                    tokio::time::sleep(AFTER_ERROR).await;
                    if self.connection.is_none() {
                        return;
                    }
                }
            }
        }
        match self.read(false).await {
            Ok(reading) => self.judge_read(reading).await,
            Err(failure) => {
                self.tally().read_error(self.id, &failure);
                if !self.lost_connection(&failure, Cycle::ReadOnly) {
                    tokio::time::sleep(AFTER_ERROR).await;
                }
            }
        }
    }

    /// Counts a session the failure closed and drops its connection.
    fn lost_connection(&mut self, failure: &Failure, during: Cycle) -> bool {
        let closed = failure.ends_connection()
            || self
                .connection
                .as_ref()
                .is_none_or(|c| c.client.is_closed());
        if closed {
            let why = format!("{} in {}", failure.key(), during.name());
            let text = format!("closed: {why}: {}", failure.message());
            let id = self.id;
            let mut tally = self.tally();
            tally.session_closed(why);
            tally.event("session closed", id, &text);
            drop(tally);
            self.connection = None;
            self.expected = None;
        }
        closed
    }

    fn connection(&self) -> Result<&Connection, Failure> {
        self.connection
            .as_ref()
            .ok_or_else(|| Failure::Closed("not connected".to_string()))
    }

    fn sql(&self, template: &str) -> String {
        template.replace("$1", &self.id.to_string())
    }

    async fn write(&self) -> Result<i64, WriteFailure> {
        let result = self.write_statement().await;
        result.map_err(|failure| WriteFailure {
            may_have_committed: !failure.surely_not_committed(),
            failure,
        })
    }

    /// BEGIN, the write, COMMIT, as three messages (causeway holds the
    /// BEGIN back and sends it with the write). Nothing can have committed
    /// before the COMMIT is sent; a failed COMMIT leaves it unknown.
    async fn write_in_block(&self) -> Result<i64, WriteFailure> {
        let not_committed = |failure| WriteFailure {
            failure,
            may_have_committed: false,
        };
        self.batch("BEGIN").await.map_err(not_committed)?;
        let n = match self.write_statement().await {
            Ok(n) => n,
            Err(failure) => {
                if !failure.ends_connection() {
                    let _ = self.batch("ROLLBACK").await;
                }
                return Err(not_committed(failure));
            }
        };
        self.batch("COMMIT").await.map_err(|failure| WriteFailure {
            failure,
            may_have_committed: true,
        })?;
        Ok(n)
    }

    async fn batch(&self, sql: &str) -> Result<(), Failure> {
        let client = &self.connection()?.client;
        self.timed(client.batch_execute(sql)).await
    }

    async fn write_statement(&self) -> Result<i64, Failure> {
        let connection = self.connection()?;
        let id = self.id as i32;
        match &connection.prepared {
            Some(prepared) => {
                let row = self
                    .timed(connection.client.query_one(&prepared.write, &[&id]))
                    .await?;
                row.try_get(0).map_err(|e| Failure::Other(e.to_string()))
            }
            None => {
                let row = self.simple_row(&self.sql(WRITE)).await?;
                text_column(&row, 0)?
                    .parse()
                    .map_err(|_| Failure::Other(format!("not a number in {row:?}")))
            }
        }
    }

    /// The session's row and where it was read; `on_primary` adds the hint.
    async fn read(&self, on_primary: bool) -> Result<Reading, Failure> {
        let connection = self.connection()?;
        let id = self.id as i32;
        match &connection.prepared {
            Some(prepared) => {
                let statement = if on_primary {
                    &prepared.read_primary
                } else {
                    &prepared.read
                };
                let row = self
                    .timed(connection.client.query_one(statement, &[&id]))
                    .await?;
                let bad = |e: tokio_postgres::Error| Failure::Other(e.to_string());
                Ok(Reading {
                    n: row.try_get(0).map_err(bad)?,
                    server: Server {
                        in_recovery: row.try_get(1).map_err(bad)?,
                        port: row.try_get::<_, Option<i32>>(2).map_err(bad)?.unwrap_or(-1),
                    },
                })
            }
            None => {
                let hint = if on_primary { PRIMARY_HINT } else { "" };
                let row = self
                    .simple_row(&format!("{hint}{}", self.sql(READ)))
                    .await?;
                let unreadable = || Failure::Other(format!("unreadable row {row:?}"));
                Ok(Reading {
                    n: text_column(&row, 0)?.parse().map_err(|_| unreadable())?,
                    server: Server {
                        in_recovery: text_column(&row, 1)? == "t",
                        port: text_column(&row, 2)?.parse().unwrap_or(-1),
                    },
                })
            }
        }
    }

    async fn simple_row(&self, sql: &str) -> Result<Vec<Option<String>>, Failure> {
        let client = &self.connection()?.client;
        let messages = self.timed(client.simple_query(sql)).await?;
        messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                ),
                _ => None,
            })
            .ok_or_else(|| Failure::Other(format!("no row for {sql}")))
    }

    /// Takes the expectation from the primary; leaves it unknown when the
    /// primary does not answer.
    async fn resync(&mut self) {
        self.expected = None;
        match self.read(true).await {
            Ok(reading) if !reading.server.in_recovery => {
                self.tally().primary_reads_ok += 1;
                self.expected = Some(reading.n);
            }
            Ok(reading) => self.hint_ignored(reading),
            Err(failure) => {
                self.tally().primary_read_error(self.id, &failure);
                self.lost_connection(&failure, Cycle::ReadOnly);
            }
        }
    }

    fn hint_ignored(&mut self, reading: Reading) {
        let id = self.id;
        let mut tally = self.tally();
        tally.anomalies += 1;
        tally.event(
            "anomaly",
            id,
            &format!(
                "a /* causeway: primary */ read ran on a server in recovery (port {})",
                reading.server.port
            ),
        );
    }

    fn judge_write(&mut self, n: i64, cycle: Cycle) {
        {
            let mut tally = self.tally();
            tally.writes_ok += 1;
            if cycle == Cycle::Block {
                tally.block_writes_ok += 1;
            }
        }
        if let Some(expected) = self.expected {
            let id = self.id;
            if n <= expected {
                let lost = (expected + 1 - n) as u64;
                let mut tally = self.tally();
                tally.lost_writes += lost;
                tally.lost_write_events += 1;
                tally.event(
                    "lost write",
                    id,
                    &format!(
                        "{} returned n = {n} after the acknowledged n = {expected}: \
                         the primary lost {lost} acknowledged writes",
                        cycle.name()
                    ),
                );
            } else if n > expected + 1 {
                let mut tally = self.tally();
                tally.anomalies += 1;
                tally.event(
                    "anomaly",
                    id,
                    &format!(
                        "{} returned n = {n}, expected {}",
                        cycle.name(),
                        expected + 1
                    ),
                );
            }
        }
        self.expected = Some(n);
    }

    async fn judge_read(&mut self, reading: Reading) {
        self.tally().read_ok(reading.server);
        match self.expected {
            None => self.tally().reads_unchecked += 1,
            Some(expected) if reading.n == expected => {}
            Some(expected) if reading.n > expected => {
                let id = self.id;
                {
                    let mut tally = self.tally();
                    tally.anomalies += 1;
                    tally.event(
                        "anomaly",
                        id,
                        &format!(
                            "read n = {} on port {}, ahead of the expected {expected}",
                            reading.n, reading.server.port
                        ),
                    );
                }
                self.resync().await;
            }
            Some(expected) => self.judge_old_read(expected, reading).await,
        }
    }

    /// A read older than the expectation: a stale read if the primary has
    /// the write, a lost write if it does not (and still a stale read if the
    /// read is older than what the primary has).
    async fn judge_old_read(&mut self, expected: i64, old: Reading) {
        let id = self.id;
        let started = Instant::now();
        loop {
            match self.read(true).await {
                Ok(primary) if !primary.server.in_recovery => {
                    self.tally().primary_reads_ok += 1;
                    let mut tally = self.tally();
                    if primary.n < expected {
                        tally.lost_writes += (expected - primary.n) as u64;
                        tally.lost_write_events += 1;
                        tally.event(
                            "lost write",
                            id,
                            &format!(
                                "read n = {} (port {}, in recovery {}), expected {expected}; \
                                 the primary (port {}) has n = {}",
                                old.n,
                                old.server.port,
                                old.server.in_recovery,
                                primary.server.port,
                                primary.n
                            ),
                        );
                    }
                    if old.n < primary.n.min(expected) {
                        tally.stale_reads += 1;
                        tally.event(
                            "STALE READ",
                            id,
                            &format!(
                                "read n = {} on port {} (in recovery {}), but the session's \
                                 last acknowledged write made it {expected} and the primary \
                                 (port {}) has n = {}",
                                old.n,
                                old.server.port,
                                old.server.in_recovery,
                                primary.server.port,
                                primary.n
                            ),
                        );
                    }
                    drop(tally);
                    self.expected = Some(primary.n);
                    return;
                }
                Ok(reading) => self.hint_ignored(reading),
                Err(failure) => {
                    self.tally().primary_read_error(self.id, &failure);
                    if self.lost_connection(&failure, Cycle::ReadOnly) {
                        break;
                    }
                }
            }
            if started.elapsed() > RESOLVE_FOR || self.stopped() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut tally = self.tally();
        tally.unresolved_reads += 1;
        tally.event(
            "unresolved read",
            id,
            &format!(
                "read n = {} on port {}, expected {expected}; the primary did not answer",
                old.n, old.server.port
            ),
        );
        drop(tally);
        self.expected = None;
    }
}

fn text_column(row: &[Option<String>], index: usize) -> Result<&str, Failure> {
    row.get(index)
        .and_then(|v| v.as_deref())
        .ok_or_else(|| Failure::Other(format!("no column {index} in {row:?}")))
}
