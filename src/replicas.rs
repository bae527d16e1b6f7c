//! Where each replica is in replaying the primary's WAL, kept current by one
//! background task per server.
//!
//! Each task polls its server every `poll_interval_ms` and publishes what it
//! saw into a `watch` channel. Sessions read the latest [`Positions`] without
//! any I/O; a session that must wait for a replica to catch up says so
//! ([`Monitor::wait_for`]), which makes the tasks poll back-to-back until
//! nobody waits, so a wait ends within a poll round trip of the replay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::backend::{Login, ServerTarget};
use crate::lsn::Lsn;

/// What the proxy last knew of one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    pub name: String,
    pub address: String,
    /// Answering, and still in recovery (a promoted replica is no replica).
    pub healthy: bool,
    pub replayed: Lsn,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub polled_at: Option<Instant>,
    /// When it last fell behind the primary; `None` while caught up.
    pub behind_since: Option<Instant>,
    /// When its replayed position last moved.
    pub advanced_at: Option<Instant>,
    pub last_error: Option<String>,
    /// Answering and out of recovery: promoted, a primary now.
    pub promoted: bool,
    /// The timeline it follows (its WAL receiver's; else its last
    /// restartpoint's), or, promoted, the one it writes.
    pub timeline: Option<u32>,
    /// Promoted: where its own history provably holds everything before
    /// (see [`Positions::primary_since`]).
    pub since: Option<Lsn>,
}

impl ReplicaStatus {
    /// Behind for a while and not replaying: paused, or stuck. Waiting for
    /// it to catch up within a read's patience is pointless.
    pub fn stalled(&self, now: Instant, patience: std::time::Duration) -> bool {
        let behind_long = self
            .behind_since
            .is_some_and(|since| now.duration_since(since) > patience);
        let still = self
            .advanced_at
            .is_none_or(|at| now.duration_since(at) > patience);
        behind_long && still
    }
}

/// Everything the router needs to choose a replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Positions {
    pub primary_lsn: Lsn,
    /// The configured primary answers and is not in recovery.
    pub primary_healthy: bool,
    /// The configured primary last answered in recovery: a standby now,
    /// where no write may go.
    pub primary_in_recovery: bool,
    /// The timeline the configured primary writes, while it is one.
    pub primary_timeline: Option<u32>,
    /// The configured primary's `pg_last_wal_replay_lsn()`: the end of
    /// the WAL it replayed before taking writes (where its timeline began,
    /// if it was promoted), else its position when polled.
    pub primary_since: Option<Lsn>,
    pub replicas: Vec<ReplicaStatus>,
    /// The timeline writes go to, and the switches seen since start-up.
    pub history: History,
}

/// The write target's timeline as the proxy has followed it.
///
/// A causal LSN is only meaningful on the timeline it was written on.
/// When a promotion starts a new timeline, a write acknowledged on the old
/// one is in the new history only if it ended before the fork; a replica
/// of the new timeline that has replayed past the fork holds every write
/// that survived. So each switch keeps a bound, and an LSN of an earlier
/// epoch is carried into the current one as at most that bound: reads
/// never wait for a position the old timeline reached but the new one
/// never will, and never miss a write that survived.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The write target's timeline; `None` until first seen.
    pub timeline: Option<u32>,
    /// One per switch seen: the new primary's fork point (or, when it
    /// cannot say, its position when first seen, which is past it).
    bounds: Vec<Lsn>,
    /// The timeline of each epoch: the first seen, then one per switch.
    timelines: Vec<u32>,
}

impl History {
    /// How many timeline switches this proxy has seen: the epoch a commit
    /// LSN is tagged with.
    pub fn epoch(&self) -> u32 {
        u32::try_from(self.bounds.len()).unwrap_or(u32::MAX)
    }

    /// The timeline writes of `epoch` went to, if known.
    pub fn timeline_of(&self, epoch: u32) -> Option<u32> {
        self.timelines.get(epoch as usize).copied()
    }

    /// The epoch of a write made on `timeline` (as another proxy names it,
    /// through a shared store): the last epoch on that timeline or before;
    /// a timeline older than any seen is of the first epoch.
    pub fn epoch_of(&self, timeline: u32) -> u32 {
        let later = self.timelines.iter().filter(|&&t| t > timeline).count();
        let epochs = self.timelines.len().max(1);
        u32::try_from(epochs.saturating_sub(later).saturating_sub(1)).unwrap_or(0)
    }

