//! `auth_query`: users not listed in `[[users]]` are checked against the
//! secret Postgres itself stores for them, read with the configured query
//! (PgBouncer's `auth_query`, typically a `SECURITY DEFINER` function over
//! `pg_shadow`) through the `auth_user`'s server login, on the primary or,
//! when it cannot be reached, a replica (which has the same `pg_authid`).
//!
//! What was read, a secret or that there is none, is kept for
//! `auth_query_cache_ttl_ms`. A lookup that fails (the query errs, no
//! server answers) fails the login: it never lets anyone in.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::frontend::auth::ScramSecret;
use crate::server::Proxy;

/// A secret as `pg_authid.rolpassword` stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Scram(ScramSecret),
    /// `md5` + hex(md5(password || user)).
    Md5(String),
}

impl Stored {
    /// Reads `rolpassword`; `None` for NULL or what no login can match.
    pub fn parse(text: &str) -> Option<Stored> {
        if let Some(secret) = ScramSecret::parse(text) {
            return Some(Stored::Scram(secret));
        }
        let hex = text.strip_prefix("md5")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Stored::Md5(text.to_string()))
    }
}

/// Looked-up secrets by (database, user), with when they were read.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: DashMap<(String, String), (Option<Stored>, Instant)>,
}

impl AuthCache {
    fn get(&self, key: &(String, String), ttl: Duration) -> Option<Option<Stored>> {
        let entry = self.entries.get(key)?;
        (entry.1.elapsed() < ttl).then(|| entry.0.clone())
    }
}

/// The stored secret of `user`, as the servers have it (`None`: no such
/// role, or no password). `Err` says why it could not be read.
pub async fn lookup(proxy: &Proxy, user: &str, database: &str) -> Result<Option<Stored>, String> {
    let auth = &proxy.config.auth;
    let (Some(query), Some(runner)) = (&auth.auth_query, &auth.auth_user) else {
        return Ok(None);
    };
    let dbname = auth.auth_dbname.as_deref().unwrap_or(database);
    let key = (dbname.to_string(), user.to_string());
    let ttl = Duration::from_millis(auth.auth_query_cache_ttl_ms);
    if let Some(cached) = proxy.auth_cache.get(&key, ttl) {
        return Ok(cached);
    }
    let login = proxy.server_login(runner, dbname);
    let (_, _, mut lease) = crate::frontend::session::greeting::greeting_connection(proxy, &login)
        .await
        .map_err(|e| e.to_string())?;
    let sql = query.replace("$1", &quote_literal(user));
    let rows = lease.conn.query_rows(&sql).await;
    let rows = match rows {
        Ok(Ok(rows)) => {
            lease.give_back();
            rows
        }
        Ok(Err(e)) => {
            lease.give_back();
            return Err(format!("auth_query failed: {} ({})", e.message, e.code));
        }
        // The connection broke: it is not given back.
        Err(e) => return Err(e.to_string()),
    };
    let stored = match rows.as_slice() {
        [] => None,
        [row] => row
            .get(1)
            .cloned()
            .flatten()
            .as_deref()
            .and_then(Stored::parse),
        _ => {
            return Err(format!(
                "auth_query returned {} rows for one user",
                rows.len()
            ))
        }
    };
    proxy
        .auth_cache
        .entries
        .insert(key, (stored.clone(), Instant::now()));
    Ok(stored)
}

/// `value` as an SQL string literal, right whatever
/// `standard_conforming_strings` says (Postgres's `quote_literal`).
fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_cannot_break_out() {
        assert_eq!(quote_literal("alice"), "'alice'");
        assert_eq!(quote_literal("o'brien"), "'o''brien'");
        assert_eq!(quote_literal("x\\' OR true --"), "E'x\\\\'' OR true --'");
    }

    #[test]
    fn stored_secrets_parse_as_pg_authid_holds_them() {
        let md5 = crate::frontend::auth::md5_secret("u", "p");
        assert_eq!(Stored::parse(&md5), Some(Stored::Md5(md5.clone())));
        assert!(matches!(
            Stored::parse(&postgres_protocol::password::scram_sha_256(b"p")),
            Some(Stored::Scram(_))
        ));
        assert_eq!(Stored::parse("md5nothex"), None);
        assert_eq!(Stored::parse("plain text"), None);
    }
}
