//! `demo-app diagnose`: is everything the demo needs there, and if not, what
//! to do about it (seed koyo-postgres-replication's diagnostics).
//!
//! Each check prints `OK`, `FAIL` (with what to fix) or `SKIP` (it needs a
//! check that failed, or a setting that is not given); the exit status is 1
//! if any failed. The checks:
//! - `causeway`: DATABASE_URL reaches causeway (it answers
//!   `SHOW causeway.lsn`, which a bare Postgres would not);
//! - `primary`: PRIMARY_URL reaches the primary directly (when given);
//! - `wal_level`: the primary's is `logical`;
//! - `slot`: the CDC slot exists, logical, `test_decoding`, this database;
//! - `slot access`: it can be read with this role (REPLICATION needed), and
//!   how many rows wait in it;
//! - `redis`: REDIS_URL answers PING;
//! - `replicas`: the primary has streaming replicas, and how far behind.
//!
//! The server-side questions go through causeway with the hint
//! `/* causeway: primary */`: settings, slots and walsenders are the
//! primary's, and a replica would answer about itself.

use std::fmt;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::cdc::slot;
use crate::error::Error;
use crate::redis_client;

/// What to check.
#[derive(Clone, Debug)]
pub struct DiagnoseConfig {
    pub database_url: String,
    /// Straight to the primary, bypassing causeway; optional.
    pub primary_url: Option<String>,
    pub redis_url: String,
    pub slot: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    Fail { problem: String, fix: String },
    Skip(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Ok(detail.into()),
        }
    }

    fn fail(name: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Fail {
                problem: problem.into(),
                fix: fix.into(),
            },
        }
    }

    fn skip(name: &'static str, why: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Skip(why.into()),
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail { .. })
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Ok(detail) => write!(f, "OK    {:<12} {detail}", self.name),
            Outcome::Skip(why) => write!(f, "SKIP  {:<12} {why}", self.name),
            Outcome::Fail { problem, fix } => {
                write!(
                    f,
                    "FAIL  {:<12} {problem}\n      {:<12} fix: {fix}",
                    self.name, ""
                )
            }
        }
    }
}

/// Runs every check, in order; never fails itself.
pub async fn diagnose(config: &DiagnoseConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    let proxy = connect_causeway(&config.database_url, &mut checks).await;
    checks.push(primary(config.primary_url.as_deref()).await);
    match &proxy {
        Some(client) => {
            checks.push(wal_level(client).await);
            let found = slot_exists(client, &config.slot).await;
            let slot_ok = !found.failed();
            checks.push(found);
            checks.push(if slot_ok {
                slot_access(client, &config.slot).await
            } else {
                Check::skip("slot access", "no usable slot")
            });
            checks.push(redis(&config.redis_url).await);
            checks.push(replicas(client).await);
        }
        None => {
            for name in ["wal_level", "slot", "slot access"] {
                checks.push(Check::skip(name, "no connection through causeway"));
            }
            checks.push(redis(&config.redis_url).await);
            checks.push(Check::skip("replicas", "no connection through causeway"));
        }
    }
    checks
}

/// Every check, one (or two) lines each, and the verdict.
pub fn report(checks: &[Check]) -> String {
    let mut text: String = checks.iter().map(|c| format!("{c}\n")).collect();
    let failed = checks.iter().filter(|c| c.failed()).count();
    text.push_str(&match failed {
        0 => "diagnose: all checks passed\n".to_string(),
        n => format!("diagnose: {n} check(s) failed; fix them and run diagnose again\n"),
    });
    text
}

async fn connect(url: &str) -> Result<Client, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let connecting = tokio::time::timeout(Duration::from_secs(5), config.connect(NoTls));
    let (client, connection) = connecting
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| Error::from(e).to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn connect_causeway(url: &str, checks: &mut Vec<Check>) -> Option<Client> {
    const NAME: &str = "causeway";
    let client = match connect(url).await {
        Ok(client) => client,
        Err(e) => {
            checks.push(Check::fail(
                NAME,
                format!("cannot connect to DATABASE_URL ({}): {e}", redact(url)),
                "start causeway (target/release/causeway --config proxy.toml) \
                 or correct DATABASE_URL",
            ));
            return None;
        }
    };
    match client.simple_query("SHOW causeway.lsn").await {
        Ok(_) => {
            checks.push(Check::ok(
                NAME,
                format!("connected to {} (causeway answers)", redact(url)),
            ));
            Some(client)
        }
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
            checks.push(Check::fail(
                NAME,
                format!("{} is a Postgres server, not causeway", redact(url)),
                "point DATABASE_URL at causeway's listen address (proxy.toml [proxy] listen), \
                 e.g. postgres://app:app@127.0.0.1:6432/app",
            ));
            // The other checks still mean something on a bare server.
            Some(client)
        }
        Err(e) => {
            checks.push(Check::fail(
                NAME,
                Error::from(e).to_string(),
                "see causeway's log",
            ));
            None
        }
    }
}

async fn primary(url: Option<&str>) -> Check {
    const NAME: &str = "primary";
    let Some(url) = url else {
        return Check::skip(
            NAME,
            "PRIMARY_URL not set (bash cluster/cluster.sh env prints it)",
        );
    };
    let client = match connect(url).await {
        Ok(client) => client,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot connect to PRIMARY_URL ({}): {e}", redact(url)),
                "start the cluster (bash cluster/cluster.sh start) or correct PRIMARY_URL",
            )
        }
    };
    match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
        Ok(row) if row.get::<_, bool>(0) => Check::fail(
            NAME,
            format!("{} is a replica, not the primary", redact(url)),
            "point PRIMARY_URL at the primary",
        ),
        Ok(_) => Check::ok(NAME, format!("connected straight to {}", redact(url))),
        Err(e) => Check::fail(NAME, Error::from(e).to_string(), "check PRIMARY_URL"),
    }
}

