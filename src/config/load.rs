//! Loading a configuration: the file read and parsed, the checks that span
//! several keys, and errors that name the key at fault and its line.

use std::collections::HashSet;
use std::path::Path;

use super::*;

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
