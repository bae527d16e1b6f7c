//! The proxy as a whole: its shared state, the accept loop, and shutdown.
//!
//! SIGTERM (or Ctrl-C) stops accepting, tells every session to end at its
//! next safe point (no request in flight, no transaction open), and after
//! `shutdown_timeout_ms` stops waiting.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::backend::pool::Pools;
use crate::backend::{Login, ServerTarget};
use crate::cancel::CancelRegistry;
use crate::causal::CausalMap;
use crate::config::{AuthMethod, Config, ServerSection};
use crate::frontend::{self, auth};
use crate::protocol::messages::{self, Severity};
use crate::replicas::Monitor;
use crate::router::facts::FactsCache;
use crate::router::Policy;
use crate::stats::Stats;

/// How one configured user logs in, with secrets derived once.
#[derive(Debug, Clone)]
pub struct UserAuth {
    pub method: AuthMethod,
    pub scram: Option<auth::ScramSecret>,
    pub md5: Option<String>,
    pub server_user: String,
    pub server_password: Option<String>,
}

/// State every session shares.
#[derive(Debug)]
pub struct Proxy {
    pub config: Config,
    pub users: HashMap<String, UserAuth>,
    pub primary: ServerTarget,
    pub replicas: Vec<ServerTarget>,
    pub pools: Arc<Pools>,
    pub cancels: Arc<CancelRegistry>,
    pub monitor: Arc<Monitor>,
    pub policy: Policy,
    /// Numbers sessions, to spread them over the replicas.
    pub spread: AtomicUsize,
    pub facts_cache: FactsCache,
    /// TLS towards clients (`[tls]`), read when the config was loaded.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// `tls-server-end-point` data of the certificate shown to clients,
    /// for SCRAM-SHA-256-PLUS.
    pub tls_binding: Option<Vec<u8>>,
    /// The causal store shared by instances (`[routing] causal_store`).
    pub causal_store: Option<Arc<crate::causal_store::CausalStore>>,
    /// Secrets read by `auth_query` (a reload starts afresh).
    pub auth_cache: crate::auth_query::AuthCache,
    /// Causal LSNs shared by connections of one client.
    pub causal: Arc<CausalMap>,
    pub stats: Arc<Stats>,
    /// Function volatility by database, read from the primary.
    pub catalogs: Arc<crate::catalog::Catalogs>,
    /// Which transaction shapes write (optimistic transactions).
    pub shapes: Arc<crate::shapes::Shapes>,
    /// `PAUSE` / `RESUME`.
    pub pause: Arc<crate::pause::PauseGate>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The last session of a reloaded-away config is gone: stop its polling.
        self.monitor.stop();
    }
}

fn target(section: &ServerSection, tls: &crate::tls::TlsSection) -> ServerTarget {
    let tls = section.tls(tls, &section.name).unwrap_or_else(|(key, e)| {
        // Checked when the config was loaded; if the files changed since,
        // fail closed: a certificate no root can vouch for.
        tracing::error!(server = %section.name, %key, error = %e, "server TLS settings unusable; connections to it will fail");
        crate::tls::ServerTls::unusable()
    });
    ServerTarget {
        name: section.name.clone(),
        host: section.host.clone(),
        port: section.port,
        tls,
    }
}

impl Proxy {
    pub fn new(config: Config) -> Proxy {
        Self::after(config, None)
    }

