//! How a session ends: the last word to the client (a FATAL when the proxy
//! or a server ended it), and each server connection either reset and
//! given back to its pool or closed.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::{End, Session};
use crate::backend::pool::Lease;
use crate::protocol::messages::{self, Severity};

impl Session {
    /// Says the last word to the client and returns or closes the server
    /// connections.
    pub(super) async fn finish(mut self, end: End) {
        let mut farewell = BytesMut::new();
        let client_left = matches!(end, End::ClientLeft);
        match &end {
            End::ClientLeft => {}
            End::ClientProtocol(e) => {
                tracing::debug!(error = %e, "client broke the protocol");
                messages::error_response(
                    &mut farewell,
                    Severity::Fatal,
                    "08P01",
                    &e.to_string(),
                    None,
                );
            }
            End::ServerLost(why) => {
                tracing::warn!(reason = %why, "server connection lost");
                if !self.server_fatal || self.fatal_swallowed {
                    messages::error_response(
                        &mut farewell,
                        Severity::Fatal,
                        "08006",
                        "server closed the connection unexpectedly",
                        Some(why),
                    );
                }
                // Never reuse a connection that failed.
                self.current = None;
            }
            End::NoServer { code, message } => {
                messages::error_response(&mut farewell, Severity::Fatal, code, message, None);
            }
            End::IdleInTransaction => messages::error_response(
                &mut farewell,
                Severity::Fatal,
                "57P05",
                "terminating connection due to idle-in-transaction timeout",
                None,
            ),
            End::Drained | End::Killed => messages::error_response(
                &mut farewell,
                Severity::Fatal,
                "57P01",
                "terminating connection due to administrator command",
                None,
            ),
        }
        if !client_left {
            self.to_client.extend_from_slice(&self.held);
            self.to_client.extend_from_slice(&farewell);
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.client.write_all(&self.to_client),
            )
            .await;
            let _ = self.client.shutdown().await;
        }
        self.cancel.set(None);
        let quiet = self.pending.is_empty()
            && self.server_streaming == 0
            && self.to_server.is_empty()
            && self.open_batch.is_none()
            && !self.server_fatal;
        let in_transaction = self.tx_status != b'I';
        let reset_query = self.proxy.config.pool.reset_query.clone();
        if let Some(attached) = self.current.take() {
            release_clean(attached.lease, quiet, in_transaction, &reset_query).await;
        }
        for attached in self.stash.drain(..) {
            release_clean(attached.lease, true, false, &reset_query).await;
        }
    }
}

/// Gives a connection back to its pool after resetting it, or closes it if
/// it cannot be made clean for the next client.
async fn release_clean(mut lease: Lease, quiet: bool, in_transaction: bool, reset_query: &str) {
    if !quiet || !lease.conn.rbuf.is_empty() {
        lease.conn.terminate().await;
        return;
    }
    let reset = async {
        if in_transaction && lease.conn.run_internal("ROLLBACK").await?.is_some() {
            return Ok(false);
        }
        Ok::<bool, crate::backend::BackendError>(
            lease.conn.run_internal(reset_query).await?.is_none(),
        )
    };
    match tokio::time::timeout(Duration::from_secs(5), reset).await {
        Ok(Ok(true)) => {
            // The mirror forgets only what the server did: with a reset
            // query that keeps settings or statements, the next client's
            // catch-up still undoes or closes them (see
            // `SessionState::catch_up`).
            let reset = reset_query.to_ascii_lowercase();
            let discards = reset.contains("discard all");
            if discards {
                lease.conn.settings.clear();
            } else if reset.contains("reset all") {
                // RESET ALL leaves the role and session authorization.
                lease
                    .conn
                    .settings
                    .retain(|name, _| super::state::is_privilege(name));
            }
            if discards || reset.contains("deallocate all") {
                lease.conn.prepared.clear();
            }
            lease.give_back();
        }
        _ => lease.conn.terminate().await,
    }
}
