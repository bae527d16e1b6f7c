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
    pub replicas: Vec<ReplicaStatus>,
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
}

impl Positions {
    /// Some server takes writes now: the configured primary, or one
    /// promoted replica.
    pub fn has_primary(&self) -> bool {
        match self.write_target() {
            WriteTarget::Configured => self.primary_healthy,
            WriteTarget::Promoted(_) => true,
            WriteTarget::SplitBrain => false,
        }
    }

    pub fn write_target(&self) -> WriteTarget {
        let promoted: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.replicas[i].promoted)
            .collect();
        match (self.primary_healthy, promoted.as_slice()) {
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
                })
                .collect(),
        };
        Arc::new(Monitor {
            positions: watch::Sender::new(positions),
            waiters: AtomicUsize::new(0),
            urgent: Notify::new(),
            poll_interval,
            stopped: watch::Sender::new(false),
        })
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
                    tracing::warn!(server = %target.name, error = %e, "cannot reach the primary");
                    self.positions
                        .send_if_modified(|p| std::mem::replace(&mut p.primary_healthy, false));
                    backoff.sleep().await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                match client
                    .simple_query(
                        "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
                    )
                    .await
                {
                    Ok(rows) => {
                        let lsn = first_value(&rows).and_then(|v| v.parse().ok());
                        if let Some(lsn) = lsn {
                            self.positions.send_if_modified(|p| {
                                let changed = p.primary_lsn != lsn || !p.primary_healthy;
                                p.primary_lsn = p.primary_lsn.max(lsn);
                                p.primary_healthy = true;
                                changed
                            });
                        } else {
                            // In recovery: a standby now, not the primary.
                            if self.positions.send_if_modified(|p| {
                                std::mem::replace(&mut p.primary_healthy, false)
                            }) {
                                tracing::warn!(server = %target.name, "the configured primary is in recovery: writes go to a promoted replica, if any");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(server = %target.name, error = %e, "primary stopped answering");
                        self.positions
                            .send_if_modified(|p| std::mem::replace(&mut p.primary_healthy, false));
                        break;
                    }
                }
                self.pause().await;
            }
        }
    }

    async fn watch_replica(&self, index: usize, target: ServerTarget, login: Login) {
        let mut backoff = Backoff::new();
        loop {
            let client = match connect(&target, &login).await {
                Ok(client) => client,
                Err(e) => {
                    crate::metrics::poll_error(&target.name);
                    self.mark_unhealthy(index, &e.to_string());
                    backoff.sleep().await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                let polled = client
                    .simple_query(
                        "SELECT pg_is_in_recovery()::text, pg_last_wal_replay_lsn()::text, \
                         CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
                    )
                    .await;
                let rows = match polled {
                    Ok(rows) => rows,
                    Err(e) => {
                        crate::metrics::poll_error(&target.name);
                        self.mark_unhealthy(index, &e.to_string());
                        break;
                    }
                };
                let row = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                    _ => None,
                });
                let in_recovery = row.and_then(|r| r.get(0)) == Some("true");
                let replayed: Option<Lsn> = row.and_then(|r| r.get(1)).and_then(|v| v.parse().ok());
                let written: Option<Lsn> = row.and_then(|r| r.get(2)).and_then(|v| v.parse().ok());
                match (in_recovery, replayed) {
                    (true, Some(replayed)) => self.mark_position(index, replayed),
                    (false, _) => self.mark_promoted(index, written),
                    (true, None) => self.mark_unhealthy(index, "no replay position reported"),
                }
                self.pause().await;
            }
            backoff.sleep().await;
        }
    }

    fn mark_position(&self, index: usize, replayed: Lsn) {
        self.positions.send_if_modified(|p| {
            let primary_lsn = p.primary_lsn;
            let Some(r) = p.replicas.get_mut(index) else {
                return false;
            };
            let was_healthy = r.healthy;
            let changed = !r.healthy || r.replayed != replayed || r.promoted;
            r.promoted = false;
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
            changed
        });
    }

    /// Replica `index` answers out of recovery: it is a primary now, at
    /// `written`. It gets no reads; writes may go to it (see
    /// [`Positions::write_target`]).
    fn mark_promoted(&self, index: usize, written: Option<Lsn>) {
        self.positions.send_if_modified(|p| {
            let Some(r) = p.replicas.get_mut(index) else {
                return false;
            };
            let changed = !r.promoted || r.healthy;
            if !r.promoted {
                tracing::warn!(server = %r.name, "server is out of recovery: a primary now; it gets no reads");
            }
            r.promoted = true;
            r.healthy = false;
            r.last_error = Some("not in recovery: promoted, or not a replica".to_string());
            if let (false, Some(lsn)) = (p.primary_healthy, written) {
                p.primary_lsn = p.primary_lsn.max(lsn);
            }
            changed
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
            changed
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
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn first_value(rows: &[tokio_postgres::SimpleQueryMessage]) -> Option<&str> {
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
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
