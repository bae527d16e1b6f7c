//! Losing a server without losing the session: units that need the
//! primary while there is none are answered with an `ERROR` (57P03); units
//! in flight on a primary that goes away get an `ERROR` (08006) for each,
//! instead of the FATAL that would close the client; a connection closed
//! between units is replaced at the next one. Only what began outside a
//! transaction block survives: a block open on a lost server is lost, and
//! its client hears so as Postgres would say it.

use super::responses::{self, Expect};
use super::units::Unit;
use super::{Attached, End, Session};
use crate::protocol::messages::{self, Severity};
use crate::router::Server;

impl Session {
    /// The primary's connection was lost under an autocommit unit (no
    /// block open, not pinned, nothing else in flight): the client gets an
    /// ERROR and ReadyForQuery for it, and its session goes on; its next
    /// unit gets a connection to whatever primary there is then. Returns
    /// whether it was so answered.
    /// Whether losing the connection to `server` now costs the client only
    /// an error per unit in flight: it is the primary, and every unit in
    /// flight started outside a block (the proxy's own statements around
    /// them, settings, commit LSN, catalog, may go too).
    pub(super) fn units_survive_loss_of(&self, server: Server) -> bool {
        use responses::Internal;
        server == Server::Primary
            && self.pinned.is_empty()
            && self.open_batch.is_none()
            && self.server_streaming == 0
            && self.optimistic.is_none()
            && self.pending.iter().all(|e| match e {
                Expect::Client(inflight) => inflight.started_at_rest && inflight.retry.is_none(),
                Expect::Internal(kind) => {
                    matches!(kind, Internal::Setup | Internal::Lsn | Internal::Catalog)
                }
            })
    }

    pub(super) fn answer_lost_unit(&mut self, attached: &Attached) -> bool {
        if !self.units_survive_loss_of(attached.server) {
            return false;
        }
        if let Some(ready) = self.ready_after_lsn.take() {
            // A unit committed and only its commit LSN was lost with the
            // connection: the client hears its success; the session's
            // reads go to the primary until the primary tells it how far
            // its WAL goes, since no replica can be shown to have it.
            tracing::warn!("primary connection lost before a commit's LSN was known; the session reads from the primary until it is known");
            self.to_client.extend_from_slice(&ready);
            self.causal_unknown = true;
        }
        let text = format!(
            "causeway: the connection to the primary \"{}\" was lost while it ran this statement, which may not have been committed",
            attached.lease.conn.server_name
        );
        for expect in std::mem::take(&mut self.pending) {
            let Expect::Client(inflight) = expect else {
                continue;
            };
            let (code, detail) = inflight.lost.clone().unwrap_or_else(|| {
                (
                    "08006".to_string(),
                    "server closed the connection unexpectedly".to_string(),
                )
            });
            tracing::warn!(%code, detail = %detail, "primary connection lost under an autocommit unit; the client gets an error, its session goes on");
            messages::error_response(
                &mut self.to_client,
                Severity::Error,
                "08006",
                &text,
                Some(&format!(
                    "The server said: {code} {detail}. Retry when the primary is back."
                )),
            );
            crate::metrics::error_sent(b"08006");
            messages::ready_for_query(&mut self.to_client, b'I');
        }
        self.tx_status = b'I';
        self.tx_wrote = false;
        self.tx_effects.clear();
        self.server_fatal = false;
        self.fatal_swallowed = false;
        self.commit_awaiting_lsn = false;
        self.lsn_answer = None;
        self.catalog_rows = None;
        true
    }

    /// Between units, with nothing on the current server that a new
    /// connection could not have: its loss costs the client nothing.
    pub(super) fn idle_between_units(&self) -> bool {
        self.pending.is_empty()
            && self.open_batch.is_none()
            && self.tx_status == b'I'
            && self.deferred_begin.is_none()
            && self.optimistic.is_none()
            && self.pinned.is_empty()
            && self.server_streaming == 0
    }

    /// The server writes go to now (see [`Proxy::primary_target`]); an
    /// error while two servers claim the role.
    /// Returns it with its epoch (see [`crate::replicas::History`]).
    pub(super) fn primary_target(&self) -> Result<(crate::backend::ServerTarget, u32), End> {
        let found = self.proxy.primary_target_in_epoch();
        found.map(|(target, epoch)| (target.clone(), epoch)).ok_or_else(|| End::NoServer {
            code: "57P03",
            message: "two servers claim to be the primary; writes are refused until one of them is in recovery again".into(),
        })
    }

    /// Whether `unit` can be answered with an error instead of running: it
    /// started at rest (or right after a held-back BEGIN), nothing else is
    /// in flight, and it sends no COPY data the proxy would have to drop.
    pub(super) fn may_refuse_unit(&self, unit: &Unit) -> bool {
        self.pending.is_empty()
            && self.open_batch.is_none()
            && self.current.is_none()
            && !unit.facts.copy_in
            && (self.tx_status == b'I' || self.deferred_begin.is_some())
    }

    /// Answers a unit that needs the primary while no primary can be
    /// reached: SQLSTATE 57P03 (cannot connect now), which drivers and
    /// pools treat as transient, and the client stays connected. A
    /// held-back BEGIN is dropped with it: the block never started.
    pub(super) fn refuse_no_primary(&mut self, unit: &Unit, why: &str) {
        let text = format!(
            "causeway: no primary server is available, so this statement was not run: {why}"
        );
        tracing::warn!(reason = %why, "no primary for a unit; answered with an error");
        messages::error_response(
            &mut self.to_client,
            Severity::Error,
            "57P03",
            &text,
            Some("Reads still go to the replicas; retry the write when the primary is back."),
        );
        crate::metrics::error_sent(b"57P03");
        crate::metrics::no_primary();
        self.deferred_begin = None;
        self.tx_status = b'I';
        if unit.synced {
            messages::ready_for_query(&mut self.to_client, b'I');
        }
    }
}
