//! The proxy's configuration: parsed from TOML, checked, and turned into plain
//! values the rest of the proxy reads.
//!
//! Parsing is strict (`deny_unknown_fields`): a misspelt key is an error that
//! names the key and its line, never a silently ignored setting. Checks that
//! span several keys (a user with no usable password, two servers with one
//! name) run after parsing and name the key path they object to.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

mod load;
pub use load::ConfigError;

/// Everything `proxy.toml` can say. Each section has defaults so that an
/// empty file describes the local demo cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub pool: PoolSection,
    #[serde(default = "default_primary")]
    pub primary: ServerSection,
    #[serde(default = "default_replicas")]
    pub replicas: Vec<ServerSection>,
    #[serde(default = "default_users")]
    pub users: Vec<UserSection>,
    #[serde(default)]
    pub routing: RoutingSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub tls: crate::tls::TlsSection,
}

/// The HTTP endpoint for Prometheus and health checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    /// Serves the live dashboard at `/`, and `/metrics`, `/healthz` and
    /// `/readyz`.
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
        }
    }
}

/// Which connections share one causal LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CausalScope {
    Session,
    ClientId,
    User,
    /// Every read waits for every commit made through this proxy before it
    /// began, as a single Postgres server behaves across connections.
    Global,
}

