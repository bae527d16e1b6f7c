//! How the monitor reaches one server and reads where it is: its
//! connection, the one query it sends whatever the server's role, what
//! the answer says, and how long to wait before trying a server that does
//! not answer again.

use std::time::Duration;

use crate::backend::{Login, ServerTarget};
use crate::lsn::Lsn;

/// How long the monitor waits for a server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn connect(
    target: &ServerTarget,
    login: &Login,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .user(&login.user)
        .dbname(&login.database)
        .application_name("causeway monitor")
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(password) = &login.password {
        config.password(password);
    }
    let client = match &target.tls {
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
        }
        Some(tls) => {
            // The same sslmode and certificate checks as the pools'.
            config.ssl_mode(match tls.mode {
                crate::tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
            let connector = postgres_rustls::MakeTlsConnector::new(
                tokio_rustls::TlsConnector::from(tls.config.clone()),
            );
            let (client, connection) = config.connect(connector).await?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// A client error with its causes (tokio-postgres keeps the detail, a
/// TLS certificate's fault say, in the source).
pub(super) fn describe(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What one poll of a server found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Polled {
    /// In recovery, replayed this far, following `timeline`.
    Standby {
        replayed: Option<Lsn>,
        timeline: Option<u32>,
    },
    /// Out of recovery: writing at `lsn` on `timeline`; its history holds
    /// everything before `since` (see [`Positions::primary_since`]).
    Primary {
        lsn: Lsn,
        timeline: Option<u32>,
        since: Lsn,
    },
}

/// One query for every server, whatever its role. A standby's timeline is
/// its WAL receiver's (visible to `pg_monitor` members), else that of its
/// last restartpoint; a primary's is in its current WAL file's name.
const POLL: &str = "SELECT pg_is_in_recovery()::text, pg_last_wal_replay_lsn()::text, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     (CASE WHEN pg_is_in_recovery() \
       THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                     (SELECT timeline_id FROM pg_control_checkpoint())) \
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END)::text";

pub(super) async fn poll(client: &tokio_postgres::Client) -> Result<Polled, tokio_postgres::Error> {
    let rows = client.simple_query(POLL).await?;
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let column = |i: usize| row.and_then(|r| r.get(i));
    let lsn = |i: usize| column(i).and_then(|v| v.parse::<Lsn>().ok());
    let timeline = column(3).and_then(|v| v.parse::<u32>().ok());
    Ok(match (column(0) == Some("true"), lsn(2)) {
        (false, Some(written)) => Polled::Primary {
            lsn: written,
            timeline,
            since: lsn(1).unwrap_or(written),
        },
        _ => Polled::Standby {
            replayed: lsn(1),
            timeline,
        },
    })
}

/// Retry delays for a server that does not answer: 50 ms doubling to 2 s.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff(Duration::from_millis(50))
    }
    pub(super) fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }
    pub(super) async fn sleep(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}
