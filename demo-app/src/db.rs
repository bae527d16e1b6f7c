//! `Db`: every connection the demo app opens, all of them to causeway.
//!
//! # Read-your-writes comes from causeway, not from the app
//! The app keeps no LSNs of its own. causeway tracks the commit LSN of each
//! client *session* and sends a session's reads only to a server that has
//! replayed its last write. So what the app must get right is which session
//! a user's queries run on. Two ways, picked by [`Causality`]:
//!
//! - [`Causality::SessionPerUser`] (today's default): each user gets a pool
//!   of exactly one connection. A user's `POST /rides` and the `GET` that
//!   follows it may be different HTTP requests, but they run on the same
//!   causeway session, so the read sees the write. The price: one user's
//!   requests take turns on that connection (between transactions, not for a
//!   whole request), and one open connection per active user. If that
//!   connection breaks, its replacement starts with no causal LSN; the proxy
//!   then bounds staleness only by its lag limits.
//! - [`Causality::ClientId`]: each user gets a small pool whose connections
//!   all log in with `options=-c causeway.client_id=<email>`, so causeway
//!   shares one causal LSN among them (issue "Read-your-writes across
//!   connections"). No turn-taking, and a broken connection loses nothing.
//!   Switch to it once causeway supports `causeway.client_id`: it is the
//!   default in [`Causality::default`], one line.
//!
//! Work that is not on behalf of a user request flow (authentication lookups,
//! background jobs) uses [`Db::shared`], an ordinary pool.
//!
//! The per-user map grows with the number of distinct users that got past
//! authentication, which is bounded by the `users` table.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::error::{Error, Result};

/// Where the app connects when `DATABASE_URL` is not set: causeway's default port.
pub const DEFAULT_DATABASE_URL: &str = "postgres://app:app@127.0.0.1:6432/app";

/// How long a request waits for a connection before giving up.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Connections in [`Db::shared`].
const SHARED_POOL_SIZE: usize = 8;
/// Connections per user with [`Causality::ClientId`].
const CLIENT_ID_POOL_SIZE: usize = 4;

/// How a user's connections share causality through causeway (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    SessionPerUser,
    ClientId,
}

impl Default for Causality {
    /// The one line to change once causeway supports `causeway.client_id`.
    fn default() -> Self {
        Causality::SessionPerUser
    }
}

impl FromStr for Causality {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "session-per-user" => Ok(Causality::SessionPerUser),
            "client-id" => Ok(Causality::ClientId),
            other => Err(format!(
                "unknown causality {other:?}: expected session-per-user or client-id"
            )),
        }
    }
}

pub struct Db {
    config: tokio_postgres::Config,
    causality: Causality,
    shared: Pool,
    users: Mutex<HashMap<String, Pool>>,
}

impl Db {
    /// Prepares pools for `url`; nothing connects until first use.
    pub fn new(url: &str, causality: Causality) -> Result<Db> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Other(format!("bad DATABASE_URL: {e}")))?;
        config.application_name("demo-app");
        config.connect_timeout(POOL_WAIT);
        let shared = pool(config.clone(), SHARED_POOL_SIZE)?;
        Ok(Db {
            config,
            causality,
            shared,
            users: Mutex::new(HashMap::new()),
        })
    }

    pub fn causality(&self) -> Causality {
        self.causality
    }

    /// The pool for work that is no user's request flow.
    pub fn shared(&self) -> &Pool {
        &self.shared
    }

    /// The pool whose connections carry `email`'s causality (module docs).
    pub fn for_user(&self, email: &str) -> Result<Pool> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = users.get(email) {
            return Ok(pool.clone());
        }
        let created = match self.causality {
            Causality::SessionPerUser => pool(self.config.clone(), 1)?,
            Causality::ClientId => {
                let mut config = self.config.clone();
                config.options(client_id_option(email));
                pool(config, CLIENT_ID_POOL_SIZE)?
            }
        };
        users.insert(email.to_string(), created.clone());
        Ok(created)
    }
}

fn pool(config: tokio_postgres::Config, size: usize) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| Error::Other(format!("cannot build a connection pool: {e}")))
}

/// `-c causeway.client_id=<id>`, with spaces and backslashes escaped the way
/// Postgres splits the `options` startup parameter.
pub fn client_id_option(id: &str) -> String {
    let mut escaped = String::with_capacity(id.len());
    for c in id.chars() {
        if c == '\\' || c.is_whitespace() {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("-c causeway.client_id={escaped}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_escaped() {
        assert_eq!(
            client_id_option("a@example.com"),
            "-c causeway.client_id=a@example.com"
        );
        assert_eq!(
            client_id_option("a b\\c"),
            "-c causeway.client_id=a\\ b\\\\c"
        );
    }

    #[test]
    fn causality_parses() {
        assert_eq!("client-id".parse(), Ok(Causality::ClientId));
        assert_eq!("session-per-user".parse(), Ok(Causality::SessionPerUser));
        assert!("other".parse::<Causality>().is_err());
    }
}