    /// A proxy for `config` that keeps what must outlive a reload from
    /// `previous`: cancel keys, shared causal LSNs, client registry, counters.
    pub fn after(config: Config, previous: Option<&Proxy>) -> Proxy {
        let users = config
            .users
            .iter()
            .map(|u| {
                let scram = u
                    .scram_verifier
                    .as_deref()
                    .and_then(auth::ScramSecret::parse)
                    .or_else(|| u.password.as_deref().map(auth::ScramSecret::from_password));
                let md5 = u
                    .md5_hash
                    .clone()
                    .or_else(|| u.password.as_deref().map(|p| auth::md5_secret(&u.name, p)));
                let (server_user, server_password) = u.server_login();
                let entry = UserAuth {
                    method: u.auth.unwrap_or(config.auth.method),
                    scram,
                    md5,
                    server_user: server_user.to_string(),
                    server_password: server_password.map(str::to_string),
                };
                (u.name.clone(), entry)
            })
            .collect();
        let pools = Arc::new(Pools::new(
            config.pool.max_server_connections,
            config.pool.checkout_timeout(),
            config.pool.connect_timeout(),
        ));
        let replicas: Vec<ServerTarget> = config
            .replicas
            .iter()
            .map(|r| target(r, &config.tls))
            .collect();
        let routing = &config.routing;
        let policy = Policy {
            on_stale: routing.on_stale,
            max_wait: Duration::from_millis(routing.max_wait_ms),
            max_lag_bytes: routing.max_lag_bytes,
            max_lag_seconds: routing.max_lag_ms as f64 / 1000.0,
        };
        Proxy {
            primary: target(&config.primary, &config.tls),
            monitor: Monitor::new(&replicas, Duration::from_millis(routing.poll_interval_ms)),
            replicas,
            users,
            pools,
            cancels: previous.map_or_else(
                || Arc::new(CancelRegistry::default()),
                |p| p.cancels.clone(),
            ),
            policy,
            spread: AtomicUsize::new(0),
            facts_cache: FactsCache::new(routing.statement_cache_size),
            causal: previous.map_or_else(
                || {
                    Arc::new(CausalMap::new(
                        Duration::from_millis(routing.client_lsn_ttl_ms),
                        routing.client_lsn_max_entries,
                    ))
                },
                |p| p.causal.clone(),
            ),
            stats: previous.map_or_else(|| Arc::new(Stats::default()), |p| p.stats.clone()),
            catalogs: Arc::default(),
            tls_binding: config.tls.channel_binding(),
            auth_cache: Default::default(),
            causal_store: routing.causal_store.as_deref().and_then(|url| {
                crate::causal_store::CausalStore::new(
                    url,
                    Duration::from_millis(routing.client_lsn_ttl_ms),
                    Duration::from_millis(routing.causal_store_timeout_ms),
                )
                .map(Arc::new)
                .map_err(|e| tracing::error!(error = %e, "routing.causal_store is unusable"))
                .ok()
            }),
            tls: config.tls.server_config().unwrap_or_else(|(key, e)| {
                tracing::error!(%key, error = %e, "TLS for clients is off");
                None
            }),
            pause: previous.map_or_else(
                || Arc::new(crate::pause::PauseGate::default()),
                |p| p.pause.clone(),
            ),
            shapes: previous.map_or_else(
                || Arc::new(crate::shapes::Shapes::new(10_000)),
                |p| p.shapes.clone(),
            ),
            config,
        }
    }

    /// The login the replica monitor uses on every server.
    pub fn monitor_login(&self) -> Login {
        let routing = &self.config.routing;
        let first = self.config.users.first();
        let (user, password) = match (&routing.monitor_user, first) {
            (Some(user), _) => (user.clone(), routing.monitor_password.clone()),
            (None, Some(first)) => {
                let (user, password) = first.server_login();
                (
                    user.to_string(),
                    routing
                        .monitor_password
                        .clone()
                        .or(password.map(str::to_string)),
                )
            }
            (None, None) => ("postgres".to_string(), routing.monitor_password.clone()),
        };
        Login {
            user,
            password,
            database: routing.monitor_database.clone(),
            secret: None,
        }
    }

    /// Sets the server-connection gauges from the pools.
    pub fn publish_pool_metrics(&self) {
        let mut per_server: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
        for (server, _, _, in_use, idle) in self.pools.counts() {
            let entry = per_server.entry(server).or_default();
            entry.0 += in_use;
            entry.1 += idle;
        }
        for (server, (in_use, idle)) in per_server {
            crate::metrics::server_connections(&server, in_use, idle);
        }
    }

    /// Starts the background tasks that watch the servers.
    pub fn start_monitor(&self) {
        let timeout = Duration::from_millis(self.config.pool.server_idle_timeout_ms);
        if !timeout.is_zero() {
            let pools = Arc::downgrade(&self.pools);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(
                        (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(10)),
                    )
                    .await;
                    match pools.upgrade() {
                        Some(pools) => pools.close_idle_older_than(timeout),
                        None => return,
                    }
                }
            });
        }
        // The clients outlive a RELOAD (their stats move to the new proxy);
        // this proxy's catalogs do not, and so tell the sweep to stop.
        let (stats, this_proxy) = (self.stats.clone(), Arc::downgrade(&self.catalogs));
        tokio::spawn(async move {
            let mut sweep = crate::memory::TrimSweep::default();
            loop {
                tokio::time::sleep(crate::memory::SWEEP_PERIOD).await;
                if this_proxy.strong_count() == 0 {
                    return;
                }
                let clients = stats.clients.len();
                let peak = stats.clients_peak.swap(clients, Ordering::Relaxed);
                if sweep.observe(peak, clients) {
                    tracing::info!(clients, "many clients left: giving free memory back");
                    let _ = tokio::task::spawn_blocking(crate::memory::give_back_free_memory).await;
                }
            }
        });
        let refresh = Duration::from_millis(self.config.routing.function_catalog_refresh_ms);
        if !refresh.is_zero() {
            let catalogs = Arc::downgrade(&self.catalogs);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(refresh).await;
                    match catalogs.upgrade() {
                        Some(catalogs) => catalogs.mark_due(),
                        None => return,
                    }
                }
            });
        }
        self.monitor.spawn(
            self.primary.clone(),
            self.replicas.clone(),
            self.monitor_login(),
        );
    }

    /// The login the proxy uses on servers for this client user and database.
    /// The server writes go to now, as the servers' own answers say (see
    /// `crate::replicas::WriteTarget`): the configured primary, or the
    /// replica promoted while it is gone; `None` while two claim the role.
    pub fn primary_target(&self) -> Option<&ServerTarget> {
        self.primary_target_in_epoch()
            .ok()
            .map(|(target, _)| target)
    }

    /// The write target and the epoch (timeline switches seen) it belongs
    /// to, read together: a commit on it is tagged with that epoch. `Err`
    /// says why writes have nowhere to go.
    pub fn primary_target_in_epoch(&self) -> Result<(&ServerTarget, u32), &'static str> {
        use crate::replicas::WriteTarget;
        let (target, epoch) = self
            .monitor
            .with_positions(|p| (p.write_target(), p.history.epoch()));
        match target {
            WriteTarget::Configured => Ok((&self.primary, epoch)),
            WriteTarget::Promoted(i) => Ok((self.replicas.get(i).unwrap_or(&self.primary), epoch)),
            other => Err(other.refusal().unwrap_or("no primary")),
        }
    }

    /// Writes every causal LSN this instance knows to the shared store
    /// again (it lost its data: see [`crate::causal_store`]).
    pub fn republish_causal(&self) {
        let Some(store) = &self.causal_store else {
            return;
        };
        let value = |mark: crate::replicas::Mark| {
            let timeline = self
                .monitor
                .with_positions(|p| p.history.timeline_of(mark.epoch))
                .unwrap_or(0);
            crate::causal_store::encode_value(timeline, mark.lsn)
        };
        if let Some(newest) = self.causal.newest() {
            store.keep("global", value(newest));
        }
        for (key, mark) in self.causal.entries() {
            store.keep(&key, value(mark));
        }
    }

    pub fn server_login(&self, user: &str, database: &str) -> Login {
        let (server_user, password) = match self.users.get(user) {
            Some(u) => (u.server_user.clone(), u.server_password.clone()),
            None => (user.to_string(), None),
        };
        Login {
            user: server_user,
            password,
            database: database.to_string(),
            secret: None,
        }
    }
}