    /// The LSN a replica of the current timeline must have replayed to
    /// hold a write acknowledged at `lsn` during `epoch`.
    pub fn carry(&self, lsn: Lsn, epoch: u32) -> Lsn {
        self.bounds
            .iter()
            .skip(epoch as usize)
            .fold(lsn, |carried, bound| carried.min(*bound))
    }

    /// Notes the write target's `timeline`; a different one than before
    /// is a switch, bounded by `since`. Returns whether it was one.
    fn follow(&mut self, timeline: u32, since: Lsn) -> bool {
        match self.timeline {
            Some(known) if known == timeline => false,
            None => {
                self.timeline = Some(timeline);
                self.timelines.push(timeline);
                false
            }
            Some(known) => {
                tracing::warn!(from = known, to = timeline, fork = %since, "the primary is on a new timeline: writes acknowledged past the fork may be lost; replicas not on the new timeline get no reads");
                self.bounds.push(since);
                self.timelines.push(timeline);
                self.timeline = Some(timeline);
                crate::metrics::timeline_switch(timeline);
                true
            }
        }
    }
}

/// A causal LSN and the epoch (timeline switches seen) it was written in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    pub lsn: Lsn,
    pub epoch: u32,
}

impl Mark {
    /// The later of two marks: one of a later epoch holds everything an
    /// earlier one carries into it (it was written on the new timeline,
    /// past the fork); within an epoch, the higher LSN.
    pub fn max(self, other: Mark) -> Mark {
        if (other.epoch, other.lsn) > (self.epoch, self.lsn) {
            other
        } else {
            self
        }
    }
}

/// Where writes go, as the servers' own answers say: the primary is
/// whichever server is not in recovery (libpq's `target_session_attrs =
/// read-write`); `[primary]` in the config is only where to look first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget {
    /// The configured primary.
    Configured,
    /// Replica `i`, promoted while the configured primary is gone or in
    /// recovery itself.
    Promoted(usize),
    /// Two servers say they are the primary: writes are refused until one
    /// of them is in recovery again (or gone), never sent to both.
    SplitBrain,
    /// No server says it is the primary: the configured one is a standby
    /// now and no replica is out of recovery.
    Nowhere,
}

impl WriteTarget {
    /// Why writes have nowhere to go, if they have not.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            WriteTarget::SplitBrain => Some("two servers claim to be the primary; writes are refused until one of them is in recovery again"),
            WriteTarget::Nowhere => Some("no server is the primary now: the configured primary is in recovery and no replica has been promoted"),
            WriteTarget::Configured | WriteTarget::Promoted(_) => None,
        }
    }
}

impl Positions {
    /// Whether replica `r` may serve reads now: healthy, and on the
    /// timeline writes go to (a replica left on an old one holds a history
    /// the primary no longer has, and misses everything written since).
    pub fn serves(&self, r: &ReplicaStatus) -> bool {
        r.healthy
            && match (r.timeline, self.history.timeline) {
                (Some(theirs), Some(ours)) => theirs == ours,
                _ => true,
            }
    }

    /// `mark` carried into the current timeline (see [`History`]).
    pub fn carry(&self, mark: Mark) -> Lsn {
        self.history.carry(mark.lsn, mark.epoch)
    }

    /// Follows the write target's timeline after an update. Returns
    /// whether it switched.
    fn follow_timeline(&mut self) -> bool {
        let (timeline, since) = match self.write_target() {
            WriteTarget::Configured if self.primary_healthy => {
                (self.primary_timeline, self.primary_since)
            }
            WriteTarget::Promoted(i) => match self.replicas.get(i) {
                Some(r) => (r.timeline, r.since),
                None => return false,
            },
            _ => return false,
        };
        match (timeline, since) {
            (Some(timeline), Some(since)) => self.history.follow(timeline, since),
            _ => false,
        }
    }

    /// Some server takes writes now: the configured primary, or one
    /// promoted replica.
    pub fn has_primary(&self) -> bool {
        match self.write_target() {
            WriteTarget::Configured => self.primary_healthy,
            WriteTarget::Promoted(_) => true,
            WriteTarget::SplitBrain | WriteTarget::Nowhere => false,
        }
    }

