//! The proxy's metrics, named once here so every call site uses the same
//! names and labels. Labels are bounded: server names, fixed reasons,
//! SQLSTATE classes; never SQL text or client ids.
//!
//! Recorded through the `metrics` facade; [`crate::http`] serves them in
//! the Prometheus text format.

pub mod latency;

use std::time::Duration;

use crate::replicas::Positions;
use crate::router::Reason;

/// Units sent to a server, by route and reason. Resolved once per server
/// and reason, and kept ([`crate::stats::ServerCounters`]).
pub fn routed_counter(server: &str, primary: bool, reason: Reason) -> metrics::Counter {
    let route = if primary { "primary" } else { "replica" };
    metrics::counter!(
        "causeway_statements_total",
        "route" => route,
        "server" => server.to_string(),
        "reason" => reason.as_str()
    )
}

/// A read waited for a replica to catch up.
pub fn waited(elapsed: Duration, caught_up: bool) {
    metrics::histogram!("causeway_read_wait_seconds").record(elapsed.as_secs_f64());
    let outcome = if caught_up { "caught_up" } else { "gave_up" };
    metrics::counter!("causeway_read_waits_total", "outcome" => outcome).increment(1);
}

/// A read was re-run elsewhere after a replica refused it or failed.
pub fn retried(server: &str, why: &'static str, sqlstate: &str) {
    metrics::counter!("causeway_read_retries_total", "server" => server.to_string(), "reason" => why, "sqlstate" => sqlstate.to_string()).increment(1);
}

/// How an optimistic transaction ended: `read_only` (committed on its
/// replica), `matched` / `mismatched` (moved to the primary, `why`: write,
/// overflow, replica), `started_on_primary` (its shape usually writes).
pub fn optimistic(outcome: &'static str, why: &'static str) {
    metrics::counter!("causeway_optimistic_transactions_total", "outcome" => outcome, "why" => why)
        .increment(1);
}

/// An optimistic transaction moved to the primary, replaying `statements`
/// units there.
pub fn optimistic_replayed(statements: usize) {
    metrics::counter!("causeway_optimistic_replays_total").increment(1);
    metrics::counter!("causeway_optimistic_replayed_units_total").increment(statements as u64);
}

/// A session was pinned to its server connection (docs/routing.md, Pins):
/// while it is, its reads go to the primary with reason `pinned`.
pub fn session_pinned(reason: &'static str) {
    metrics::counter!("causeway_session_pins_total", "reason" => reason).increment(1);
}

/// A unit needed the primary while none could be reached.
pub fn no_primary() {
    metrics::counter!("causeway_no_primary_errors_total").increment(1);
}

/// A read was refused because no replica was fresh (`on_stale = "error"`).
pub fn stale_refused() {
    metrics::counter!("causeway_stale_reads_refused_total").increment(1);
}

/// An ErrorResponse went to a client; labelled by SQLSTATE class.
pub fn error_sent(sqlstate: &[u8]) {
    let class = match sqlstate.get(..2).and_then(|c| std::str::from_utf8(c).ok()) {
        Some(c) if c.bytes().all(|b| b.is_ascii_alphanumeric()) => c.to_string(),
        _ => "unknown".to_string(),
    };
    metrics::counter!("causeway_errors_total", "class" => class).increment(1);
}

/// A client connected (+1) or left (-1).
pub fn client_connected() {
    metrics::gauge!("causeway_client_connections").increment(1.0);
    metrics::counter!("causeway_client_connections_total").increment(1);
}

pub fn client_disconnected() {
    metrics::gauge!("causeway_client_connections").decrement(1.0);
}

pub fn auth_failed() {
    metrics::counter!("causeway_client_auth_failures_total").increment(1);
}

/// Server connections per server and state, summed over a pool's databases and users.
pub fn server_connections(server: &str, in_use: usize, idle: usize) {
    metrics::gauge!("causeway_server_connections", "server" => server.to_string(), "state" => "in_use").set(in_use as f64);
    metrics::gauge!("causeway_server_connections", "server" => server.to_string(), "state" => "idle").set(idle as f64);
}