/// The proxy in force, swapped whole by a reload: sessions that started
/// before keep the proxy they started with, new ones get the new one.
#[derive(Debug)]
pub struct ProxyHandle {
    current: RwLock<Arc<Proxy>>,
    config_path: Option<PathBuf>,
    /// The console's `SHUTDOWN`: the same drain as SIGTERM.
    shutdown: watch::Sender<bool>,
}

impl ProxyHandle {
    pub fn new(proxy: Arc<Proxy>, config_path: Option<PathBuf>) -> Arc<ProxyHandle> {
        Arc::new(ProxyHandle {
            current: RwLock::new(proxy),
            config_path,
            shutdown: watch::Sender::new(false),
        })
    }

    /// Asks the accept loop to stop and drain, as SIGTERM does.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn get(&self) -> Arc<Proxy> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the config file and swaps in a proxy built from it. Clients
    /// stay connected; the listen address and client limit keep their
    /// start-up values.
    pub fn reload(&self) -> Result<String, String> {
        let path = self
            .config_path
            .as_ref()
            .ok_or_else(|| "this proxy was not started from a config file".to_string())?;
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let old = self.get();
        let replicas = config.replicas.len();
        let fresh = Arc::new(Proxy::after(config, Some(&old)));
        fresh.start_monitor();
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        tracing::info!(path = %path.display(), replicas, "configuration reloaded");
        Ok(format!("reloaded {} ({replicas} replicas)", path.display()))
    }
}

/// Accepts clients until `stop` fires, then drains them.
pub async fn serve(
    handle: Arc<ProxyHandle>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let proxy = handle.get();
    let mut shutdown_requested = handle.shutdown.subscribe();
    let (drain_tx, drain_rx) = watch::channel(false);
    let client_slots = Arc::new(Semaphore::new(proxy.config.proxy.max_client_connections));
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, don't spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = client_slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many clients; refusing");
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let mut out = BytesMut::new();
                        messages::error_response(&mut out, Severity::Fatal, "53300", "sorry, too many clients already", None);
                        let _ = stream.write_all(&out).await;
                    });
                    continue;
                };
                let handle = handle.clone();
                let drain = drain_rx.clone();
                sessions.spawn(async move {
                    frontend::serve(handle, stream, drain).await;
                    drop(slot);
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = stop.changed() => break,
            _ = shutdown_requested.wait_for(|s| *s) => {
                tracing::info!("SHUTDOWN from the console");
                break;
            }
        }
    }
    drop(listener);
    let open = sessions.len();
    tracing::info!(
        open,
        "shutting down: waiting for sessions to reach a safe point"
    );
    let _ = drain_tx.send(true);
    // Sessions already running hear it through their signal; one that
    // registers after this sees the channel's value when it starts.
    for client in handle.get().stats.clients.iter() {
        client.signal.raise(crate::stats::SessionSignal::DRAIN);
    }
    let timeout = Duration::from_millis(proxy.config.proxy.shutdown_timeout_ms);
    let drained = tokio::time::timeout(timeout, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = sessions.len(),
            "shutdown timeout: closing remaining sessions"
        );
        sessions.shutdown().await;
    }
}