    pub fn write_target(&self) -> WriteTarget {
        let promoted: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.replicas[i].promoted)
            .collect();
        match (self.primary_healthy, promoted.as_slice()) {
            (_, []) if self.primary_in_recovery => WriteTarget::Nowhere,
            (_, []) => WriteTarget::Configured,
            (false, [only]) => WriteTarget::Promoted(*only),
            _ => WriteTarget::SplitBrain,
        }
    }
}

/// The background tasks' shared state.
#[derive(Debug)]
pub struct Monitor {
    positions: watch::Sender<Positions>,
    /// Sessions waiting for a replica to catch up right now.
    waiters: AtomicUsize,
    urgent: Notify,
    poll_interval: Duration,
    /// Ends the polling tasks (the proxy was reloaded or is gone).
    stopped: watch::Sender<bool>,
}

/// Removes a waiter when dropped, however the wait ends.
struct WaitGuard<'a>(&'a Monitor);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Monitor {
    pub fn new(replicas: &[ServerTarget], poll_interval: Duration) -> Arc<Monitor> {
        let positions = Positions {
            primary_lsn: Lsn::ZERO,
            primary_healthy: false,
            primary_in_recovery: false,
            replicas: replicas
                .iter()
                .map(|r| ReplicaStatus {
                    name: r.name.clone(),
                    address: r.address(),
                    healthy: false,
                    replayed: Lsn::ZERO,
                    lag_bytes: 0,
                    lag_seconds: 0.0,
                    polled_at: None,
                    behind_since: None,
                    advanced_at: None,
                    last_error: None,
                    promoted: false,
                    timeline: None,
                    since: None,
                })
                .collect(),
            primary_timeline: None,
            primary_since: None,
            history: History::default(),
        };
        Arc::new(Monitor {
            positions: watch::Sender::new(positions),
            waiters: AtomicUsize::new(0),
            urgent: Notify::new(),
            poll_interval,
            stopped: watch::Sender::new(false),
        })
    }

    /// `lsn` tagged with the current epoch.
    pub fn mark(&self, lsn: Lsn) -> Mark {
        Mark {
            lsn,
            epoch: self.with_positions(|p| p.history.epoch()),
        }
    }

    /// The latest positions. Cheap: a clone under a read lock.
    pub fn positions(&self) -> Positions {
        self.positions.borrow().clone()
    }

    /// Reads the latest positions in place, without cloning.
    pub fn with_positions<T>(&self, f: impl FnOnce(&Positions) -> T) -> T {
        f(&self.positions.borrow())
    }

    /// Waits until `ready` holds for the positions, or `timeout` passes.
    /// Returns what `ready` returned last.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&Positions) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.positions.subscribe();
        if let Some(found) = ready(&rx.borrow_and_update()) {
            return Some(found);
        }
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let _guard = WaitGuard(self);
        self.urgent.notify_waiters();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {
                    if let Some(found) = ready(&rx.borrow_and_update()) {
                        return Some(found);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Starts the polling tasks: one for the primary, one per replica.
    pub fn spawn(
        self: &Arc<Self>,
        primary: ServerTarget,
        replicas: Vec<ServerTarget>,
        login: Login,
    ) {
        let monitor = self.clone();
        let primary_login = login.clone();
        self.until_stopped(async move { monitor.watch_primary(primary, primary_login).await });
        for (index, replica) in replicas.into_iter().enumerate() {
            let monitor = self.clone();
            let login = login.clone();
            self.until_stopped(async move { monitor.watch_replica(index, replica, login).await });
        }
    }

    fn until_stopped(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut stopped = self.stopped.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        });
    }

