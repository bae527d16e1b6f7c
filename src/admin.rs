//! The admin console: connect to the database `causeway` as one of the
//! `[auth] admin_users` and ask, in the style of PgBouncer's console,
//! `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW REPLICAS`, `SHOW STATS`,
//! `SHOW CONFIG`, `SHOW VERSION`, `RELOAD`, `PAUSE` or `RESUME` (see
//! `crate::pause`), `KILL pid` (one client, as `SHOW CLIENTS` numbers
//! them) or `SHUTDOWN` (drain and exit, as SIGTERM). Answers are ordinary result
//! sets, so psql prints them as tables.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::frontend::{ClientIo, Ready};
use crate::protocol::messages::{self, Severity};
use crate::protocol::{self};
use crate::server::{Proxy, ProxyHandle};

pub const ADMIN_DATABASE: &str = "causeway";

/// A result set of text columns.
struct Table {
    columns: &'static [&'static str],
    rows: Vec<Vec<Option<String>>>,
}

enum Reply {
    Table(Table),
    Done(&'static str),
    Error(String),
}

/// Serves an admin session until the client leaves.
pub async fn serve(handle: Arc<ProxyHandle>, proxy: Arc<Proxy>, mut io: ClientIo, ready: Ready) {
    let mut out = BytesMut::new();
    let version = format!("15.0 (causeway {})", env!("CARGO_PKG_VERSION"));
    let application = ready
        .params
        .get("application_name")
        .unwrap_or("")
        .to_string();
    for (name, value) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", application.as_str()),
    ] {
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, 0, 0);
    messages::ready_for_query(&mut out, b'I');
    if io.stream.write_all(&out).await.is_err() {
        return;
    }
    let mut skipping_to_sync = false;
    loop {
        out.clear();
        let header = loop {
            match protocol::frontend_header(&io.rbuf) {
                Ok(Some(h)) if io.rbuf.len() >= h.wire_len() => break Ok(h),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
            io.rbuf.reserve(4096);
            match io.stream.read_buf(&mut io.rbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let header = match header {
            Ok(h) => h,
            Err(e) => {
                messages::error_response(&mut out, Severity::Fatal, "08P01", &e.to_string(), None);
                let _ = io.stream.write_all(&out).await;
                return;
            }
        };
        let message = io.rbuf.split_to(header.wire_len());
        let mut body = &message[5..];
        match header.tag {
            b'X' => return,
            b'Q' => {
                let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                let sql = String::from_utf8_lossy(&body[..end]).into_owned();
                body.advance(end);
                let reply = match sql
                    .trim()
                    .trim_end_matches(';')
                    .trim()
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "pause" => pause(&handle).await,
                    "resume" => {
                        handle.get().pause.resume();
                        Reply::Done("RESUME")
                    }
                    "shutdown" => {
                        handle.request_shutdown();
                        Reply::Done("SHUTDOWN")
                    }
                    _ => run(&handle, &proxy, &sql),
                };
                write_reply(&mut out, reply);
                messages::ready_for_query(&mut out, b'I');
            }
            b'S' => {
                skipping_to_sync = false;
                messages::ready_for_query(&mut out, b'I');
            }
            _ if !skipping_to_sync => {
                skipping_to_sync = true;
                messages::error_response(
                    &mut out,
                    Severity::Error,
                    "0A000",
                    "the causeway console speaks only the simple query protocol",
                    None,
                );
            }
            _ => {}
        }
        if !out.is_empty() && io.stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// `PAUSE`: holds new units and answers once no session has work on a
/// server. Waits at most a minute; the pause stays on either way.
async fn pause(handle: &ProxyHandle) -> Reply {
    match handle.get().pause.pause(std::time::Duration::from_secs(60)).await {
        Ok(()) => Reply::Done("PAUSE"),
        Err(busy) => Reply::Error(format!(
            "PAUSE: {busy} sessions still have a transaction open after 60 s; new units stay held until RESUME"
        )),
    }
}

fn write_reply(out: &mut BytesMut, reply: Reply) {
    match reply {
        Reply::Table(table) => {
            messages::row_description_text(out, table.columns);
            for row in &table.rows {
                let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
                messages::data_row_text(out, &values);
            }
            messages::command_complete(out, &format!("SHOW {}", table.rows.len()));
        }
        Reply::Done(tag) => messages::command_complete(out, tag),
        Reply::Error(text) => messages::error_response(out, Severity::Error, "42601", &text, None),
    }
}

/// Runs one console command.
fn run(handle: &ProxyHandle, session_proxy: &Proxy, sql: &str) -> Reply {
    let command = sql.trim().trim_end_matches(';').trim().to_ascii_lowercase();
    let words: Vec<&str> = command.split_whitespace().collect();
    // Always show the proxy now in force, not the one this session began with.
    let proxy = handle.get();
    let _ = session_proxy;
    match words.as_slice() {
        ["show", "clients"] => Reply::Table(clients(&proxy)),
        ["show", "servers"] => Reply::Table(servers(&proxy)),
        ["show", "replicas"] => Reply::Table(replicas(&proxy)),
        ["show", "stats"] => Reply::Table(stats(&proxy)),
        ["show", "config"] => Reply::Table(config(&proxy)),
        ["show", "version"] => Reply::Table(Table {
            columns: &["version"],
            rows: vec![vec![Some(format!("causeway {}", env!("CARGO_PKG_VERSION")))]],
        }),
        ["kill", pid] => match pid.parse::<i32>().ok().and_then(|p| proxy.stats.clients.get(&p).map(|c| c.clone())) {
            Some(client) => {
                client.kill.notify_one();
                Reply::Done("KILL")
            }
            None => Reply::Error(format!("no client with pid {pid} (see SHOW CLIENTS)")),
        },
        ["reload"] => match handle.reload() {
            Ok(_) => Reply::Done("RELOAD"),
            Err(e) => Reply::Error(format!("RELOAD failed, the old configuration stays: {e}")),
        },
        _ => Reply::Error(format!(
            "unknown console command \"{}\"; try SHOW CLIENTS, SHOW SERVERS, SHOW REPLICAS, SHOW STATS, SHOW CONFIG, SHOW VERSION, RELOAD, PAUSE, RESUME, KILL pid, SHUTDOWN",
            sql.trim()
        )),
    }
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn clients(proxy: &Proxy) -> Table {
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
                text(live.units),
                text(
                    now.duration_since(c.connected_at)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                ),
            ]
        })
        .collect();
    rows.sort();
    Table {
        columns: &[
            "pid",
            "user",
            "database",
            "address",
            "application_name",
            "client_id",
            "server",
            "causal_lsn",
            "units",
            "connected_seconds",
        ],
        rows,
    }
}

fn servers(proxy: &Proxy) -> Table {
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
    Table {
        columns: &["server", "database", "user", "in_use", "idle"],
        rows,
    }
}

fn replicas(proxy: &Proxy) -> Table {
    let positions = proxy.monitor.positions();
    let rows = positions
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
        .collect();
    Table {
        columns: &[
            "name",
            "address",
            "healthy",
            "replayed_lsn",
            "lag_bytes",
            "lag_seconds",
            "reads_served",
            "last_error",
            "timeline",
        ],
        rows,
    }
}

fn stats(proxy: &Proxy) -> Table {
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
        .units_by_server
        .iter()
        .map(|e| {
            vec![
                text(format!("units_to_{}", e.key())),
                text(e.value().load(Ordering::Relaxed)),
            ]
        })
        .collect();
    by_server.sort();
    rows.extend(by_server);
    let mut by_reason: Vec<_> = s
        .primary_by_reason
        .iter()
        .map(|e| {
            vec![
                text(format!("primary_because_{}", e.key())),
                text(e.value().load(Ordering::Relaxed)),
            ]
        })
        .collect();
    by_reason.sort();
    rows.extend(by_reason);
    Table {
        columns: &["stat", "value"],
        rows,
    }
}

fn config(proxy: &Proxy) -> Table {
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
                crate::config::AuthMethod::ScramSha256 => "scram-sha-256",
                crate::config::AuthMethod::Md5 => "md5",
                crate::config::AuthMethod::Trust => "trust",
            }
            .to_string(),
        ),
        ("pool.mode", format!("{:?}", c.pool.mode).to_lowercase()),
        (
            "pool.max_server_connections",
            c.pool.max_server_connections.to_string(),
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
                crate::config::CausalScope::Session => "session",
                crate::config::CausalScope::ClientId => "client_id",
                crate::config::CausalScope::User => "user",
                crate::config::CausalScope::Global => "global",
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
    Table {
        columns: &["key", "value"],
        rows: rows
            .into_iter()
            .map(|(k, v)| vec![text(k), Some(v)])
            .collect(),
    }
}
