//! Per-server pools of logged-in connections.
//!
//! A pool is keyed by server, database and login role. Its semaphore counts
//! connections lent out; lending prefers an idle connection and opens a new
//! one only when none is idle, so a pool never holds more than
//! `max_server_connections` connections in all.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{BackendError, Login, ServerConn, ServerTarget};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    server: String,
    login: Login,
}

/// Every pool the proxy has, made on first use.
#[derive(Debug)]
pub struct Pools {
    pools: DashMap<PoolKey, Arc<Pool>>,
    max_size: usize,
    checkout_timeout: Duration,
    connect_timeout: Duration,
}

/// The connections to one server for one database and role.
#[derive(Debug)]
pub struct Pool {
    target: ServerTarget,
    login: Login,
    /// Boxed, so lending and giving back move a pointer, not the whole
    /// connection (a lease keeps the box it was lent).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    lent: Arc<Semaphore>,
    checkout_timeout: Duration,
    connect_timeout: Duration,
}

/// A connection lent out of a pool. Give it back with [`Pool::give_back`];
/// dropping it closes the connection and frees its place.
#[derive(Debug)]
pub struct Lease {
    pub conn: Box<ServerConn>,
    pub pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Pools {
    pub fn new(max_size: usize, checkout_timeout: Duration, connect_timeout: Duration) -> Pools {
        Pools {
            pools: DashMap::new(),
            max_size,
            checkout_timeout,
            connect_timeout,
        }
    }

    /// The pool for this server and login, made if it is new.
    pub fn get(&self, target: &ServerTarget, login: &Login) -> Arc<Pool> {
        let key = PoolKey {
            server: target.name.clone(),
            login: login.clone(),
        };
        if let Some(pool) = self.pools.get(&key) {
            return pool.clone();
        }
        self.pools
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Pool {
                    target: target.clone(),
                    login: login.clone(),
                    idle: Mutex::new(Vec::new()),
                    lent: Arc::new(Semaphore::new(self.max_size)),
                    checkout_timeout: self.checkout_timeout,
                    connect_timeout: self.connect_timeout,
                })
            })
            .clone()
    }

    /// Closes every idle connection to `server`: it failed, and its idle
    /// connections would only fail one by one.
    pub fn drop_idle(&self, server: &str) {
        for pool in self.pools.iter().filter(|p| p.target.name == server) {
            if let Ok(mut idle) = pool.idle.lock() {
                idle.clear();
            }
        }
    }

    /// Closes idle connections to `database` on every server, so that
    /// `DROP DATABASE` (or a template copy) does not find the proxy's own
    /// idle connections in its way.
    pub fn drop_idle_database(&self, database: &str) {
        for pool in self.pools.iter().filter(|p| p.login.database == database) {
            if let Ok(mut idle) = pool.idle.lock() {
                idle.clear();
            }
        }
    }

    /// Closes connections idle for longer than `timeout`. A connection is
    /// stamped by the first sweep that finds it idle, not when it is given
    /// back (which would read the clock for every transaction): it closes
    /// between `timeout` and `timeout` plus one sweep period after.
    pub fn close_idle_older_than(&self, timeout: Duration) {
        let now = std::time::Instant::now();
        for pool in self.pools.iter() {
            if let Ok(mut idle) = pool.idle.lock() {
                idle.retain_mut(|c| {
                    let since = *c.idle_since.get_or_insert(now);
                    now.duration_since(since) < timeout
                });
            }
        }
    }

    /// Counts of (lent, idle) connections per server name, for the console.
    pub fn counts(&self) -> Vec<(String, String, String, usize, usize)> {
        self.pools
            .iter()
            .map(|p| {
                let idle = p.idle.lock().map(|v| v.len()).unwrap_or(0);
                let lent = self.max_size - p.lent.available_permits();
                (
                    p.target.name.clone(),
                    p.login.database.clone(),
                    p.login.user.clone(),
                    lent,
                    idle,
                )
            })
            .collect()
    }
}

impl Pool {
    pub fn server_name(&self) -> &str {
        &self.target.name
    }