/// How reads find a replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// When no replica has replayed a session's last write: "wait" (up to
    /// `max_wait_ms`, then the primary), "primary", or "error".
    pub on_stale: crate::router::OnStale,
    pub max_wait_ms: u64,
    /// How often each replica's replay position is read.
    pub poll_interval_ms: u64,
    /// A session that never wrote reads from replicas at most this far behind.
    pub max_lag_bytes: u64,
    pub max_lag_ms: u64,
    /// Functions that write, besides the ones causeway knows (nextval...).
    pub extra_write_functions: Vec<String>,
    /// How often each database's function catalog (which user functions
    /// may write, which may change settings) is read again, behind the next
    /// unit that ends work on the primary; 0: only at a database's first
    /// client, after function DDL through the proxy, and at RELOAD.
    pub function_catalog_refresh_ms: u64,
    /// Distinct statement texts whose classification is cached.
    pub statement_cache_size: usize,
    /// Who shares a causal LSN: "session" (each connection alone),
    /// "client_id" (connections with the same `causeway.client_id`; a
    /// connection without one is alone), "user" (the login role), or
    /// "global" (every connection: each read sees every commit made through
    /// this proxy before it began).
    pub causal_scope: CausalScope,
    /// Plain `BEGIN` blocks start on a fresh replica; at their first write
    /// they move to the primary, replaying what they read there and
    /// checking the answers match (else 40001). Off: blocks run on the
    /// primary.
    pub optimistic_transactions: bool,
    /// Most units an optimistic block runs on a replica before it moves to
    /// the primary anyway (reason `optimistic_overflow`).
    pub optimistic_max_statements: usize,
    /// Most bytes of client messages an optimistic block keeps for replay.
    pub optimistic_max_bytes: usize,
    /// A shared client's causal LSN is forgotten after this long without writes.
    pub client_lsn_ttl_ms: u64,
    /// Most clients whose causal LSN is remembered at once.
    pub client_lsn_max_entries: usize,
    /// A Redis URL (`redis://host:port/db`) where every causeway instance
    /// records and reads causal LSNs, so a client's write through one
    /// instance is read through another. Default: none (in-process only).
    pub causal_store: Option<String>,
    /// How long a call to the causal store may take before it counts as
    /// failed (reads then go to the primary).
    pub causal_store_timeout_ms: u64,
    /// Login for the replica monitor; defaults to the first user's server login.
    pub monitor_user: Option<String>,
    pub monitor_password: Option<String>,
    pub monitor_database: String,
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            on_stale: crate::router::OnStale::Wait,
            max_wait_ms: 50,
            poll_interval_ms: 10,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag_ms: 1000,
            extra_write_functions: Vec::new(),
            function_catalog_refresh_ms: 60_000,
            statement_cache_size: 10_000,
            causal_scope: CausalScope::Global,
            optimistic_transactions: false,
            optimistic_max_statements: 32,
            optimistic_max_bytes: 256 * 1024,
            client_lsn_ttl_ms: 300_000,
            client_lsn_max_entries: 100_000,
            causal_store: None,
            causal_store_timeout_ms: 250,
            monitor_user: None,
            monitor_password: None,
            monitor_database: "postgres".to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Most client connections served at once; more get `53300`.
    pub max_client_connections: usize,
    /// How long a client may take to finish startup and authentication.
    pub client_login_timeout_ms: u64,
    /// Threads that serve clients. 1 (the default): one event loop, like
    /// PgBouncer, cheapest per message and best where Postgres shares the
    /// machine; more: a work-stealing pool for many cores; 0: one per core.
    pub worker_threads: usize,
    /// How long SIGTERM waits for clients to finish before closing them.
    pub shutdown_timeout_ms: u64,
    /// Most clients of one login role at once (0: no limit); more get
    /// Postgres's `53300 too many connections for role`.
    pub max_client_connections_per_user: usize,
    /// Most clients of one database at once (0: no limit).
    pub max_client_connections_per_database: usize,
    /// A client idle inside an open transaction for this long is closed
    /// (`57P05`, as Postgres's `idle_in_transaction_session_timeout`), so it
    /// cannot hold a server connection forever. 0: never.
    pub client_idle_in_transaction_timeout_ms: u64,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            max_client_connections: 1000,
            client_login_timeout_ms: 60_000,
            worker_threads: 1,
            shutdown_timeout_ms: 30_000,
            max_client_connections_per_user: 0,
            max_client_connections_per_database: 0,
            client_idle_in_transaction_timeout_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// How clients prove who they are, unless a user says otherwise.
    pub method: AuthMethod,
    /// Users who may connect to the admin console (database `causeway`).
    pub admin_users: Vec<String>,
    /// Looks up users not in `[[users]]` on the servers: a query with one
    /// parameter, `$1` (the user name), returning the name and the secret
    /// as `pg_authid` stores it (SCRAM verifier or md5 hash).
    pub auth_query: Option<String>,
    /// The `[[users]]` entry whose server login runs `auth_query`.
    pub auth_user: Option<String>,
    /// The database `auth_query` runs in; default the client's.
    pub auth_dbname: Option<String>,
    /// How long a looked-up secret (or the absence of one) is kept.
    pub auth_query_cache_ttl_ms: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            method: AuthMethod::ScramSha256,
            admin_users: Vec::new(),
            auth_query: None,
            auth_user: None,
            auth_dbname: None,
            auth_query_cache_ttl_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is lent for one transaction (or one statement
    /// outside a transaction), then serves other clients.
    Transaction,
    /// A server connection is the client's from login to logout (one per
    /// server the client uses).
    Session,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    pub mode: PoolMode,
    /// Most connections the proxy opens to any one server, per database and user.
    pub max_server_connections: usize,
    /// How long a unit waits for a free server connection before an error
    /// (PgBouncer's `query_wait_timeout`; the old name `checkout_timeout_ms`
    /// is still read).
    #[serde(alias = "checkout_timeout_ms")]
    pub query_wait_timeout_ms: u64,
    /// How long opening a server connection (TCP + login) may take.
    pub connect_timeout_ms: u64,
    /// Run on the server connections a client still holds when it leaves
    /// (session pooling, or a pinned session), before they go back to the
    /// pool. In transaction pooling a connection changes hands between
    /// transactions without it: the session's settings and prepared
    /// statements are replayed on whatever connection it gets.
    pub reset_query: String,
    /// Server connections idle this long are closed (0: never).
    pub server_idle_timeout_ms: u64,
    /// Most prepared statements kept on one server connection, whichever
    /// clients made them (PgBouncer's `max_prepared_statements`); past it
    /// the least recently used are closed (0: no limit).
    pub max_prepared_statements: usize,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            mode: PoolMode::Transaction,
            max_server_connections: 40,
            query_wait_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            reset_query: "DISCARD ALL".to_string(),
            server_idle_timeout_ms: 600_000,
            max_prepared_statements: 200,
        }
    }
}

