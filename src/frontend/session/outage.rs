//! Losing a server without losing the session: units that need the
//! primary while there is none are answered with an `ERROR` (57P03); units
//! in flight on a primary that goes away get an `ERROR` (08006) for each,
//! instead of the FATAL that would close the client; a connection closed
//! between units is replaced at the next one. A transaction block open on
//! a lost server is lost with it: its client gets an `ERROR` and is left in
//! an aborted block, answered as Postgres answers one (`25P02` until
//! `ROLLBACK`, see `aborted.rs`), and then goes on; its session is closed
//! only when the server held state a new connection cannot have (LISTEN,
//! temp tables, a COPY or a message half sent).

use super::inflight::{self, Expect};
use super::units::Unit;
use super::{Attached, End, Session};
use crate::backend::ServerTarget;
use crate::protocol::messages::{self, Severity};
use crate::router::Server;
use crate::server::Proxy;

impl Session {
    /// Whether losing the current connection now costs the client at most
    /// an error per unit in flight: every unit in flight started outside a
    /// block, and the connection holds nothing a new one cannot have (the
    /// proxy's own statements around them, settings, commit LSN, catalog,
    /// may go too).
    pub(super) fn units_survive_loss(&self) -> bool {
        use inflight::Internal;
        self.tx_status == b'I'
            && self.pinned.is_empty()
            && self
                .open_batch
                .as_ref()
                .is_none_or(|b| b.started_at_rest && !b.copy_in)
            && self.server_streaming == 0
            && self.optimistic.is_none()
            && self.pending.iter().all(|e| match e {
                Expect::Client(inflight) => inflight.started_at_rest,
                Expect::Internal(kind) => {
                    matches!(kind, Internal::Setup | Internal::Lsn | Internal::Catalog)
                }
            })
    }

    /// The connection was lost under units that all started outside a
    /// block (see [`Session::units_survive_loss`]). Each is answered in its
    /// turn: one kept for a re-run (a read at rest) runs again, wherever it
    /// would go then; any other may have run, and gets an ERROR (08006)
    /// and ReadyForQuery. A batch the client cut at a Flush gets the ERROR
    /// alone, and what the client sends up to its Sync is skipped, as
    /// Postgres skips it after an error. The session goes on; its next unit
    /// gets a new connection. Returns whether the units were so answered.
    pub(super) fn answer_lost_units(&mut self, attached: &Attached, why: &str) -> bool {
        if !self.units_survive_loss() {
            return false;
        }
        let name = &attached.lease.conn.server_name;
        let primary = attached.server == Server::Primary;
        if let Some(ready) = self.ready_after_lsn.take() {
            // A unit committed and only its commit LSN was lost with the
            // connection: the client hears its success; the session's
            // reads go to the primary until the primary tells it how far
            // its WAL goes, since no replica can be shown to have it.
            tracing::warn!("primary connection lost before a commit's LSN was known; the session reads from the primary until it is known");
            self.to_client.extend_from_slice(&ready);
            self.causal_unknown = true;
        }
        let text = if primary {
            format!("causeway: the connection to the primary \"{name}\" was lost while it ran this statement, which may not have been committed")
        } else {
            format!("causeway: the connection to server \"{name}\" was lost while it ran this statement")
        };
        // In the client's order: units that run again, and the answers of
        // those that cannot, which wait their turn behind them.
        let mut turns: Vec<Unit> = Vec::new();
        let mut reruns = 0;
        // Each with whether the client synced it: not the batch it cut at
        // a Flush, whether the proxy synced that or not.
        let lost = std::mem::take(&mut self.pending)
            .into_iter()
            .filter_map(|e| match e {
                Expect::Client(inflight) => {
                    let synced = !inflight.synced_by_proxy;
                    Some((inflight, synced))
                }
                Expect::Internal(_) => None,
            })
            .chain(self.open_batch.take().map(|b| (Box::new(b), false)));
        for (mut inflight, synced) in lost {
            if let Some(mut unit) = inflight.retry.take() {
                unit.retried = true;
                turns.push(unit);
                reruns += 1;
                continue;
            }
            if !synced && inflight.flushed_answered() {
                // Cut at a Flush and answered: the client waits for nothing
                // of it. Its unnamed statement and portal are gone with the
                // server; after an error, the server would have skipped
                // what the client sends up to its Sync, and so does this.
                if inflight.saw_error {
                    self.answer_in_turn(&mut turns, bytes::Bytes::new(), false);
                }
                continue;
            }
            if primary && (inflight.writes || inflight.tx_wrote) {
                // It may have committed, at an LSN no replica can be shown
                // to have: reads go to the primary until it is known.
                self.causal_unknown = true;
            }
            tracing::warn!(server = %name, said = ?inflight.lost, "server connection lost under an autocommit unit; the client gets an error, its session goes on");
            let mut answer = bytes::BytesMut::new();
            lost_error(
                &mut answer,
                &text,
                inflight.lost.take(),
                "Retry when the server is back.",
            );
            // A batch the client has not synced hears its ReadyForQuery
            // at the client's own Sync.
            if synced {
                messages::ready_for_query(&mut answer, b'I');
            }
            self.answer_in_turn(&mut turns, answer.freeze(), synced);
        }
        if reruns > 0 {
            self.note_reruns(attached, why, reruns);
        }
        for unit in turns.into_iter().rev() {
            self.queued.push_front(unit);
        }
        self.held.clear();
        self.forget_lost_server(b'I');
        true
    }

