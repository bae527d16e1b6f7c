//! What each `SHOW` answers: the proxy's state read into rows of text.
//! Nothing here touches a socket; the same rows go out through the simple
//! and the extended protocol.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::command::{Show, HELP};
use crate::server::Proxy;

/// One row: a text value or NULL per column.
pub type Row = Vec<Option<String>>;

/// The rows of `show`, read from `proxy` now. Columns are
/// [`Show::columns`], in that order.
pub fn rows(proxy: &Proxy, show: Show) -> Vec<Row> {
    match show {
        Show::Clients => clients(proxy),
        Show::Servers => servers(proxy),
        Show::Replicas => replicas(proxy),
        Show::Pools => pools(proxy),
        Show::Databases => databases(proxy),
        Show::Stats => stats(proxy),
        Show::Config => config(proxy),
        Show::Version => vec![vec![text(format!(
            "causeway {}",
            env!("CARGO_PKG_VERSION")
        ))]],
        Show::Help => HELP
            .iter()
            .map(|(command, about)| vec![text(command), text(about)])
            .collect(),
    }
}

pub fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn clients(proxy: &Proxy) -> Vec<Row> {
    let now = SystemTime::now();
    let mut rows: Vec<_> = proxy
        .stats
        .clients
        .iter()
        .map(|entry| {
            let c = entry.value();
            let live = c.live.lock().map(|l| l.clone()).unwrap_or_default();
            vec![
                text(c.pid),
                text(&c.user),
                text(&c.database),
                c.addr.map(|a| a.to_string()),
                text(&c.application_name),
                live.client_id.clone(),
                live.server.clone(),
                live.causal.map(|l| l.to_string()),
                text(c.units.load(std::sync::atomic::Ordering::Relaxed)),
                text(
                    now.duration_since(c.connected_at)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                ),
                text(c.state().as_str()),
            ]
        })
        .collect();
    rows.sort();
    rows
}

fn servers(proxy: &Proxy) -> Vec<Row> {
    let mut rows: Vec<_> = proxy
        .pools
        .counts()
        .into_iter()
        .map(|(server, database, user, in_use, idle)| {
            vec![
                text(server),
                text(database),
                text(user),
                text(in_use),
                text(idle),
            ]
        })
        .collect();
    rows.sort();
    rows
}

fn replicas(proxy: &Proxy) -> Vec<Row> {
    let positions = proxy.monitor.positions();
    positions
        .replicas
        .iter()
        .map(|r| {
            vec![
                text(&r.name),
                text(&r.address),
                text(positions.serves(r)),
                text(r.replayed),
                text(r.lag_bytes),
                text(format!("{:.3}", r.lag_seconds)),
                text(proxy.stats.units(&r.name)),
                r.last_error.clone().or_else(|| {
                    (r.healthy && !positions.serves(r))
                        .then(|| "not on the primary's timeline".to_string())
                }),
                r.timeline.and_then(text),
            ]
        })
        .collect()
}

/// Clients and server connections of one (database, user) pool.
#[derive(Default)]
struct PoolCounts {
    clients: usize,
    lent: usize,
    idle: usize,
}

/// PgBouncer's pools are per database and user; causeway keeps one pool of
/// server connections per server for each, so a row adds up the servers.
/// `user` is the role causeway logs in to the servers as, which is the
/// client's own user unless `[[users]]` maps it to another. Clients waiting
/// for a connection are not told apart from the others, so `cl_waiting` and
/// `maxwait` are NULL rather than a made-up 0; causeway has no connections
/// in PgBouncer's "used" state (idle, awaiting a check query), so `sv_used`
/// is 0.
fn pools(proxy: &Proxy) -> Vec<Row> {
    let mut pools: BTreeMap<(String, String), PoolCounts> = BTreeMap::new();
    for client in proxy.stats.clients.iter() {
        let login = proxy.server_login(&client.user, &client.database);
        pools
            .entry((login.database, login.user))
            .or_default()
            .clients += 1;
    }
    for (_server, database, user, lent, idle) in proxy.pools.counts() {
        let pool = pools.entry((database, user)).or_default();
        pool.lent += lent;
        pool.idle += idle;
    }
    let mode = pool_mode(proxy);
    pools
        .into_iter()
        .map(|((database, user), counts)| {
            vec![
                text(database),
                text(user),
                text(counts.clients),
                None,
                text(counts.lent),
                text(counts.idle),
                text(0),
                None,
                text(&mode),
            ]
        })
        .collect()
}

