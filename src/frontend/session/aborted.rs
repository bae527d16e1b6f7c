//! A transaction block's end and start as Postgres answers them when the
//! server that would is gone or cannot: a block lost with its server (or
//! aborted for want of a primary) is answered here as an aborted block is
//! (`25P02` until `ROLLBACK`), with the statements its end makes kept; a
//! BEGIN that needs the missing primary is answered and held back, since
//! on a server it cannot fail.

use super::units::{bound_statement, parsed_sql, Unit};
use super::Session;
use crate::protocol::messages::{self, Severity};

impl Session {
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
            self.end_block_here(unit);
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
            self.end_block_here(unit);
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

    /// Answers a COMMIT or ROLLBACK (END, ABORT) alone outside any block,
    /// as Postgres does: a WARNING (25P01) that no transaction is in
    /// progress, unless the session raised `client_min_messages` above
    /// warnings, and the command's tag. Used while no primary can take it,
    /// where refusing it would fail a driver's ROLLBACK in an error path.
    pub(super) fn end_outside_block(&mut self, commit: bool) {
        let quiet = self
            .state
            .settings
            .get("client_min_messages")
            .is_some_and(|set| {
                let set = set.to_ascii_lowercase();
                ["error", "fatal", "panic"].iter().any(|l| set.contains(l))
            });
        if !quiet {
            messages::warning(
                &mut self.to_client,
                "25P01",
                "there is no transaction in progress",
            );
        }
        let tag = if commit { "COMMIT" } else { "ROLLBACK" };
        messages::command_complete(&mut self.to_client, tag);
        messages::ready_for_query(&mut self.to_client, b'I');
    }

    /// Ends the client's block with the `ROLLBACK` its unit (a COMMIT,
    /// ROLLBACK, END or ABORT alone) gets from Postgres in an aborted block.
    fn end_block_here(&mut self, unit: &Unit) {
        self.keep_statements_made(unit);
        self.lost_block = false;
        self.tx_status = b'I';
        super::local::respond(
            &mut self.to_client,
            &unit.bytes,
            &super::local::Answer::Tag("ROLLBACK"),
            b'I',
        );
    }

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
                b'P' => sql = Some(parsed_sql(body)),
                b'B' if sql.is_none() => {
                    sql = self.state.prepared.get(bound_statement(body))?.replay.sql();
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
        let sql = match tag {
            b'Q' => String::from_utf8_lossy(body),
            b'P' => parsed_sql(body),
            b'B' => {
                let prepared = self.state.prepared.get(bound_statement(body));
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