async fn wal_level(client: &Client) -> Check {
    const NAME: &str = "wal_level";
    let sql = "/* causeway: primary */ SELECT current_setting('wal_level')";
    match client.query_one(sql, &[]).await {
        Ok(row) => match row.get::<_, String>(0).as_str() {
            "logical" => Check::ok(NAME, "logical"),
            other => Check::fail(
                NAME,
                format!("wal_level is '{other}', and logical decoding needs 'logical'"),
                "on the primary: ALTER SYSTEM SET wal_level = logical; then restart it \
                 (bash cluster/cluster.sh stop-server primary; ... start-server primary)",
            ),
        },
        Err(e) => Check::fail(NAME, Error::from(e).to_string(), "see the primary's log"),
    }
}

async fn slot_exists(client: &Client, slot_name: &str) -> Check {
    const NAME: &str = "slot";
    let info = match slot::find(client, slot_name).await {
        Ok(info) => info,
        Err(e) => return Check::fail(NAME, e.to_string(), "see the primary's log"),
    };
    let Some(info) = info else {
        return Check::fail(
            NAME,
            format!("replication slot '{slot_name}' does not exist"),
            format!(
                "run `demo-app cdc --once` (it creates the slot), or as a role with \
                 REPLICATION: SELECT pg_create_logical_replication_slot('{slot_name}', '{}')",
                slot::PLUGIN
            ),
        );
    };
    match slot::usable(slot_name, &info) {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "'{slot_name}' ({}, {})",
                slot::PLUGIN,
                if info.active { "in use" } else { "idle" }
            ),
        ),
        Err(e) => Check::fail(NAME, e.to_string(), "see above"),
    }
}

async fn slot_access(client: &Client, slot_name: &str) -> Check {
    const NAME: &str = "slot access";
    const LIMIT: i32 = 100_000;
    for attempt in 0..3 {
        match slot::pending(client, slot_name, LIMIT).await {
            Ok(pending) => {
                let more = if pending >= i64::from(LIMIT) {
                    "at least "
                } else {
                    ""
                };
                return Check::ok(
                    NAME,
                    format!("readable; {more}{pending} change rows pending"),
                );
            }
            Err(e) if e.sql_state() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Check::fail(
                    NAME,
                    e.to_string(),
                    "reading a slot needs the REPLICATION attribute: ALTER ROLE <user> REPLICATION",
                )
            }
            // `demo-app cdc` is reading it this very moment.
            Err(e) if e.sql_state() == Some(&SqlState::OBJECT_IN_USE) && attempt < 2 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) if e.sql_state() == Some(&SqlState::OBJECT_IN_USE) => {
                return Check::ok(
                    NAME,
                    "in use by a running `demo-app cdc`; pending count unknown",
                )
            }
            Err(e) => return Check::fail(NAME, e.to_string(), "see the primary's log"),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

async fn redis(url: &str) -> Check {
    const NAME: &str = "redis";
    let pinged = async {
        let mut conn = redis_client::connect(url).await?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok::<_, Error>(pong)
    };
    match pinged.await {
        Ok(pong) => Check::ok(NAME, format!("{url} answers {pong}")),
        Err(e) => Check::fail(
            NAME,
            format!("{url}: {e}"),
            "start Redis (bash cluster/cluster.sh start) or correct REDIS_URL",
        ),
    }
}

async fn replicas(client: &Client) -> Check {
    const NAME: &str = "replicas";
    let sql = "/* causeway: primary */
               SELECT application_name, state,
                      pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint
                 FROM pg_stat_replication ORDER BY application_name";
    let rows = match client.query(sql, &[]).await {
        Ok(rows) => rows,
        Err(e) => return Check::fail(NAME, Error::from(e).to_string(), "see the primary's log"),
    };
    let described: Vec<String> = rows
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            let state: Option<String> = row.get(1);
            let behind: Option<i64> = row.get(2);
            let behind = behind.map_or("lag unknown".to_string(), |b| format!("{b} bytes behind"));
            format!("{name} {} ({behind})", state.as_deref().unwrap_or("?"))
        })
        .collect();
    let streaming = rows
        .iter()
        .filter(|row| row.get::<_, Option<String>>(1).as_deref() == Some("streaming"))
        .count();
    if streaming == 0 {
        return Check::fail(
            NAME,
            match described.is_empty() {
                true => "no replica is connected to the primary".to_string(),
                false => format!("no replica is streaming: {}", described.join(", ")),
            },
            "start the replicas (bash cluster/cluster.sh start); causeway then reads from them",
        );
    }
    Check::ok(NAME, described.join(", "))
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://app:secret@127.0.0.1:6432/app"),
            "postgres://app:***@127.0.0.1:6432/app"
        );
        assert_eq!(redact("postgres://app@h/db"), "postgres://app@h/db");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn report_says_what_to_fix() {
        let checks = vec![
            Check::ok("causeway", "connected"),
            Check::fail("wal_level", "wal_level is 'replica'", "set it to logical"),
            Check::skip("slot access", "no usable slot"),
        ];
        let text = report(&checks);
        assert!(text.contains("OK    causeway     connected"), "{text}");
        assert!(
            text.contains("FAIL  wal_level    wal_level is 'replica'"),
            "{text}"
        );
        assert!(text.contains("fix: set it to logical"), "{text}");
        assert!(text.contains("SKIP  slot access  no usable slot"), "{text}");
        assert!(
            text.ends_with("1 check(s) failed; fix them and run diagnose again\n"),
            "{text}"
        );
    }
}
