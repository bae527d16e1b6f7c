//! `Db`: every connection the demo app opens, all of them to causeway.
//!
//! # Read-your-writes comes from causeway, not from the app
//! The app keeps no LSNs of its own. causeway remembers the commit LSN of
//! each *client*, named by `causeway.client_id`, and sends a client's reads
//! only to a server that has replayed its last write. So all the app must
//! get right is to say, on each connection it takes from the pool, on whose
//! behalf it runs. [`Causality`] picks how:
//!
//! - [`Causality::ClientId`] (the default): one pool, shared by every user,
//!   as a real app has. Each checkout for a user runs
//!   `SET causeway.client_id = '<email>'` first ([`UserDb::get`]); causeway
//!   answers it itself (no server round trip), and from then on the
//!   connection's reads wait for, and its writes advance, that user's causal
//!   LSN. A user's `POST /rides` and the `GET` after it may run on different
//!   connections, even in different processes (the completer finishing a
//!   user's ride), and the read still sees the write.
//!
//!   Why not a pool per user with the startup option
//!   `-c causeway.client_id=<email>`? It works, but the number of open
//!   connections then grows with the number of active users, idle ones
//!   included; one shared pool stays at its size whatever the traffic. The
//!   `SET` costs one round trip to causeway per checkout, and no server.
//! - [`Causality::SessionPerUser`]: each user gets a pool of exactly one
//!   connection, so all their statements share one causeway session (which
//!   needs no `causeway.client_id` at all). Requests of one user take turns
//!   on that connection, and a replaced connection starts with no causal LSN.
//! - [`Causality::None`]: the shared pool without `SET`. Each connection is
//!   on its own: a read on another connection than the write may be stale.
//!   Only there to show what the other two prevent.
//!
//! causeway also remembers each connection's own last write, so a pooled
//! connection that carried one user's write reads at least that fresh for
//! the next user too: never staler, at worst from the primary where a
//! replica would have done.
//!
//! A pooled connection keeps the id its last checkout set. Work that is no
//! user's (the jobs, the log, CDC) runs in processes that never set one, on
//! [`Db::shared`].

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Transaction,
};
use tokio_postgres::{IsolationLevel, NoTls};

use crate::error::{Error, Result};

/// Where the app connects when `DATABASE_URL` is not set: causeway's default port.
pub const DEFAULT_DATABASE_URL: &str = "postgres://app:app@127.0.0.1:6432/app";

/// How long a request waits for a connection before giving up.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Connections in the shared pool.
pub const SHARED_POOL_SIZE: usize = 8;

/// How a user's connections share causality through causeway (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Causality {
    #[default]
    ClientId,
    SessionPerUser,
    None,
}

impl FromStr for Causality {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "client-id" => Ok(Causality::ClientId),
            "session-per-user" => Ok(Causality::SessionPerUser),
            "none" => Ok(Causality::None),
            other => Err(format!(
                "unknown causality {other:?}: expected client-id, session-per-user or none"
            )),
        }
    }
}

pub struct Db {
    config: tokio_postgres::Config,
    causality: Causality,
    shared: Pool,
    /// Only with [`Causality::SessionPerUser`]: each user's one-connection pool.
    sessions: Mutex<HashMap<String, Pool>>,
}

impl Db {
    /// Prepares the pool for `url`; nothing connects until first use.
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
            sessions: Mutex::new(HashMap::new()),
        })
    }

    pub fn causality(&self) -> Causality {
        self.causality
    }

    /// The shared pool, for work on nobody's behalf.
    pub fn shared(&self) -> &Pool {
        &self.shared
    }

    /// Connections on behalf of `email` (module docs).
    pub fn for_user(&self, email: &str) -> Result<UserDb> {
        Ok(match self.causality {
            Causality::ClientId => UserDb {
                pool: self.shared.clone(),
                set_client_id: Some(set_client_id(email)),
            },
            Causality::None => UserDb {
                pool: self.shared.clone(),
                set_client_id: None,
            },
            Causality::SessionPerUser => {
                let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                let pool = match sessions.get(email) {
                    Some(pool) => pool.clone(),
                    None => {
                        let created = pool(self.config.clone(), 1)?;
                        sessions.insert(email.to_string(), created.clone());
                        created
                    }
                };
                UserDb {
                    pool,
                    set_client_id: None,
                }
            }
        })
    }
}

/// One user's view of the database: every connection it hands out runs on
/// that user's behalf.
#[derive(Clone)]
pub struct UserDb {
    pool: Pool,
    set_client_id: Option<String>,
}

impl UserDb {
    /// A connection from the pool, named for the user first when the
    /// causality asks for it.
    pub async fn get(&self) -> Result<Object> {
        let conn = self.pool.get().await?;
        if let Some(statement) = &self.set_client_id {
            conn.batch_execute(statement).await?;
        }
        Ok(conn)
    }

    /// The pool underneath (tests hold its connections to force new ones).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// A READ COMMITTED transaction (Postgres' default, spelled out).
///
/// Spelled out because causeway holds back a bare `START TRANSACTION` until
/// the block's first statement shows where it must run, and today, on a
/// connection whose previous transaction just committed, it can open the
/// block on a replica, where the first write then fails with 25006
/// (reported; `START TRANSACTION ISOLATION LEVEL ...` is routed to the
/// primary at once and is not affected).
pub async fn read_committed(conn: &mut Object) -> Result<Transaction<'_>> {
    Ok(conn
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?)
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

/// `SET causeway.client_id = '<id>'`, the id quoted as a SQL string literal.
pub fn set_client_id(id: &str) -> String {
    format!("SET causeway.client_id = '{}'", id.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_quoted() {
        assert_eq!(
            set_client_id("a@example.com"),
            "SET causeway.client_id = 'a@example.com'"
        );
        assert_eq!(
            set_client_id("o'brien@example.com"),
            "SET causeway.client_id = 'o''brien@example.com'"
        );
    }

    #[test]
    fn causality_parses() {
        assert_eq!("client-id".parse(), Ok(Causality::ClientId));
        assert_eq!("session-per-user".parse(), Ok(Causality::SessionPerUser));
        assert_eq!("none".parse(), Ok(Causality::None));
        assert_eq!(Causality::default(), Causality::ClientId);
        assert!("other".parse::<Causality>().is_err());
    }
}
