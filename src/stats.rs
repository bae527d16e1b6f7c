//! What the admin console shows about clients and traffic: a registry of
//! connected clients and a few counters. The counters duplicate some
//! Prometheus metrics on purpose: the console must answer without a
//! metrics stack, and the facade cannot be read back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use dashmap::DashMap;

use crate::lsn::Lsn;
use crate::metrics::latency::LatencyHistogram;
use crate::router::Reason;

/// One connected client, as `SHOW CLIENTS` lists it.
#[derive(Debug)]
pub struct ClientInfo {
    pub pid: i32,
    pub user: String,
    pub database: String,
    pub addr: Option<SocketAddr>,
    pub application_name: String,
    pub connected_at: SystemTime,
    pub live: Mutex<ClientLive>,
    /// Units sent to a server so far.
    pub units: AtomicU64,
    /// What the session is doing now (a [`ClientState`]).
    pub state: std::sync::atomic::AtomicU8,
    /// The console's `KILL` and the shutdown's drain, for the session.
    pub signal: SessionSignal,
}

/// What a session is doing, as `SHOW CLIENTS` says it: enough to tell a
/// client waiting for its server from one its server waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Nothing open on a server, nothing asked: the proxy waits for the
    /// client.
    Idle,
    /// Inside a transaction on a server, everything answered: the proxy
    /// waits for the client.
    IdleInTransaction,
    /// Waiting for a server's answers.
    Active,
    /// Units held back by `PAUSE`.
    Paused,
    /// Waiting for a server connection from the pool, or for a replica to
    /// catch up with the session.
    Waiting,
}

impl ClientState {
    const ALL: [ClientState; 5] = [
        ClientState::Idle,
        ClientState::IdleInTransaction,
        ClientState::Active,
        ClientState::Paused,
        ClientState::Waiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::IdleInTransaction => "idle in transaction",
            ClientState::Active => "active",
            ClientState::Paused => "paused",
            ClientState::Waiting => "waiting",
        }
    }

    pub fn from_u8(code: u8) -> ClientState {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(ClientState::Idle)
    }
}

impl ClientInfo {
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// What a running session is told from outside: flags that stay raised
/// (a kill between two looks of the session is not lost), and the
/// session's waker. A session looks at it every turn of its loop, so
/// looking costs one atomic load and a waker check, not a lock.
#[derive(Debug, Default)]
pub struct SessionSignal {
    raised: std::sync::atomic::AtomicU8,
    waker: futures_util::task::AtomicWaker,
}

impl SessionSignal {
    /// The console's `KILL`: the session ends at once.
    pub const KILL: u8 = 1;
    /// The proxy is shutting down: the session ends at its next safe point.
    pub const DRAIN: u8 = 2;

    pub fn raise(&self, flag: u8) {
        self.raised.fetch_or(flag, Ordering::Release);
        self.waker.wake();
    }

    /// The flags raised so far; the task polling is woken when one is.
    pub fn poll_raised(&self, cx: &std::task::Context<'_>) -> u8 {
        self.waker.register(cx.waker());
        self.raised.load(Ordering::Acquire)
    }
}

/// What changes while the client is connected.
#[derive(Debug, Default, Clone)]
pub struct ClientLive {
    pub client_id: Option<String>,
    /// The server it is using now, if any.
    pub server: Option<String>,
    /// The commit LSN of its last write.
    pub causal: Option<Lsn>,
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub clients: DashMap<i32, Arc<ClientInfo>>,
    pub clients_total: AtomicU64,
    /// The most clients connected at once since the memory sweep last
    /// looked (it takes and resets it): a burst between two of its looks
    /// still counts.
    pub clients_peak: AtomicUsize,
    /// Per server name: units sent there, and its metric handles.
    pub servers: DashMap<String, Arc<ServerCounters>>,
    /// Units sent to the primary, per reason (indexed by `Reason as usize`).
    pub primary_by_reason: [AtomicU64; Reason::ALL.len()],
    pub waits: AtomicU64,
    pub waits_gave_up: AtomicU64,
    pub retries: AtomicU64,
    /// `causeway_statement_duration_seconds` by route (replica, primary).
    answered: [LatencyHistogram; 2],
}

/// A client's entry; removes itself when dropped.
pub struct ClientEntry {
    pub info: Arc<ClientInfo>,
    stats: Arc<Stats>,
}

impl Drop for ClientEntry {
    fn drop(&mut self) {
        self.stats.clients.remove(&self.info.pid);
    }
}

impl ClientEntry {
    /// Updates the client's live state.
    pub fn update(&self, f: impl FnOnce(&mut ClientLive)) {
        if let Ok(mut live) = self.info.live.lock() {
            f(&mut live);
        }
    }
}

impl Stats {
    /// Clients connected now for which `matches` holds.
    pub fn count_clients(&self, matches: impl Fn(&ClientInfo) -> bool) -> usize {
        self.clients.iter().filter(|c| matches(c.value())).count()
    }

