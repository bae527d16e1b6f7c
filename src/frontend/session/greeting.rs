//! Before a client's session starts: the limits on clients per role and
//! per database, and the server connection its greeting comes from, which
//! is the primary's, or a replica's while there is no primary, so that
//! clients can still log in and read.

use std::sync::Arc;

use super::super::{LoginError, Ready};
use crate::backend::pool::{Lease, Pool};
use crate::backend::{BackendError, Login};
use crate::router::Server;
use crate::server::Proxy;

/// Postgres's answers for a role or database over its connection limit,
/// for `max_client_connections_per_user` / `_per_database`.
pub(super) fn over_client_limits(proxy: &Proxy, ready: &Ready) -> Option<LoginError> {
    let limits = &proxy.config.proxy;
    let user = ready.params.user().unwrap_or_default();
    let database = &ready.login.database;
    let fatal = |message: String| LoginError::Fatal {
        code: "53300".into(),
        message,
    };
    // The counts include this client, already registered.
    let per_user = limits.max_client_connections_per_user;
    if per_user > 0 && proxy.stats.count_clients(|c| c.user == user) > per_user {
        return Some(fatal(format!("too many connections for role \"{user}\"")));
    }
    let per_database = limits.max_client_connections_per_database;
    if per_database > 0 && proxy.stats.count_clients(|c| &c.database == database) > per_database {
        return Some(fatal(format!(
            "too many connections for database \"{database}\""
        )));
    }
    None
}

/// The connection a new client's greeting comes from: the primary's, or,
/// while the primary cannot be reached, a healthy replica's, so that clients
/// can still log in and read. A server that refuses the login itself (wrong
/// database, say) is the answer, not a reason to look further.
pub(crate) async fn greeting_connection(
    proxy: &Proxy,
    login: &Login,
) -> Result<(Server, Arc<Pool>, Lease), BackendError> {
    // In a split brain, the configured primary greets (writes are refused
    // later, unit by unit).
    let primary = proxy.primary_target().unwrap_or(&proxy.primary);
    let pool = proxy.pools.get(primary, login);
    let primary_error = match pool.checkout().await {
        Ok(lease) => return Ok((Server::Primary, pool, lease)),
        Err(e) => e,
    };
    let unreachable = match &primary_error {
        BackendError::Connect { .. }
        | BackendError::ConnectTimeout { .. }
        | BackendError::Io { .. } => true,
        BackendError::Refused { code, .. } => code.starts_with("57P"),
        _ => false,
    };
    if !unreachable {
        return Err(primary_error);
    }
    let healthy: Vec<usize> = proxy.monitor.with_positions(|p| {
        (0..p.replicas.len())
            .filter(|&i| p.replicas[i].healthy)
            .collect()
    });
    for i in healthy {
        let Some(target) = proxy.replicas.get(i) else {
            continue;
        };
        let pool = proxy.pools.get(target, login);
        if let Ok(lease) = pool.checkout().await {
            tracing::warn!(error = %primary_error, replica = %target.name, "primary unreachable; a new client logs in through a replica");
            return Ok((Server::Replica(i), pool, lease));
        }
    }
    Err(primary_error)
}