/// PgBouncer lists the databases of its config; causeway sends any
/// database name to every server, so it lists each database in use (by a
/// client or a pooled connection) once per server, then the console itself.
fn databases(proxy: &Proxy) -> Vec<Row> {
    let mut in_use: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for client in proxy.stats.clients.iter() {
        in_use.entry(client.database.clone()).or_default();
    }
    for (server, database, _user, lent, idle) in proxy.pools.counts() {
        *in_use
            .entry(database)
            .or_default()
            .entry(server)
            .or_default() += lent + idle;
    }
    let writes_to = proxy.primary_target().map(|t| t.name.clone());
    let mode = pool_mode(proxy);
    let paused = if proxy.pause.is_paused() { 1 } else { 0 };
    let servers = std::iter::once(&proxy.primary).chain(&proxy.replicas);
    let mut rows = Vec::new();
    for (database, connections) in &in_use {
        for server in servers.clone() {
            let role = if writes_to.as_deref() == Some(server.name.as_str()) {
                "primary"
            } else {
                "replica"
            };
            rows.push(vec![
                text(database),
                text(&server.host),
                text(server.port),
                text(database),
                text(&server.name),
                text(role),
                text(proxy.config.pool.max_server_connections),
                text(&mode),
                text(connections.get(&server.name).copied().unwrap_or(0)),
                text(paused),
                text(0),
            ]);
        }
    }
    rows.push(vec![
        text(super::ADMIN_DATABASE),
        None,
        text(proxy.config.proxy.listen.port()),
        text(super::ADMIN_DATABASE),
        None,
        text("console"),
        text(0),
        text("statement"),
        text(0),
        text(0),
        text(0),
    ]);
    rows
}

fn pool_mode(proxy: &Proxy) -> String {
    format!("{:?}", proxy.config.pool.mode).to_lowercase()
}

fn stats(proxy: &Proxy) -> Vec<Row> {
    let s = &proxy.stats;
    let positions = proxy.monitor.positions();
    let mut rows = vec![
        vec![text("clients_connected"), text(s.clients.len())],
        vec![
            text("clients_total"),
            text(s.clients_total.load(Ordering::Relaxed)),
        ],
        vec![text("primary_lsn"), text(positions.primary_lsn)],
        vec![text("read_waits"), text(s.waits.load(Ordering::Relaxed))],
        vec![
            text("read_waits_gave_up"),
            text(s.waits_gave_up.load(Ordering::Relaxed)),
        ],
        vec![
            text("read_retries"),
            text(s.retries.load(Ordering::Relaxed)),
        ],
    ];
    let mut by_server: Vec<_> = s
        .servers
        .iter()
        .map(|e| {
            vec![
                text(format!("units_to_{}", e.key())),
                text(e.value().units.load(Ordering::Relaxed)),
            ]
        })
        .collect();
    by_server.sort();
    rows.extend(by_server);
    let mut by_reason: Vec<_> = crate::router::Reason::ALL
        .iter()
        .zip(&s.primary_by_reason)
        .map(|(reason, count)| (reason, count.load(Ordering::Relaxed)))
        .filter(|(_, count)| *count > 0)
        .map(|(reason, count)| {
            vec![
                text(format!("primary_because_{}", reason.as_str())),
                text(count),
            ]
        })
        .collect();
    by_reason.sort();
    rows.extend(by_reason);
    rows
}

fn config(proxy: &Proxy) -> Vec<Row> {
    use crate::config::{AuthMethod, CausalScope};
    let c = &proxy.config;
    let mut rows = vec![
        ("proxy.listen", c.proxy.listen.to_string()),
        (
            "proxy.max_client_connections",
            c.proxy.max_client_connections.to_string(),
        ),
        (
            "auth.method",
            match c.auth.method {
                AuthMethod::ScramSha256 => "scram-sha-256",
                AuthMethod::Md5 => "md5",
                AuthMethod::Trust => "trust",
            }
            .to_string(),
        ),
        ("pool.mode", pool_mode(proxy)),
        (
            "pool.max_server_connections",
            c.pool.max_server_connections.to_string(),
        ),
        (
            "pool.max_prepared_statements",
            c.pool.max_prepared_statements.to_string(),
        ),
        (
            "primary",
            format!("{} {}:{}", c.primary.name, c.primary.host, c.primary.port),
        ),
        (
            "routing.on_stale",
            format!("{:?}", c.routing.on_stale).to_lowercase(),
        ),
        ("routing.max_wait_ms", c.routing.max_wait_ms.to_string()),
        (
            "routing.poll_interval_ms",
            c.routing.poll_interval_ms.to_string(),
        ),
        ("routing.max_lag_bytes", c.routing.max_lag_bytes.to_string()),
        ("routing.max_lag_ms", c.routing.max_lag_ms.to_string()),
        (
            "routing.causal_scope",
            match c.routing.causal_scope {
                CausalScope::Session => "session",
                CausalScope::ClientId => "client_id",
                CausalScope::User => "user",
                CausalScope::Global => "global",
            }
            .to_string(),
        ),
        (
            "routing.optimistic_transactions",
            c.routing.optimistic_transactions.to_string(),
        ),
        (
            "routing.client_lsn_ttl_ms",
            c.routing.client_lsn_ttl_ms.to_string(),
        ),
        ("metrics.listen", c.metrics.listen.to_string()),
    ];
    for r in &c.replicas {
        rows.push(("replica", format!("{} {}:{}", r.name, r.host, r.port)));
    }
    rows.into_iter()
        .map(|(k, v)| vec![text(k), Some(v)])
        .collect()
}