/// One Postgres server: the primary or a replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub name: String,
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    /// TLS towards this server, as libpq's `sslmode`; default
    /// `[tls] server_sslmode`, else `"disable"`.
    pub sslmode: Option<crate::tls::SslMode>,
    /// CA certificates (PEM) its certificate must chain to; default
    /// `[tls] server_sslrootcert`.
    pub sslrootcert: Option<std::path::PathBuf>,
}

impl ServerSection {
    /// How the proxy reaches this server over TLS (`None`: plain text).
    /// Errors name the key at fault, under `key`.
    pub fn tls(
        &self,
        defaults: &crate::tls::TlsSection,
        key: &str,
    ) -> Result<Option<std::sync::Arc<crate::tls::ServerTls>>, (String, String)> {
        let mode = self
            .sslmode
            .or(defaults.server_sslmode)
            .unwrap_or(crate::tls::SslMode::Disable);
        let rootcert = self
            .sslrootcert
            .as_deref()
            .or(defaults.server_sslrootcert.as_deref());
        let rootcert_key = match (&self.sslrootcert, &defaults.server_sslrootcert) {
            (None, Some(_)) => "tls.server_sslrootcert".to_string(),
            _ => format!("{key}.sslrootcert"),
        };
        crate::tls::ServerTls::new(mode, rootcert, &rootcert_key)
    }
}

/// A user the proxy lets in, and how it logs in to the servers for them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    pub name: String,
    /// Plain-text password: lets the proxy check SCRAM and md5 logins and log
    /// in to servers as this user.
    pub password: Option<String>,
    /// A stored SCRAM verifier (`SCRAM-SHA-256$iter:salt$stored:server`), as in
    /// `pg_authid`, for checking client logins without a plain-text password.
    pub scram_verifier: Option<String>,
    /// `md5` followed by md5(password || username), as in `pg_authid`.
    pub md5_hash: Option<String>,
    /// Overrides `[auth] method` for this user.
    pub auth: Option<AuthMethod>,
    /// Role the proxy logs in to servers as; defaults to `name`.
    pub server_user: Option<String>,
    /// Password for `server_user`; defaults to `password`.
    pub server_password: Option<String>,
}

fn default_host() -> String {
    "127.0.0.1".to_string()
}

fn default_primary() -> ServerSection {
    ServerSection {
        name: "primary".to_string(),
        host: default_host(),
        port: 5433,
        sslmode: None,
        sslrootcert: None,
    }
}

fn default_replicas() -> Vec<ServerSection> {
    [("replica0", 5434), ("replica1", 5435)]
        .into_iter()
        .map(|(name, port)| ServerSection {
            name: name.to_string(),
            host: default_host(),
            port,
            sslmode: None,
            sslrootcert: None,
        })
        .collect()
}

fn default_users() -> Vec<UserSection> {
    vec![UserSection {
        name: "app".to_string(),
        password: Some("app".to_string()),
        scram_verifier: None,
        md5_hash: None,
        auth: None,
        server_user: None,
        server_password: None,
    }]
}

impl PoolSection {
    pub fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.query_wait_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

impl UserSection {
    /// The role and password the proxy logs in to servers with.
    pub fn server_login(&self) -> (&str, Option<&str>) {
        (
            self.server_user.as_deref().unwrap_or(&self.name),
            self.server_password.as_deref().or(self.password.as_deref()),
        )
    }
}