    /// Lends a connection: an idle one if there is one, else a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Lease, BackendError> {
        self.checkout_preferring(None).await.0
    }

    /// A newly opened connection, never one another client used.
    pub async fn checkout_new(self: &Arc<Self>) -> Result<Lease, BackendError> {
        let permit = self.permit().await?;
        let conn = self.open().await?;
        Ok(self.lease(Box::new(conn), permit))
    }

    /// Opens a new connection to the pool's server. The login's state
    /// (TLS, SCRAM) lives on the heap, so that the futures of the
    /// checkouts, which a session awaits for every transaction, stay small
    /// and cheap to move for the common case of an idle connection.
    async fn open(&self) -> Result<ServerConn, BackendError> {
        Box::pin(ServerConn::connect(
            &self.target,
            &self.login,
            self.connect_timeout,
        ))
        .await
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, BackendError> {
        tokio::time::timeout(self.checkout_timeout, self.lent.clone().acquire_owned())
            .await
            .map_err(|_| BackendError::PoolTimeout {
                server: self.target.name.clone(),
                waited_ms: self.checkout_timeout.as_millis(),
            })?
            .map_err(|_| BackendError::PoolTimeout {
                server: self.target.name.clone(),
                waited_ms: self.checkout_timeout.as_millis(),
            })
    }

    /// Lends connection `preferred` if it is idle, else as [`Pool::checkout`].
    /// A client that gets its last connection back finds what the proxy
    /// cannot replay still there (`currval`, `lastval`, the plan cache).
    /// Also says how long the caller waited for it: zero, without reading
    /// the clock, when a place and an idle connection were free at once.
    pub async fn checkout_preferring(
        self: &Arc<Self>,
        preferred: Option<u64>,
    ) -> (Result<Lease, BackendError>, Duration) {
        if let Some(lease) = self.checkout_now(preferred) {
            return (Ok(lease), Duration::ZERO);
        }
        self.checkout_waiting(preferred).await
    }

    /// Lends an idle connection, `preferred` if it is idle, when a place
    /// and an idle connection are free at once; `None` (and nothing taken)
    /// when lending would mean waiting or connecting.
    pub fn checkout_now(self: &Arc<Self>, preferred: Option<u64>) -> Option<Lease> {
        let permit = self.lent.clone().try_acquire_owned().ok()?;
        let conn = self.take_idle(preferred)?;
        Some(self.lease(conn, permit))
    }

    /// The rest of [`Pool::checkout_preferring`]: waits for a place, then
    /// lends an idle connection or opens one.
    async fn checkout_waiting(
        self: &Arc<Self>,
        preferred: Option<u64>,
    ) -> (Result<Lease, BackendError>, Duration) {
        let asked = std::time::Instant::now();
        let leased = async {
            let permit = self.permit().await?;
            let conn = match self.take_idle(preferred) {
                Some(conn) => conn,
                None => Box::new(self.open().await?),
            };
            Ok(self.lease(conn, permit))
        }
        .await;
        (leased, asked.elapsed())
    }

    /// An idle connection, `preferred` if it is there. Connections closed
    /// or talking while idle (a server shutting down sends FATAL to every
    /// connection) are dropped, never lent.
    fn take_idle(&self, preferred: Option<u64>) -> Option<Box<ServerConn>> {
        let mut idle = self.idle.lock().ok()?;
        if let Some(i) = preferred.and_then(|id| idle.iter().rposition(|c| c.id == id)) {
            let mut conn = idle.swap_remove(i);
            if conn.is_quiet() {
                return Some(conn);
            }
        }
        while let Some(mut conn) = idle.pop() {
            if conn.is_quiet() {
                return Some(conn);
            }
        }
        None
    }

    fn lease(self: &Arc<Self>, mut conn: Box<ServerConn>, permit: OwnedSemaphorePermit) -> Lease {
        // The borrower's task has left no waker with it yet. (The arm
        // keeps its waker: a session that gets its last connection back,
        // as most do, leaves the same one again without making another.)
        conn.read_arm.disarm();
        Lease {
            conn,
            pool: self.clone(),
            _permit: permit,
        }
    }
}

impl Lease {
    /// Returns a clean connection to its pool for the next client. The
    /// connection is idle before its place is freed, so a waiter finds it.
    pub fn give_back(self) {
        let Lease {
            conn,
            pool,
            _permit,
        } = self;
        let mut conn = conn;
        if conn.unclean {
            tracing::warn!(server = %conn.server_name, "closing a server connection whose session state is unknown");
            return;
        }
        conn.idle_since = None;
        if let Ok(mut idle) = pool.idle.lock() {
            idle.push(conn);
        };
    }
}
