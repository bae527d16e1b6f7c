//! What the admin console shows about clients and traffic: a registry of
//! connected clients and a few counters. The counters duplicate some
//! Prometheus metrics on purpose: the console must answer without a
//! metrics stack, and the facade cannot be read back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dashmap::DashMap;

use crate::lsn::Lsn;
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
    /// The console's `KILL`: the session ends at once (a stored permit, so a
    /// kill between two polls of the session is not lost).
    pub kill: tokio::sync::Notify,
}

/// What changes while the client is connected.
#[derive(Debug, Default, Clone)]
pub struct ClientLive {
    pub client_id: Option<String>,
    /// The server it is using now, if any.
    pub server: Option<String>,
    pub causal: Option<Lsn>,
    pub units: u64,
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub clients: DashMap<i32, Arc<ClientInfo>>,
    pub clients_total: AtomicU64,
    /// Units sent, per server name.
    pub units_by_server: DashMap<String, AtomicU64>,
    /// Units sent to the primary, per reason.
    pub primary_by_reason: DashMap<&'static str, AtomicU64>,
    pub waits: AtomicU64,
    pub waits_gave_up: AtomicU64,
    pub retries: AtomicU64,
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
        ClientEntry {
            info,
            stats: self.clone(),
        }
    }

    pub fn routed(&self, server: &str, primary: bool, reason: Reason) {
        match self.units_by_server.get(server) {
            Some(count) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.units_by_server
                    .entry(server.to_string())
                    .or_default()
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if primary {
            self.primary_by_reason
                .entry(reason.as_str())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn units(&self, server: &str) -> u64 {
        self.units_by_server
            .get(server)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}