    /// Stops polling; the last positions stay readable.
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    /// Sleeps one poll interval, or much less while sessions wait.
    async fn pause(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            // Poll again at once: each poll is a round trip to the server,
            // which paces it; a timer would round up to a millisecond.
            tokio::task::yield_now().await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(self.poll_interval) => {}
            _ = self.urgent.notified() => {}
        }
    }

    async fn watch_primary(&self, target: ServerTarget, login: Login) {
        let mut backoff = Backoff::new();
        loop {
            let client = match connect(&target, &login).await {
                Ok(client) => client,
                Err(e) => {
                    tracing::warn!(server = %target.name, error = %describe(&e), "cannot reach the primary");
                    self.primary_lost();
                    backoff.sleep().await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                match poll(&client).await {
                    Ok(Polled::Primary {
                        lsn,
                        timeline,
                        since,
                    }) => {
                        self.positions.send_if_modified(|p| {
                            let changed = p.primary_lsn != lsn
                                || !p.primary_healthy
                                || p.primary_timeline != timeline;
                            p.primary_lsn = p.primary_lsn.max(lsn);
                            p.primary_healthy = true;
                            p.primary_in_recovery = false;
                            p.primary_timeline = timeline;
                            p.primary_since = Some(since);
                            p.follow_timeline() || changed
                        });
                    }
                    Ok(_) => {
                        // In recovery: a standby now, not the primary.
                        self.positions.send_if_modified(|p| {
                            !std::mem::replace(&mut p.primary_in_recovery, true)
                        });
                        if self.primary_lost() {
                            tracing::warn!(server = %target.name, "the configured primary is in recovery: writes go to a promoted replica, if any");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(server = %target.name, error = %describe(&e), "primary stopped answering");
                        self.primary_lost();
                        break;
                    }
                }
                self.pause().await;
            }
        }
    }

    /// The configured primary is gone or in recovery: writes go to a
    /// promoted replica, if there is one. Returns whether that changed.
    fn primary_lost(&self) -> bool {
        self.positions.send_if_modified(|p| {
            std::mem::replace(&mut p.primary_healthy, false) | p.follow_timeline()
        })
    }

    async fn watch_replica(&self, index: usize, target: ServerTarget, login: Login) {
        let mut backoff = Backoff::new();
        loop {
            let client = match connect(&target, &login).await {
                Ok(client) => client,
                Err(e) => {
                    crate::metrics::poll_error(&target.name);
                    self.mark_unhealthy(index, &describe(&e));
                    backoff.sleep().await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                match poll(&client).await {
                    Ok(Polled::Standby {
                        replayed: Some(replayed),
                        timeline,
                    }) => self.mark_position(index, replayed, timeline),
                    Ok(Polled::Standby { replayed: None, .. }) => {
                        self.mark_unhealthy(index, "no replay position reported")
                    }
                    Ok(Polled::Primary {
                        lsn,
                        timeline,
                        since,
                    }) => self.mark_promoted(index, lsn, timeline, since),
                    Err(e) => {
                        crate::metrics::poll_error(&target.name);
                        self.mark_unhealthy(index, &describe(&e));
                        break;
                    }
                }
                self.pause().await;
            }
            backoff.sleep().await;
        }
    }

    fn mark_position(&self, index: usize, replayed: Lsn, timeline: Option<u32>) {
        self.positions.send_if_modified(|p| {
            let primary_lsn = p.primary_lsn;
            let Some(r) = p.replicas.get_mut(index) else {
                return false;
            };
            let was_healthy = r.healthy;
            // A standby's timeline only moves forward; the fallback (its
            // last restartpoint's) may lag the WAL receiver's.
            let timeline = r.timeline.max(timeline);
            let changed =
                !r.healthy || r.replayed != replayed || r.promoted || r.timeline != timeline;
            r.promoted = false;
            r.timeline = timeline;
            r.since = None;
            if r.replayed != replayed {
                r.advanced_at = Some(Instant::now());
            }
            r.healthy = true;
            r.replayed = replayed;
            r.lag_bytes = primary_lsn.bytes_after(replayed);
            // Lag in time is how long the replica has been behind: not the
            // age of its last replayed commit, which on an idle primary says
            // nothing about how far behind it is.
            let now = Instant::now();
            if let (0, Some(since)) = (r.lag_bytes, r.behind_since) {
                let behind = now.duration_since(since);
                if behind > Duration::from_secs(1) {
                    tracing::info!(replica = %r.name, replayed = %replayed, "replica caught up after lagging {:.1} s", behind.as_secs_f64());
                }
            }
            r.behind_since = match (r.lag_bytes, r.behind_since) {
                (0, _) => None,
                (_, Some(since)) => Some(since),
                (_, None) => Some(now),
            };
            r.lag_seconds = r
                .behind_since
                .map_or(0.0, |since| now.duration_since(since).as_secs_f64());
            r.polled_at = Some(now);
            r.last_error = None;
            if !was_healthy {
                tracing::info!(replica = %r.name, replayed = %replayed, "replica is healthy");
            }
            p.follow_timeline() || changed
        });
    }

    /// Replica `index` answers out of recovery: it is a primary now, at
    /// `written` on `timeline`. It gets no reads; writes may go to it (see
    /// [`Positions::write_target`]).
    fn mark_promoted(&self, index: usize, written: Lsn, timeline: Option<u32>, since: Lsn) {
        self.positions.send_if_modified(|p| {
            let Some(r) = p.replicas.get_mut(index) else {
                return false;
            };
            let changed = !r.promoted || r.healthy || r.timeline != timeline;
            if !r.promoted {
                tracing::warn!(server = %r.name, timeline = ?timeline, "server is out of recovery: a primary now; it gets no reads");
            }
            r.promoted = true;
            r.healthy = false;
            r.timeline = timeline;
            r.since = Some(since);
            r.last_error = Some("not in recovery: promoted, or not a replica".to_string());
            if !p.primary_healthy {
                p.primary_lsn = p.primary_lsn.max(written);
            }
            p.follow_timeline() || changed
        });
    }

    fn mark_unhealthy(&self, index: usize, why: &str) {
        self.positions.send_if_modified(|p| {
            let Some(r) = p.replicas.get_mut(index) else {
                return false;
            };
            let changed = r.healthy || r.promoted;
            if r.healthy {
                tracing::warn!(replica = %r.name, reason = why, "replica gets no reads until it recovers");
            }
            r.healthy = false;
            r.promoted = false;
            r.last_error = Some(why.to_string());
            p.follow_timeline() || changed
        });
    }

    /// A session saw a replica fail; stop sending it reads at once rather
    /// than at the next poll.
    pub fn report_failure(&self, name: &str, why: &str) {
        let index = self.with_positions(|p| p.replicas.iter().position(|r| r.name == name));
        if let Some(index) = index {
            self.mark_unhealthy(index, why);
        }
    }
}

/// How long the monitor waits for a server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

async fn connect(
    target: &ServerTarget,
    login: &Login,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .user(&login.user)
        .dbname(&login.database)
        .application_name("causeway monitor")
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(password) = &login.password {
        config.password(password);
    }
    let client = match &target.tls {
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
        }
        Some(tls) => {
            // The same sslmode and certificate checks as the pools'.
            config.ssl_mode(match tls.mode {
                crate::tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
            let connector = postgres_rustls::MakeTlsConnector::new(
                tokio_rustls::TlsConnector::from(tls.config.clone()),
            );
            let (client, connection) = config.connect(connector).await?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// A client error with its causes (tokio-postgres keeps the detail, a
/// TLS certificate's fault say, in the source).
fn describe(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What one poll of a server found.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Polled {
    /// In recovery, replayed this far, following `timeline`.
    Standby {
        replayed: Option<Lsn>,
        timeline: Option<u32>,
    },
    /// Out of recovery: writing at `lsn` on `timeline`; its history holds
    /// everything before `since` (see [`Positions::primary_since`]).
    Primary {
        lsn: Lsn,
        timeline: Option<u32>,
        since: Lsn,
    },
}

/// One query for every server, whatever its role. A standby's timeline is
/// its WAL receiver's (visible to `pg_monitor` members), else that of its
/// last restartpoint; a primary's is in its current WAL file's name.
const POLL: &str = "SELECT pg_is_in_recovery()::text, pg_last_wal_replay_lsn()::text, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     (CASE WHEN pg_is_in_recovery() \
       THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                     (SELECT timeline_id FROM pg_control_checkpoint())) \
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END)::text";

async fn poll(client: &tokio_postgres::Client) -> Result<Polled, tokio_postgres::Error> {
    let rows = client.simple_query(POLL).await?;
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let column = |i: usize| row.and_then(|r| r.get(i));
    let lsn = |i: usize| column(i).and_then(|v| v.parse::<Lsn>().ok());
    let timeline = column(3).and_then(|v| v.parse::<u32>().ok());
    Ok(match (column(0) == Some("true"), lsn(2)) {
        (false, Some(written)) => Polled::Primary {
            lsn: written,
            timeline,
            since: lsn(1).unwrap_or(written),
        },
        _ => Polled::Standby {
            replayed: lsn(1),
            timeline,
        },
    })
}

/// Retry delays for a server that does not answer: 50 ms doubling to 2 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(50))
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }
    async fn sleep(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(lsn: u64, epoch: u32) -> Mark {
        Mark {
            lsn: Lsn(lsn),
            epoch,
        }
    }

    #[test]
    fn a_write_of_an_old_timeline_is_carried_by_the_fork() {
        let mut history = History::default();
        assert!(!history.follow(1, Lsn(10)), "the first timeline seen");
        assert_eq!(history.epoch(), 0);
        assert!(history.follow(2, Lsn(500)), "a promotion forked at 500");
        assert_eq!(history.epoch(), 1);
        assert!(!history.follow(2, Lsn(900)), "the same timeline again");
        // Written before the fork: it survived, at its own LSN.
        assert_eq!(history.carry(Lsn(400), 0), Lsn(400));
        // Past the fork: it did not survive, and no replica of the new
        // timeline should be waited for beyond the fork.
        assert_eq!(history.carry(Lsn(700), 0), Lsn(500));
        // Written on the new timeline: as it is.
        assert_eq!(history.carry(Lsn(700), 1), Lsn(700));
        assert!(history.follow(3, Lsn(600)));
        assert_eq!(history.carry(Lsn(700), 0), Lsn(500), "the lowest fork");
        assert_eq!(history.carry(Lsn(700), 1), Lsn(600));
        // Timelines as another proxy names them, back to epochs.
        assert_eq!(history.timeline_of(1), Some(2));
        assert_eq!(
            (1..=4).map(|t| history.epoch_of(t)).collect::<Vec<_>>(),
            vec![0, 1, 2, 2]
        );
        assert_eq!(History::default().epoch_of(7), 0);
    }

    #[test]
    fn a_later_epoch_outranks_a_higher_lsn() {
        assert_eq!(mark(900, 0).max(mark(600, 1)), mark(600, 1));
        assert_eq!(mark(600, 1).max(mark(900, 0)), mark(600, 1));
        assert_eq!(mark(600, 1).max(mark(700, 1)), mark(700, 1));
    }

    fn status(name: &str, healthy: bool, timeline: Option<u32>) -> ReplicaStatus {
        ReplicaStatus {
            name: name.into(),
            address: String::new(),
            healthy,
            replayed: Lsn(100),
            lag_bytes: 0,
            lag_seconds: 0.0,
            polled_at: None,
            behind_since: None,
            advanced_at: None,
            last_error: None,
            promoted: false,
            timeline,
            since: None,
        }
    }

    #[test]
    fn a_promotion_switches_the_timeline_and_drops_replicas_left_behind() {
        let mut p = Positions {
            primary_lsn: Lsn(1000),
            primary_healthy: true,
            primary_in_recovery: false,
            primary_timeline: Some(1),
            primary_since: Some(Lsn(1000)),
            replicas: vec![status("r0", true, Some(1)), status("r1", true, Some(1))],
            history: History::default(),
        };
        assert!(!p.follow_timeline());
        assert_eq!(p.history.timeline, Some(1));
        assert!(p.replicas.iter().all(|r| p.serves(r)));
        // r1 is promoted at 800 and the old primary is gone.
        p.primary_healthy = false;
        p.replicas[1].promoted = true;
        p.replicas[1].healthy = false;
        p.replicas[1].timeline = Some(2);
        p.replicas[1].since = Some(Lsn(800));
        assert!(p.follow_timeline());
        assert_eq!(p.history.timeline, Some(2));
        assert_eq!(p.carry(mark(950, 0)), Lsn(800));
        assert!(!p.serves(&p.replicas[0]), "r0 still follows timeline 1");
        p.replicas[0].timeline = Some(2);
        assert!(p.serves(&p.replicas[0]), "r0 follows the new primary");
        // A replica whose timeline is unknown is not held back by it.
        assert!(p.serves(&status("r2", true, None)));
        assert!(!p.serves(&status("r3", false, Some(2))));
    }
}