    /// Sends `answer` to a lost unit now, or queues it in `turns` behind
    /// units that run again. Unless the client `synced` the unit, what it
    /// sends up to its Sync is then skipped.
    fn answer_in_turn(&mut self, turns: &mut Vec<Unit>, answer: bytes::Bytes, synced: bool) {
        if turns.is_empty() {
            self.to_client.extend_from_slice(&answer);
            self.skip_to_sync = !synced;
        } else {
            turns.push(Unit {
                answered: Some(answer),
                synced,
                ..Unit::default()
            });
        }
    }

    /// Skips a unit sent after a batch that failed with its server (see
    /// [`Session::answer_lost_units`]): nothing of it runs or is answered
    /// but the Sync that ends it, with ReadyForQuery.
    pub(super) fn skip_unsynced(&mut self, unit: &Unit) {
        if crate::protocol::frontend_messages(&unit.bytes).any(|(tag, _)| tag == b'S') {
            messages::ready_for_query(&mut self.to_client, self.tx_status);
            self.skip_to_sync = false;
        }
    }

    /// Counts `units` that run again because `attached`'s connection
    /// failed under them; a replica's is reported to the monitor.
    pub(super) fn note_reruns(&mut self, attached: &Attached, why: &str, units: usize) {
        let name = &attached.lease.conn.server_name;
        tracing::warn!(server = %name, reason = %why, units, "server failed during a read; re-running it elsewhere");
        let lost = match attached.server {
            Server::Replica(_) => {
                self.proxy.monitor.report_lost_connection(name, why);
                "replica_lost"
            }
            Server::Primary => "primary_lost",
        };
        self.proxy.pools.drop_idle(name);
        for _ in 0..units {
            crate::metrics::retried(name, lost, "");
        }
        self.proxy
            .stats
            .retries
            .fetch_add(units as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets what the session expected of a server it lost, leaving the
    /// client with transaction status `status`.
    fn forget_lost_server(&mut self, status: u8) {
        self.tx_status = status;
        self.tx_wrote = false;
        self.tx_effects.clear();
        self.server_fatal = false;
        self.fatal_swallowed = false;
        self.commit_awaiting_lsn = false;
        self.lsn_answer = None;
        self.catalog_rows = None;
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

    /// The server writes go to now (see [`Proxy::primary_target`]), with
    /// its epoch (see [`crate::replicas::History`]); an error while two
    /// servers claim the role.
    pub(super) fn primary_target(proxy: &Proxy) -> Result<(&ServerTarget, u32), End> {
        proxy
            .primary_target_in_epoch()
            .map_err(|why| End::NoServer {
                code: "57P03",
                message: why.into(),
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
    /// pools treat as transient, and the client stays connected. Behind a
    /// held-back BEGIN, the client is left in an aborted block.
    pub(super) fn refuse_no_primary(&mut self, unit: &Unit, why: &str) {
        let text = format!(
            "causeway: no primary server is available, so this statement was not run: {why}"
        );
        tracing::warn!(reason = %why, "no primary for a unit; answered with an error");
        crate::metrics::no_primary();
        self.refuse_unit(
            unit,
            "57P03",
            &text,
            Some("Reads still go to the replicas; retry the write when the primary is back."),
        );
    }

    /// Answers `unit` with an ERROR instead of running it (see
    /// [`Session::may_refuse_unit`]); the session goes on. Behind a
    /// held-back BEGIN the client is in a block, as far as it knows: as on
    /// a server, the error leaves it in an aborted block, which its
    /// ROLLBACK ends (see [`Session::answer_in_lost_block`]), unless the
    /// unit ended the block itself.
    pub(super) fn refuse_unit(&mut self, unit: &Unit, code: &str, text: &str, hint: Option<&str>) {
        messages::error_response(&mut self.to_client, Severity::Error, code, text, hint);
        crate::metrics::error_sent(code.as_bytes());
        let in_block = self.deferred_begin.take().is_some() && !unit.facts.ends_tx;
        let status = if in_block { b'E' } else { b'I' };
        self.lost_block = in_block;
        self.tx_status = status;
        if unit.synced {
            messages::ready_for_query(&mut self.to_client, status);
        }
    }

    /// The connection under an open transaction block was lost: every
    /// unit in flight gets an ERROR, and the client is left in an aborted
    /// block (or out of it, if the unit lost was its COMMIT or ROLLBACK).
    /// Returns whether it was so answered; if not, the session ends.
    pub(super) fn answer_lost_block(&mut self, attached: &Attached, why: &str) -> bool {
        if !self.block_survives_loss() {
            return false;
        }
        let ending = self.pending.iter().rev().find_map(|e| match e {
            Expect::Client(inflight) => Some(inflight.ends_tx),
            Expect::Internal(_) => None,
        });
        let name = &attached.lease.conn.server_name;
        tracing::warn!(server = %name, reason = %why, "server connection lost inside a transaction block; the client gets an error and an aborted block, its session goes on");
        let text = format!(
            "causeway: the connection to server \"{name}\" was lost inside this transaction block; the transaction is rolled back"
        );
        if ending == Some(true) && self.tx_wrote {
            // Its COMMIT may have been done: reads go to the primary until
            // a commit LSN is known again.
            self.causal_unknown = true;
        }
        let status = if ending == Some(true) { b'I' } else { b'E' };
        let mut answered = ending.is_some();
        for expect in std::mem::take(&mut self.pending) {
            if let Expect::Client(inflight) = expect {
                lost_error(&mut self.to_client, &text, inflight.lost, ROLL_BACK);
                messages::ready_for_query(&mut self.to_client, status);
            }
        }
        if let Some(open) = self.open_batch.take() {
            // A batch the client cut at a Flush: if it waits for an answer
            // of it, the ERROR now, and what it sends up to its Sync is
            // skipped, as Postgres skips it after an error; if not, its
            // next statement hears of the loss.
            let waits = !open.flushed_answered();
            if waits {
                lost_error(&mut self.to_client, &text, open.lost, ROLL_BACK);
                answered = true;
            }
            self.skip_to_sync = waits || open.saw_error;
        }
        self.lost_block = status == b'E';
        if self.lost_block && !answered {
            // Nothing was in flight: the next statement hears of it.
            self.lost_block_news = Some(text);
        }
        self.forget_lost_server(status);
        self.ready_after_lsn = None;
        self.deferred_begin = None;
        true
    }

    /// Whether losing the current connection now costs the client only its
    /// transaction block: no state a new connection cannot have (LISTEN,
    /// temp tables, ...), no COPY, no message half passed on.
    pub(super) fn block_survives_loss(&self) -> bool {
        self.pinned.is_empty()
            && self.open_batch.as_ref().is_none_or(|b| !b.copy_in)
            && self.server_streaming == 0
            && self.client_streaming == 0
            && self.optimistic.is_none()
            && self.pending.iter().all(|e| match e {
                Expect::Client(inflight) => !inflight.copy_in,
                Expect::Internal(_) => true,
            })
    }

    /// Whether the open block is one the proxy can move to the primary if
    /// its replica is lost (optimistic, or READ ONLY kept for replay).
    pub(super) fn block_moves_on_loss(&self) -> bool {
        matches!(
            self.current.as_ref().map(|a| a.server),
            Some(Server::Replica(_))
        ) && self
            .optimistic
            .as_ref()
            .is_some_and(|b| b.phase == super::optimistic::Phase::OnReplica)
    }

    /// Whether a unit of the open block can be refused with the block
    /// rolled back: nothing in flight, nothing a new connection lacks.
    pub(super) fn may_abort_block(&self) -> bool {
        self.tx_status != b'I'
            && self.deferred_begin.is_none()
            && self.pending.is_empty()
            && self.open_batch.is_none()
            && self.block_survives_loss()
    }
}

/// The advice of an ERROR for a unit lost inside a block.
const ROLL_BACK: &str = "Roll back, then retry the transaction.";

/// Writes the ERROR (08006) a client gets for a unit lost with its server:
/// `text`, what the server said as it went (`said`), and `advice`.
fn lost_error(out: &mut bytes::BytesMut, text: &str, said: Option<(String, String)>, advice: &str) {
    let (code, detail) = said.unwrap_or_else(|| {
        (
            "08006".into(),
            "server closed the connection unexpectedly".into(),
        )
    });
    messages::error_response(
        out,
        Severity::Error,
        "08006",
        text,
        Some(&format!("The server said: {code} {detail}. {advice}")),
    );
    crate::metrics::error_sent(b"08006");
}
