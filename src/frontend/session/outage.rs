//! Losing a server without losing the session: units that need the
//! primary while there is none are answered with an `ERROR` (57P03); units
//! in flight on a primary that goes away get an `ERROR` (08006) for each,
//! instead of the FATAL that would close the client; a connection closed
//! between units is replaced at the next one. A transaction block open on
//! a lost server is lost with it: its client gets an `ERROR` and is left in
//! an aborted block, answered here as Postgres answers one (`25P02` until
//! `ROLLBACK`), and then goes on; its session is closed only when the
//! server held state a new connection cannot have (LISTEN, temp tables, a
//! COPY or a message half sent).

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

    /// A unit of an open block needs the primary and there is none to be
    /// sure of: the block's connection is closed (which rolls it back), and
    /// the unit gets ERROR 57P03, or `ROLLBACK` if it was one. The client
    /// is then in an aborted block, unless the unit ended it.
    pub(super) fn abort_block_without_primary(&mut self, unit: &Unit, why: &str) {
        tracing::warn!(reason = %why, "no primary for a unit inside a block; the block is rolled back");
        crate::metrics::no_primary();
        self.current = None;
        self.set_cancel_target();
        self.tx_wrote = false;
        self.tx_effects.clear();
        if ends_block_alone(unit) && self.is_rollback(unit) {
            self.keep_statements_made(unit);
            self.lost_block = false;
            self.tx_status = b'I';
            super::local::respond(
                &mut self.to_client,
                &unit.bytes,
                &super::local::Answer::Tag("ROLLBACK"),
                b'I',
            );
            return;
        }
        let status = if unit.facts.ends_tx { b'I' } else { b'E' };
        let text = format!(
            "causeway: no primary server is available, so this transaction was rolled back: {why}"
        );
        messages::error_response(
            &mut self.to_client,
            Severity::Error,
            "57P03",
            &text,
            Some("Retry the transaction when the primary is back."),
        );
        crate::metrics::error_sent(b"57P03");
        if unit.synced {
            messages::ready_for_query(&mut self.to_client, status);
        }
        self.lost_block = status == b'E';
        self.tx_status = status;
    }

    /// Whether `unit`, in a block aborted on its server, uses a statement
    /// of the session's that the server lacks: made there now, it would
    /// fail (25P02), and the server would then say that it does not exist
    /// (26000), where Postgres, which has it, says the block is aborted.
    /// Such a unit is answered here, as one of a lost block is. A unit that
    /// ends the block or rolls back to a savepoint goes to the server: its
    /// statement can be made in an aborted block.
    pub(super) fn lacks_statement_in_aborted_block(&self, unit: &Unit) -> bool {
        if self.tx_status != b'E' || self.lost_block || unit.facts.ends_tx {
            return false;
        }
        let rolls_back = unit
            .facts
            .effects
            .iter()
            .any(|e| matches!(e, crate::router::Effect::RollbackTo(_)));
        let Some(attached) = self.current.as_ref().filter(|_| !rolls_back) else {
            return false;
        };
        let server = &attached.lease.conn.prepared;
        unit.needs().iter().any(|name| {
            self.state
                .prepared
                .get(name)
                .is_some_and(|p| server.get(name).map(|s| s.hash) != Some(p.hash))
        })
    }

    /// Answers a unit of a block lost with its server, as Postgres answers
    /// one in an aborted block: COMMIT, ROLLBACK (or END, ABORT) alone end
    /// it with `ROLLBACK`; anything else fails with 25P02.
    pub(super) fn answer_in_lost_block(&mut self, unit: &Unit) {
        let news = self.lost_block_news.take();
        if ends_block_alone(unit) {
            self.keep_statements_made(unit);
            self.lost_block = false;
            self.tx_status = b'I';
            super::local::respond(
                &mut self.to_client,
                &unit.bytes,
                &super::local::Answer::Tag("ROLLBACK"),
                b'I',
            );
            return;
        }
        let mut news = news;
        let mut failed = false;
        let mut closes = unit.closes.iter();
        for (tag, _) in crate::protocol::frontend_messages(&unit.bytes) {
            match tag {
                b'S' | b'Q' => {
                    if tag == b'Q' && !failed {
                        aborted_error(&mut self.to_client, news.take());
                    }
                    messages::ready_for_query(&mut self.to_client, b'E');
                    failed = false;
                }
                // Closing a statement works in an aborted block.
                b'C' if !failed => {
                    if let Some(name) = closes.next() {
                        self.state.prepared.remove(name);
                    }
                    messages::simple_message(&mut self.to_client, b'3')
                }
                b'C' => {
                    closes.next();
                }
                b'P' | b'B' | b'E' | b'D' | b'F' if !failed => {
                    aborted_error(&mut self.to_client, news.take());
                    failed = true;
                }
                _ => {}
            }
        }
    }
}

impl Session {
    /// Files the statements a unit answered without a server made and
    /// closed, as Postgres makes a block's end in an aborted block: a
    /// client may run them by name later (postgres.js prepares its
    /// `rollback`). No server has them yet; the one that runs them next
    /// is given them first.
    fn keep_statements_made(&mut self, unit: &Unit) {
        for (name, prepared) in unit.parses.named() {
            self.state.prepared.insert(name.clone(), prepared.clone());
        }
        for name in &unit.closes {
            self.state.prepared.remove(name);
        }
    }