/// Publishes the monitor's view of every server.
pub fn positions(positions: &Positions, primary_name: &str) {
    let up = |ok: bool| if ok { 1.0 } else { 0.0 };
    metrics::gauge!("causeway_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!("causeway_primary_lsn_bytes").set(positions.primary_lsn.0 as f64);
    // Whether writes have somewhere to go: the configured primary, or a
    // promoted replica.
    metrics::gauge!("causeway_primary_up").set(up(positions.has_primary()));
    // Two servers claim to be the primary: writes are refused.
    let split = positions.write_target() == crate::replicas::WriteTarget::SplitBrain;
    metrics::gauge!("causeway_split_brain").set(up(split));
    metrics::gauge!("causeway_server_up", "server" => primary_name.to_string(), "role" => "primary")
        .set(up(positions.primary_healthy));
    for r in &positions.replicas {
        metrics::gauge!("causeway_server_up", "server" => r.name.clone(), "role" => "replica")
            .set(up(r.healthy));
    }
    for r in &positions.replicas {
        let server = r.name.clone();
        metrics::gauge!("causeway_replica_replayed_lsn_bytes", "server" => server.clone())
            .set(r.replayed.0 as f64);
        metrics::gauge!("causeway_replica_lag_bytes", "server" => server.clone())
            .set(r.lag_bytes as f64);
        metrics::gauge!("causeway_replica_lag_seconds", "server" => server.clone())
            .set(r.lag_seconds);
        metrics::gauge!("causeway_replica_timeline", "server" => server.clone())
            .set(f64::from(r.timeline.unwrap_or(0)));
        // Healthy and on the primary's timeline: it gets reads.
        metrics::gauge!("causeway_replica_healthy", "server" => server)
            .set(up(positions.serves(r)));
    }
    if let Some(timeline) = positions.history.timeline {
        metrics::gauge!("causeway_timeline").set(f64::from(timeline));
    }
}

/// The write target moved to another timeline (a promotion).
pub fn timeline_switch(timeline: u32) {
    metrics::counter!("causeway_timeline_switches_total").increment(1);
    metrics::gauge!("causeway_timeline").set(f64::from(timeline));
}

/// Clients in the shared causal-LSN map (`causal_scope` `client_id` or
/// `user`; empty under `global` and `session`), expired ones included until
/// the map makes room.
pub fn causal_map(entries: usize) {
    metrics::gauge!("causeway_causal_map_entries").set(entries as f64);
}

/// Reasons a unit can run on a replica for.
const REPLICA_REASONS: [Reason; 5] = [
    Reason::Fresh,
    Reason::WithinLag,
    Reason::ReadOnlyTransaction,
    Reason::Hint,
    Reason::Optimistic,
];

/// SQLSTATE classes of the errors causeway itself sends (connection, aborted
/// block, authentication, limits, operator intervention, syntax/privilege).
const OWN_ERROR_CLASSES: [&str; 6] = ["08", "25", "28", "42", "53", "57"];

/// Creates, at zero, every series the dashboards read and causeway knows
/// the labels of (each server, each reason, each error class it sends), so
/// that a healthy proxy's panels show 0, not "No data", before the first
/// event (Prometheus's advice). Histograms are registered empty.
pub fn init_series(primary: &str, replicas: &[String]) {
    let zero = |c: metrics::Counter| c.increment(0);
    zero(metrics::counter!("causeway_client_auth_failures_total"));
    zero(metrics::counter!("causeway_client_connections_total"));
    zero(metrics::counter!("causeway_client_bytes_received_total"));
    zero(metrics::counter!("causeway_client_bytes_sent_total"));
    metrics::gauge!("causeway_client_connections").increment(0.0);
    zero(metrics::counter!("causeway_no_primary_errors_total"));
    zero(metrics::counter!("causeway_stale_reads_refused_total"));
    zero(metrics::counter!("causeway_timeline_switches_total"));
    zero(metrics::counter!("causeway_optimistic_replays_total"));
    zero(metrics::counter!(
        "causeway_optimistic_replayed_units_total"
    ));
    for outcome in ["read_only", "started_on_primary"] {
        zero(
            metrics::counter!("causeway_optimistic_transactions_total", "outcome" => outcome, "why" => ""),
        );
    }
    for class in OWN_ERROR_CLASSES {
        zero(metrics::counter!("causeway_errors_total", "class" => class));
    }
    for outcome in ["caught_up", "gave_up"] {
        zero(metrics::counter!("causeway_read_waits_total", "outcome" => outcome));
    }
    for reason in crate::router::facts::PIN_REASONS {
        zero(metrics::counter!("causeway_session_pins_total", "reason" => reason));
    }
    let _ = metrics::histogram!("causeway_read_wait_seconds");
    for server in std::iter::once(primary).chain(replicas.iter().map(String::as_str)) {
        server_connections(server, 0, 0);
        zero(
            metrics::counter!("causeway_replica_poll_errors_total", "server" => server.to_string()),
        );
    }
    for reason in Reason::ALL {
        routed_zero(primary, true, reason);
    }
    for replica in replicas {
        for reason in REPLICA_REASONS {
            routed_zero(replica, false, reason);
        }
        for why in ["refused", "replica_lost"] {
            zero(
                metrics::counter!("causeway_read_retries_total", "server" => replica.clone(), "reason" => why, "sqlstate" => ""),
            );
        }
    }
}

/// [`routed`]'s series at zero.
fn routed_zero(server: &str, primary: bool, reason: Reason) {
    let route = if primary { "primary" } else { "replica" };
    metrics::counter!(
        "causeway_statements_total",
        "route" => route,
        "server" => server.to_string(),
        "reason" => reason.as_str()
    )
    .increment(0);
}

/// A call to the shared causal store ended, after `elapsed`.
pub fn causal_store(op: &'static str, elapsed: Duration, ok: bool) {
    metrics::histogram!("causeway_causal_store_seconds", "op" => op).record(elapsed.as_secs_f64());
    if !ok {
        metrics::counter!("causeway_causal_store_errors_total", "op" => op).increment(1);
    }
}

/// Polls of a server by the monitor, resolved once per polling task.
pub fn polls_counter(server: &str) -> metrics::Counter {
    metrics::counter!("causeway_monitor_polls_total", "server" => server.to_string())
}

/// A poll of a server failed.
pub fn poll_error(server: &str) {
    metrics::counter!("causeway_replica_poll_errors_total", "server" => server.to_string())
        .increment(1);
}
