//! The proxy's metrics, named once here so every call site uses the same
//! names and labels. Labels are bounded: server names and fixed reasons,
//! never SQL text or client ids.

use std::time::Duration;

use crate::router::Reason;

/// A unit was sent to a server.
pub fn routed(server: &str, primary: bool, reason: Reason) {
    let route = if primary { "primary" } else { "replica" };
    metrics::counter!(
        "causeway_statements_total",
        "route" => route,
        "server" => server.to_string(),
        "reason" => reason.as_str()
    )
    .increment(1);
}

/// A read waited for a replica to catch up.
pub fn waited(elapsed: Duration, caught_up: bool) {
    metrics::histogram!("causeway_read_wait_seconds").record(elapsed.as_secs_f64());
    if !caught_up {
        metrics::counter!("causeway_read_wait_timeouts_total").increment(1);
    }
}

/// A read was re-run elsewhere after a replica refused it or failed.
pub fn retried(server: &str, why: &'static str) {
    metrics::counter!("causeway_read_retries_total", "server" => server.to_string(), "reason" => why).increment(1);
}

/// A read was refused because no replica was fresh (`on_stale = "error"`).
pub fn stale_refused() {
    metrics::counter!("causeway_stale_reads_refused_total").increment(1);
}