    /// The SQL of a unit that is one BEGIN (or START TRANSACTION) in the
    /// extended protocol and nothing else, not serializable: Parse, Bind,
    /// Describe and Execute, with or without its Sync (pgjdbc sends a
    /// prepared `BEGIN` so, with no Sync, ahead of the block's first
    /// statement). The text is the Parse's, or that of the statement the
    /// Bind names.
    pub(super) fn extended_begin_alone(&self, unit: &Unit) -> Option<String> {
        let facts = &unit.facts;
        let begins = facts.begin.is_some()
            && !facts.ends_tx
            && !facts.serializable
            && facts.effects.is_empty()
            && statements(unit) == Some(1);
        if !begins {
            return None;
        }
        let mut sql = None;
        for (tag, body) in crate::protocol::frontend_messages(&unit.bytes) {
            match tag {
                b'P' => sql = super::units::sql_texts(&unit.bytes).into_iter().next(),
                b'B' if sql.is_none() => {
                    let rest = body
                        .iter()
                        .position(|&b| b == 0)
                        .map(|end| &body[end + 1..])?;
                    let name = rest.iter().position(|&b| b == 0).map(|n| &rest[..n])?;
                    let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty())?;
                    sql = self.state.prepared.get(name)?.replay.sql();
                }
                b'B' | b'D' | b'E' | b'S' | b'H' => {}
                _ => return None,
            }
        }
        sql.map(|sql| sql.into_owned())
    }

    /// Answers an extended-protocol BEGIN alone (see
    /// [`Session::extended_begin_alone`]) itself, as a server would, and
    /// keeps it, as the simple Query `sql`, for the block's first
    /// statement (see [`Session::hold_begin`]).
    pub(super) fn hold_extended_begin(&mut self, unit: Unit, sql: &str) {
        self.keep_statements_made(&unit);
        let mut begin = bytes::BytesMut::new();
        messages::query(&mut begin, sql);
        self.deferred_begin_read_write = unit.facts.read_write;
        self.deferred_begin = Some(begin.freeze());
        super::local::respond(
            &mut self.to_client,
            &unit.bytes,
            &super::local::Answer::Tag("BEGIN"),
            b'T',
        );
        self.tx_status = b'T';
    }

    /// Whether `unit`'s statement is a ROLLBACK (or ABORT) of the whole
    /// block: its own text, or that of the prepared statement it binds.
    fn is_rollback(&self, unit: &Unit) -> bool {
        let Some((tag, body)) = crate::protocol::frontend_messages(&unit.bytes).next() else {
            return false;
        };
        let name_end = body.iter().position(|&b| b == 0);
        let sql = match (tag, name_end) {
            (b'Q', _) => String::from_utf8_lossy(body),
            // Parse: the statement's name, then its SQL.
            (b'P', Some(end)) => String::from_utf8_lossy(&body[end + 1..]),
            // Bind: the portal's name, then the statement's.
            (b'B', Some(end)) => {
                let rest = &body[end + 1..];
                let name = rest.iter().position(|&b| b == 0).map(|n| &rest[..n]);
                let prepared = name
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .and_then(|n| self.state.prepared.get(n));
                match prepared.and_then(|p| p.replay.sql()) {
                    Some(sql) => sql,
                    None => return false,
                }
            }
            _ => return false,
        };
        let sql = sql.to_ascii_uppercase();
        let words: Vec<&str> = sql
            .split(|c: char| c.is_whitespace() || c == ';' || c == '\0')
            .filter(|w| !w.is_empty())
            .take(2)
            .collect();
        matches!(words.first(), Some(&"ROLLBACK") | Some(&"ABORT"))
            && !matches!(words.get(1), Some(&"TO") | Some(&"PREPARED"))
    }
}

/// Postgres's answer to a statement in an aborted transaction block; the
/// first one after the block was lost says why instead.
fn aborted_error(out: &mut bytes::BytesMut, lost: Option<String>) {
    let (code, text) = match &lost {
        Some(text) => ("08006", text.as_str()),
        None => (
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        ),
    };
    let hint = lost
        .as_ref()
        .map(|_| "Roll back, then retry the transaction.");
    messages::error_response(out, Severity::Error, code, text, hint);
    crate::metrics::error_sent(code.as_bytes());
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

/// How many statements `unit` runs: each simple Query's (`None` past one
/// in a Query), and one per Execute.
fn statements(unit: &Unit) -> Option<usize> {
    let mut statements = 0;
    for (tag, body) in crate::protocol::frontend_messages(&unit.bytes) {
        match tag {
            b'Q' => {
                let sql = String::from_utf8_lossy(body);
                let sql = sql.trim_end_matches('\0').trim().trim_end_matches(';');
                if sql.contains(';') {
                    return None;
                }
                statements += 1;
            }
            b'E' => statements += 1,
            _ => {}
        }
    }
    Some(statements)
}

/// Whether `unit` is one COMMIT, ROLLBACK, END or ABORT and nothing else.
fn ends_block_alone(unit: &Unit) -> bool {
    unit.facts.ends_tx && statements(unit) == Some(1)
}

/// Whether `unit` is one simple-protocol BEGIN (or START TRANSACTION) and
/// nothing else, not serializable: one the session may hold back (see
/// `Session::hold_begin`, which answers it as a simple Query).
pub(super) fn begins_alone(unit: &Unit) -> bool {
    let facts = &unit.facts;
    facts.begin.is_some()
        && !facts.ends_tx
        && !facts.serializable
        && facts.effects.is_empty()
        && unit.bytes.first() == Some(&b'Q')
        && statements(unit) == Some(1)
}