    pub fn register(self: &Arc<Self>, info: ClientInfo) -> ClientEntry {
        let info = Arc::new(info);
        self.clients.insert(info.pid, info.clone());
        self.clients_total.fetch_add(1, Ordering::Relaxed);
        self.clients_peak
            .fetch_max(self.clients.len(), Ordering::Relaxed);
        ClientEntry {
            info,
            stats: self.clone(),
        }
    }

    /// The counters of one server, made on first use. A session looks
    /// them up once per server connection, not once per unit.
    pub fn server(&self, name: &str) -> Arc<ServerCounters> {
        if let Some(found) = self.servers.get(name) {
            return found.clone();
        }
        self.servers
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ServerCounters::new(name)))
            .clone()
    }

    pub fn units(&self, server: &str) -> u64 {
        self.servers
            .get(server)
            .map(|c| c.units.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// How long a unit took, from sent to ReadyForQuery, by route.
    pub fn answered(&self, primary: bool, elapsed: std::time::Duration) {
        self.answered[usize::from(primary)].record(elapsed);
    }

    /// Appends the latency histograms kept here to a `/metrics` page:
    /// `causeway_statement_duration_seconds` by route and
    /// `causeway_pool_wait_seconds` by server.
    pub fn render_latency(&self, out: &mut String) {
        use crate::metrics::latency::render_type;
        const ANSWERED: &str = "causeway_statement_duration_seconds";
        render_type(out, ANSWERED);
        for (histogram, route) in self.answered.iter().zip(["replica", "primary"]) {
            histogram.render(out, ANSWERED, &format!("route=\"{route}\""));
        }
        out.push('\n');
        const POOL_WAIT: &str = "causeway_pool_wait_seconds";
        render_type(out, POOL_WAIT);
        let mut servers: Vec<Arc<ServerCounters>> =
            self.servers.iter().map(|s| s.value().clone()).collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        for server in servers {
            let label = format!("server=\"{}\"", escape_label(&server.name));
            server.pool_wait.render(out, POOL_WAIT, &label);
        }
        out.push('\n');
    }
}

/// A label value as the Prometheus text format writes it.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What one unit sent to a server counts: the console's counters and the
/// Prometheus series, with their handles resolved once (a labelled metric
/// looked up by name costs a hash of its labels and a map search).
#[derive(Debug)]
pub struct ServerCounters {
    /// Units sent to this server.
    pub units: AtomicU64,
    name: String,
    /// `causeway_statements_total` by route (replica, primary) and reason.
    routed: [[OnceLock<metrics::Counter>; Reason::ALL.len()]; 2],
    /// `causeway_pool_wait_seconds` of this server.
    pool_wait: LatencyHistogram,
}

impl ServerCounters {
    fn new(name: &str) -> ServerCounters {
        ServerCounters {
            units: AtomicU64::new(0),
            name: name.to_string(),
            routed: Default::default(),
            pool_wait: LatencyHistogram::default(),
        }
    }

    /// A unit was sent to this server.
    pub fn routed(&self, stats: &Stats, primary: bool, reason: Reason) {
        self.units.fetch_add(1, Ordering::Relaxed);
        let slot = &self.routed[usize::from(primary)][reason as usize];
        slot.get_or_init(|| crate::metrics::routed_counter(&self.name, primary, reason))
            .increment(1);
        if primary {
            stats.primary_by_reason[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A session waited this long for a connection to this server.
    pub fn pool_wait(&self, waited: std::time::Duration) {
        self.pool_wait.record(waited);
    }
}
