//! Where each replica is in replaying the primary's WAL, kept current by one
//! background task per server.
//!
//! Each task polls its server every `poll_interval_ms` while reads are
//! routed by what it sees (otherwise, and for a replica with nothing left
//! to replay, less often: see [`Monitor::pause`] and
//! [`Monitor::pause_replica`]) and publishes what it saw into a `watch`
//! channel. Sessions read the latest
//! [`Positions`] without any I/O; a session that must wait for a replica to
//! catch up says so ([`Monitor::wait_for`]), which makes the tasks poll
//! back-to-back until nobody waits, so a wait ends within a poll round trip
//! of the replay.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::backend::{Login, ServerTarget};
use crate::lsn::Lsn;

mod poll;
mod positions;
use poll::{connect, describe, Backoff, Polled};
pub use positions::{History, Mark, Positions, ReplicaStatus, WriteTarget};

/// The background tasks' shared state.
#[derive(Debug)]
pub struct Monitor {
    positions: watch::Sender<Positions>,
    /// Sessions waiting for a replica to catch up right now.
    waiters: AtomicUsize,
    /// Reads routed by the positions so far (see [`Monitor::note_read`]).
    reads: AtomicU64,
    /// Polls made so far, of every server.
    polls: AtomicU64,
    urgent: Notify,
    /// The primary was seen writing past where it was: replicas that had
    /// replayed everything have something to replay again.
    primary_moved: Notify,
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
            reads: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            urgent: Notify::new(),
            primary_moved: Notify::new(),
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

    /// A read is being routed by the positions: while reads come, the
    /// servers are polled every `poll_interval_ms` (see [`Demand`]).
    pub fn note_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Polls made so far, of every server.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
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

    /// Sleeps one poll interval, or much less while sessions wait, or
    /// [`QUIET_POLL`] while no read is routed by the positions.
    async fn pause(&self, demand: &mut Demand) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            // Poll again at once: each poll is a round trip to the server,
            // which paces it; a timer would round up to a millisecond.
            tokio::task::yield_now().await;
            return;
        }
        let interval = if demand.recent(self) {
            self.poll_interval
        } else {
            QUIET_POLL.max(self.poll_interval)
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = self.urgent.notified() => {}
        }
    }

    /// Sleeps between two polls of replica `index`. While it has replayed
    /// all the primary was last seen to write, polling it again can show
    /// nothing new but its health; while no read is routed by the
    /// positions, nothing needs them fresh. It is then polled every
    /// [`QUIET_POLL`] instead, or as soon as the primary moves or a session
    /// waits.
    async fn pause_replica(&self, index: usize, demand: &mut Demand) {
        let moved = self.primary_moved.notified();
        let urgent = self.urgent.notified();
        tokio::pin!(moved, urgent);
        // Registered before looking, so a move in between is not missed.
        moved.as_mut().enable();
        urgent.as_mut().enable();
        // Nothing new to show (caught up), or nobody to show it to.
        let quiet = self.waiters.load(Ordering::Acquire) == 0
            && (!demand.recent(self)
                || self.with_positions(|p| {
                    p.primary_healthy
                        && p.replicas
                            .get(index)
                            .is_some_and(|r| r.healthy && r.replayed >= p.primary_lsn)
                }));
        if !quiet {
            return self.pause(demand).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(QUIET_POLL.max(self.poll_interval)) => {}
            _ = moved => {}
            _ = urgent => {}
        }
    }

    async fn watch_primary(&self, target: ServerTarget, login: Login) {
        let mut backoff = Backoff::new();
        let mut demand = Demand::default();
        let polls = crate::metrics::polls_counter(&target.name);
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
                match self.poll(&client, &polls).await {
                    Ok(Polled::Primary {
                        lsn,
                        timeline,
                        since,
                    }) => {
                        let mut moved = false;
                        self.positions.send_if_modified(|p| {
                            moved = lsn > p.primary_lsn;
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
                        if moved {
                            self.primary_moved.notify_waiters();
                        }
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
                self.pause(&mut demand).await;
            }
        }
    }

    /// One poll of a server, counted.
    async fn poll(
        &self,
        client: &tokio_postgres::Client,
        counter: &metrics::Counter,
    ) -> Result<Polled, tokio_postgres::Error> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        counter.increment(1);
        poll::poll(client).await
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
        let mut demand = Demand::default();
        let polls = crate::metrics::polls_counter(&target.name);
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
                match self.poll(&client, &polls).await {
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
                self.pause_replica(index, &mut demand).await;
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

    /// A session could not get a connection to a replica; stop sending it
    /// reads at once rather than at the next poll.
    pub fn report_failure(&self, name: &str, why: &str) {
        let index = self.with_positions(|p| p.replicas.iter().position(|r| r.name == name));
        if let Some(index) = index {
            self.mark_unhealthy(index, why);
        }
    }

    /// A session lost its connection to a replica: stop sending it reads,
    /// and poll it at once. One lost connection (a terminated backend, a
    /// network blip) may leave the server fine; the poll then gives it its
    /// reads back within a round trip rather than after a poll interval.
    /// A failed connect ([`Monitor::report_failure`]) waits for the next
    /// poll instead, so that sessions do not each pay a connect attempt to
    /// a server the monitor still reaches but they cannot.
    pub fn report_lost_connection(&self, name: &str, why: &str) {
        self.report_failure(name, why);
        self.urgent.notify_waiters();
    }
}

/// How often a replica that has replayed everything is polled (see
/// [`Monitor::pause_replica`]), and every server while no read is routed
/// by the positions (see [`Demand`]).
const QUIET_POLL: Duration = Duration::from_millis(100);

/// How long after the last read routed by the positions the servers are
/// still polled every `poll_interval_ms`.
const DEMAND_WINDOW: Duration = Duration::from_secs(1);

/// What one polling task has seen of the reads routed by the positions.
/// Without them (a proxy idle, or serving only writes and transactions on
/// the primary, as pgbench's TPC-B), fresh positions serve nobody: each
/// server is then polled every [`QUIET_POLL`]: an idle proxy makes a
/// quarter of the polls, a write-only load a tenth. The first read after a quiet
/// spell routes by positions up to that old; one that finds no replica
/// fresh enough waits, which has every server polled at once.
#[derive(Default)]
struct Demand {
    seen: u64,
    last: Option<Instant>,
}

impl Demand {
    /// Whether a read was routed by the positions in the last
    /// [`DEMAND_WINDOW`].
    fn recent(&mut self, monitor: &Monitor) -> bool {
        let reads = monitor.reads.load(Ordering::Relaxed);
        let now = Instant::now();
        if reads != self.seen {
            self.seen = reads;
            self.last = Some(now);
        }
        self.last
            .is_some_and(|last| now.duration_since(last) < DEMAND_WINDOW)
    }
}
