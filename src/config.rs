//! The proxy's configuration: parsed from TOML, checked, and turned into plain
//! values the rest of the proxy reads.
//!
//! Parsing is strict (`deny_unknown_fields`): a misspelt key is an error that
//! names the key and its line, never a silently ignored setting. Checks that
//! span several keys (a user with no usable password, two servers with one
//! name) run after parsing and name the key path they object to.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

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

/// A configuration that could not be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: key `{key}`{line}: {message}")]
    Invalid {
        path: String,
        key: String,
        line: String,
        message: String,
    },
}

impl Config {
    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::parse(&text, &shown)
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        // The demo cluster's replicas and its app/app user are the defaults
        // of a file that says nothing of its servers. A file that names its
        // primary gets only the replicas and users it lists: a production
        // config that leaves them out must not send reads to whatever
        // listens on 5434, nor let app/app in.
        if let Ok(table) = toml::from_str::<toml::Table>(text) {
            if table.contains_key("primary") {
                if !table.contains_key("replicas") {
                    config.replicas.clear();
                }
                if !table.contains_key("users") {
                    config.users.clear();
                }
            }
        }
        config
            .check()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: origin.to_string(),
                line: line_of_key(text, &key)
                    .map(|n| format!(" (line {n})"))
                    .unwrap_or_default(),
                key,
                message,
            })?;
        Ok(config)
    }

    /// Cross-key checks serde cannot express. Returns the key path at fault.
    fn check(&self) -> Result<(), (String, String)> {
        // The certificate and key must load now: a config that names
        // unreadable files is refused at start and by RELOAD.
        self.tls.server_config()?;
        let positive = [
            (
                "proxy.max_client_connections",
                self.proxy.max_client_connections as u64,
            ),
            (
                "proxy.client_login_timeout_ms",
                self.proxy.client_login_timeout_ms,
            ),
            (
                "pool.max_server_connections",
                self.pool.max_server_connections as u64,
            ),
            (
                "pool.query_wait_timeout_ms",
                self.pool.query_wait_timeout_ms,
            ),
            ("pool.connect_timeout_ms", self.pool.connect_timeout_ms),
            ("routing.poll_interval_ms", self.routing.poll_interval_ms),
            (
                "routing.statement_cache_size",
                self.routing.statement_cache_size as u64,
            ),
            (
                "routing.optimistic_max_statements",
                self.routing.optimistic_max_statements as u64,
            ),
            (
                "routing.optimistic_max_bytes",
                self.routing.optimistic_max_bytes as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key.to_string(), "must be greater than 0".to_string()));
            }
        }
        let mut names = HashSet::new();
        let servers = std::iter::once(("primary".to_string(), &self.primary)).chain(
            self.replicas
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("replicas[{i}]"), r)),
        );
        for (key, server) in servers {
            if server.name.is_empty() || server.name.contains(char::is_whitespace) {
                return Err((
                    format!("{key}.name"),
                    "must be a non-empty name without spaces".to_string(),
                ));
            }
            if !names.insert(server.name.clone()) {
                return Err((
                    format!("{key}.name"),
                    format!("server name '{}' is used twice", server.name),
                ));
            }
            if server.port == 0 {
                return Err((
                    format!("{key}.port"),
                    "must be a port number 1-65535".to_string(),
                ));
            }
            // Root certificates must load now, like the client certificate.
            server.tls(&self.tls, &key)?;
        }
        if let Some(url) = &self.routing.causal_store {
            redis::Client::open(url.as_str()).map_err(|e| {
                (
                    "routing.causal_store".to_string(),
                    format!("is not a Redis URL redis:// rediss:// or redis+unix:// ({e})"),
                )
            })?;
        }
        if let Some(query) = &self.auth.auth_query {
            if !query.contains("$1") {
                return Err((
                    "auth.auth_query".to_string(),
                    "must take the user name as $1".to_string(),
                ));
            }
            let runner = self.auth.auth_user.as_ref().ok_or_else(|| {
                (
                    "auth.auth_user".to_string(),
                    "is required with auth.auth_query: the [[users]] entry that runs it"
                        .to_string(),
                )
            })?;
            let listed = self.users.iter().find(|u| &u.name == runner);
            if listed.is_none_or(|u| u.server_login().1.is_none()) {
                return Err((
                    "auth.auth_user".to_string(),
                    format!("'{runner}' must be a [[users]] entry with a password for the servers"),
                ));
            }
        }
        if self.users.is_empty() {
            return Err((
                "users".to_string(),
                "no [[users]] entry: no client could log in (the demo's app/app is the default only of a file without [primary])".to_string(),
            ));
        }
        let mut users = HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if user.name.is_empty() {
                return Err((format!("{key}.name"), "must not be empty".to_string()));
            }
            if !users.insert(user.name.clone()) {
                return Err((
                    format!("{key}.name"),
                    format!("user '{}' is listed twice", user.name),
                ));
            }
            let method = user.auth.unwrap_or(self.auth.method);
            match method {
                AuthMethod::ScramSha256 => {
                    if user.password.is_none() && user.scram_verifier.is_none() {
                        return Err((
                            format!("{key}.password"),
                            "scram-sha-256 needs `password` or `scram_verifier`".to_string(),
                        ));
                    }
                }
                AuthMethod::Md5 => {
                    if user.password.is_none() && user.md5_hash.is_none() {
                        return Err((
                            format!("{key}.password"),
                            "md5 needs `password` or `md5_hash`".to_string(),
                        ));
                    }
                }
                AuthMethod::Trust => {}
            }
            if let Some(verifier) = &user.scram_verifier {
                if crate::frontend::auth::ScramSecret::parse(verifier).is_none() {
                    return Err((
                        format!("{key}.scram_verifier"),
                        "expected SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>"
                            .to_string(),
                    ));
                }
            }
            if let Some(hash) = &user.md5_hash {
                let ok = hash.len() == 35
                    && hash.starts_with("md5")
                    && hash[3..].bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err((
                        format!("{key}.md5_hash"),
                        "expected 'md5' followed by 32 hex digits".to_string(),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn user(&self, name: &str) -> Option<&UserSection> {
        self.users.iter().find(|u| u.name == name)
    }
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

/// Best-effort line number of the last part of a key path such as
/// `users[1].password`: the n-th occurrence of the table header, then the key
/// after it. Good enough to point a person at the right line.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut parts = key.split('.');
    let table = parts.next()?;
    let field = parts.next();
    let (table_name, index) = match table.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()?),
        None => (table, 0),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut seen = 0;
    let mut start = None;
    for (n, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t == format!("[{table_name}]") || t == format!("[[{table_name}]]") {
            if seen == index {
                start = Some(n);
                break;
            }
            seen += 1;
        }
    }
    let start = start?;
    let Some(field) = field else {
        return Some(start + 1);
    };
    for (n, line) in lines.iter().enumerate().skip(start + 1) {
        let t = line.trim();
        if t.starts_with('[') {
            break;
        }
        if let Some((k, _)) = t.split_once('=') {
            if k.trim() == field {
                return Some(n + 1);
            }
        }
    }
    Some(start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_local_cluster() {
        let c = Config::parse("", "t").expect("defaults are valid");
        assert_eq!(c.proxy.listen.port(), 6432);
        assert_eq!(c.primary.port, 5433);
        assert_eq!(c.replicas.len(), 2);
        assert_eq!(c.replicas[1].name, "replica1");
        assert_eq!(
            c.user("app").and_then(|u| u.password.as_deref()),
            Some("app")
        );
    }

    #[test]
    fn a_file_naming_its_primary_gets_only_the_replicas_and_users_it_lists() {
        let primary = "[primary]\nname = \"db\"\nport = 6000\n";
        let users = "[[users]]\nname = \"shop\"\npassword = \"s\"\n";
        let c = Config::parse(&format!("{primary}{users}"), "t").expect("valid");
        assert!(c.replicas.is_empty(), "{:?}", c.replicas);
        assert!(c.user("app").is_none());
        assert!(c.user("shop").is_some());
        let err = Config::parse(primary, "p.toml")
            .expect_err("nobody could log in")
            .to_string();
        assert!(err.contains("key `users`"), "{err}");
        let replica = "[[replicas]]\nname = \"r\"\nport = 6001\n";
        let c = Config::parse(&format!("{primary}{replica}{users}"), "t").expect("valid");
        assert_eq!(c.replicas.len(), 1);
        // Without [primary], the demo cluster as before.
        let c = Config::parse("[pool]\nmax_server_connections = 5\n", "t").expect("valid");
        assert_eq!(c.replicas.len(), 2);
        assert!(c.user("app").is_some());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::parse("[proxy]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n", "p.toml")
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::parse("[pool]\nmode = \"statement\"\n", "p.toml")
            .expect_err("bad mode")
            .to_string();
        assert!(err.contains("statement"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn user_without_password_names_the_key_and_line() {
        let text = "[[users]]\nname = \"a\"\npassword = \"x\"\n\n[[users]]\nname = \"b\"\n";
        let err = Config::parse(text, "p.toml")
            .expect_err("no password")
            .to_string();
        assert!(err.contains("users[1].password"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn duplicate_server_name_is_refused() {
        let text = "[primary]\nname = \"a\"\nport = 1\n[[replicas]]\nname = \"a\"\nport = 2\n";
        let err = Config::parse(text, "p.toml").expect_err("dup").to_string();
        assert!(err.contains("replicas[0].name"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn zero_pool_size_is_refused() {
        let err = Config::parse("[pool]\nmax_server_connections = 0\n", "p.toml")
            .expect_err("zero")
            .to_string();
        assert!(err.contains("pool.max_server_connections"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn trust_user_needs_no_password() {
        let text = "[[users]]\nname = \"t\"\nauth = \"trust\"\n";
        let c = Config::parse(text, "p.toml").expect("trust is fine");
        assert_eq!(c.users[0].auth, Some(AuthMethod::Trust));
    }

    #[test]
    fn server_tls_settings_name_their_key() {
        let text = "[[replicas]]\nname = \"r\"\nport = 2\nsslmode = \"verify-full\"\n";
        let err = Config::parse(text, "p.toml")
            .expect_err("no root")
            .to_string();
        assert!(err.contains("replicas[0].sslrootcert"), "{err}");
        let text =
            "[tls]\nserver_sslmode = \"verify-ca\"\nserver_sslrootcert = \"/nonexistent/ca.pem\"\n";
        let err = Config::parse(text, "p.toml")
            .expect_err("no file")
            .to_string();
        assert!(err.contains("tls.server_sslrootcert"), "{err}");
        let err = Config::parse(
            "[primary]\nname = \"p\"\nport = 1\nsslmode = \"sometimes\"\n",
            "p.toml",
        )
        .expect_err("bad mode")
        .to_string();
        assert!(err.contains("sslmode"), "{err}");
        let c = Config::parse("[tls]\nserver_sslmode = \"require\"\n", "p.toml").expect("require");
        let tls = c.primary.tls(&c.tls, "primary").expect("ok").expect("on");
        assert_eq!(tls.mode, crate::tls::SslMode::Require);
    }

    #[test]
    fn auth_query_needs_a_runner_with_a_password() {
        let err = Config::parse("[auth]\nauth_query = \"SELECT 1\"\n", "p.toml")
            .expect_err("no $1")
            .to_string();
        assert!(err.contains("auth.auth_query"), "{err}");
        let err = Config::parse("[auth]\nauth_query = \"SELECT f($1)\"\n", "p.toml")
            .expect_err("no runner")
            .to_string();
        assert!(err.contains("auth.auth_user"), "{err}");
        let text = "[auth]\nauth_query = \"SELECT f($1)\"\nauth_user = \"nobody\"\n";
        let err = Config::parse(text, "p.toml")
            .expect_err("unlisted")
            .to_string();
        assert!(err.contains("auth.auth_user"), "{err}");
        let text = "[auth]\nauth_query = \"SELECT f($1)\"\nauth_user = \"app\"\n";
        Config::parse(text, "p.toml").expect("app has a password");
    }
}
