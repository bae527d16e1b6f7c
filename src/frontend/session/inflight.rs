//! What the session waits for from its server: a client unit in flight
//! (`InFlight`), with what its answers showed so far, or one of the proxy's
//! own requests (`Internal`), whose answers the client never sees. The
//! session keeps them in order, one per ReadyForQuery to come.

use super::state::Prepared;
use super::units::Unit;
use crate::protocol::messages;
use crate::router::{Effect, Server};

/// A ReadyForQuery the session waits for, and whose request it ends.
#[derive(Debug)]
pub enum Expect {
    Client(Box<InFlight>),
    Internal(Internal),
}

/// The proxy's own requests, whose answers the client never sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internal {
    /// Replaying settings or prepared statements.
    Setup,
    /// A BEGIN held back from the client.
    Begin,
    /// The commit LSN after a write.
    Lsn,
    /// Whether a block about to commit wrote (see `dispatch::WROTE_QUERY`).
    WroteCheck,
    /// The function catalog, read again after DDL that may change it.
    Catalog,
    /// The ROLLBACK of an optimistic block's replica transaction.
    Abandon,
}

/// A client unit the server is working on, and what its answers showed.
#[derive(Debug)]
pub struct InFlight {
    pub server: Server,
    /// It started with no transaction open.
    pub started_at_rest: bool,
    pub writes: bool,
    /// The transaction it is part of wrote (this unit or an earlier one).
    pub tx_wrote: bool,
    pub effects: Vec<Effect>,
    pub parses: super::parses::Parses,
    pub sql_prepares: Vec<(String, Prepared)>,
    pub closes: Vec<String>,
    /// The unit again, while it may still be re-run elsewhere.
    pub retry: Option<Unit>,
    /// A replica refused it; its answers are dropped and it runs again.
    pub refused: bool,
    /// The refusal's SQLSTATE and message.
    pub refusal: Option<(String, String)>,
    pub saw_error: bool,
    pub saw_commit: bool,
    pub saw_rollback: bool,
    /// Its `ROLLBACK TO SAVEPOINT`s not answered yet: their command tag is
    /// `ROLLBACK` too, and they end no transaction.
    pub rollbacks_to_savepoint: usize,
    pub parse_completes: usize,
    pub close_completes: usize,
    pub sent_at: std::time::Instant,
    /// SQLSTATEs of errors in a held-back answer.
    pub held_errors: Vec<String>,
    /// Digest of its answers (units of an optimistic block, and replays).
    pub digest: Option<super::optimistic::Digest>,
    /// The primary sent a FATAL while running it (SQLSTATE, message): the
    /// session survives, the client gets an ERROR for this unit.
    pub lost: Option<(String, String)>,
    /// A unit of an optimistic block replayed on the primary: its answers
    /// are digested, never passed on.
    pub replay: bool,
    /// It ends the transaction block (COMMIT, ROLLBACK, ...).
    pub ends_tx: bool,
    /// It sends COPY data after it starts.
    pub copy_in: bool,
    /// It leaves a transaction block open (`BEGIN` without its end).
    pub opens_tx: bool,
    /// A batch the client cut at a Flush and the proxy ended with a Sync
    /// of its own (see `Session::sync_open_batch`): the client hears no
    /// ReadyForQuery for it.
    pub synced_by_proxy: bool,
    /// For a batch cut at a Flush: how many of its messages get an answer
    /// that ends their part (ParseComplete, CommandComplete, ...), and how
    /// many such answers came; counted only while it is the open batch.
    pub answers_due: u32,
    pub answers: u32,
}

/// How many messages of an extended batch get an answer that ends their
/// part: Parse, Bind, Close and Execute one each, Describe its row
/// description or NoData.
fn answers_due(bytes: &[u8]) -> u32 {
    crate::protocol::frontend_messages(bytes)
        .filter(|(tag, _)| matches!(tag, b'P' | b'B' | b'C' | b'E' | b'D'))
        .count() as u32
}

/// Most units change no state: their lists are empty, and copying an
/// empty list should cost nothing.
fn clone_unless_empty<T: Clone>(list: &[T]) -> Vec<T> {
    if list.is_empty() {
        Vec::new()
    } else {
        list.to_vec()
    }
}

impl InFlight {
    pub fn new(unit: &Unit, server: Server, started_at_rest: bool) -> InFlight {
        InFlight {
            server,
            started_at_rest,
            writes: unit.facts.writes(),
            tx_wrote: unit.facts.writes(),
            effects: clone_unless_empty(&unit.facts.effects),
            parses: unit.parses.clone(),
            sql_prepares: clone_unless_empty(&unit.sql_prepares),
            closes: clone_unless_empty(&unit.closes),
            retry: None,
            refused: false,
            refusal: None,
            saw_error: false,
            saw_commit: false,
            saw_rollback: false,
            rollbacks_to_savepoint: unit
                .facts
                .effects
                .iter()
                .filter(|e| matches!(e, Effect::RollbackTo(_)))
                .count(),
            parse_completes: 0,
            close_completes: 0,
            sent_at: std::time::Instant::now(),
            held_errors: Vec::new(),
            digest: None,
            lost: None,
            replay: false,
            ends_tx: unit.facts.ends_tx,
            copy_in: unit.facts.copy_in,
            opens_tx: unit.facts.begin.is_some() && !unit.facts.ends_tx,
            synced_by_proxy: false,
            answers_due: if unit.synced {
                0
            } else {
                answers_due(&unit.bytes)
            },
            answers: 0,
        }
    }

    /// Notes an answer to the batch cut at a Flush this is.
    pub fn note_flushed(&mut self, tag: u8) {
        self.answers += u32::from(matches!(
            tag,
            b'1' | b'2' | b'3' | b'C' | b'I' | b's' | b'T' | b'n'
        ));
    }

    /// A batch cut at a Flush whose every message was answered, or which
    /// failed (the server then skips the rest up to the Sync): the client
    /// waits for nothing more from it.
    pub fn flushed_answered(&self) -> bool {
        self.saw_error || self.answers >= self.answers_due
    }

    /// Takes in the part of the batch sent before a Flush.
    pub fn absorb(&mut self, earlier: InFlight) {
        self.parses.prepend(earlier.parses);
        let mut closes = earlier.closes;
        closes.append(&mut self.closes);
        self.closes = closes;
        let mut effects = earlier.effects;
        effects.append(&mut self.effects);
        self.effects = effects;
        self.writes |= earlier.writes;
        self.ends_tx |= earlier.ends_tx;
        self.copy_in |= earlier.copy_in;
        self.opens_tx |= earlier.opens_tx;
        self.tx_wrote |= earlier.tx_wrote;
        self.saw_error |= earlier.saw_error;
        self.saw_commit |= earlier.saw_commit;
        self.saw_rollback |= earlier.saw_rollback;
        self.rollbacks_to_savepoint += earlier.rollbacks_to_savepoint;
        self.parse_completes += earlier.parse_completes;
        self.close_completes += earlier.close_completes;
        self.started_at_rest = earlier.started_at_rest;
        self.sent_at = earlier.sent_at;
    }

    /// Its transaction ended without committing: a ROLLBACK, or an error
    /// in a unit that began and ended it.
    pub(super) fn rolled_back(&self) -> bool {
        self.saw_rollback || (self.saw_error && self.started_at_rest)
    }

    pub(super) fn note(&mut self, tag: u8, message: &[u8]) {
        match tag {
            b'1' => self.parse_completes += 1,
            b'3' => self.close_completes += 1,
            b'E' => {
                self.saw_error = true;
                // Nothing more of the unit runs: no ROLLBACK TO answers.
                self.rollbacks_to_savepoint = 0;
                let fields = messages::parse_error_fields(&message[5..]);
                if self.retry.is_some() && !self.refused && self.server != Server::Primary {
                    self.refused = super::refusals::is_replica_refusal(&fields);
                    if self.refused {
                        self.refusal = Some((fields.code.clone(), fields.message.clone()));
                    }
                }
                if self.replay {
                    // Never reaches the client.
                } else if self.retry.is_some() {
                    // Held back: counted only if it reaches the client.
                    self.held_errors.push(fields.code);
                } else {
                    crate::metrics::error_sent(fields.code.as_bytes());
                }
            }
            b'C' => {
                let tag = &message[5..];
                if tag.starts_with(b"COMMIT") {
                    self.saw_commit = true;
                } else if tag.starts_with(b"ROLLBACK") {
                    // Taken in order: a unit's ROLLBACK TOs are answered
                    // before anything after them (a ROLLBACK sent ahead of
                    // a ROLLBACK TO would be taken for it, and the ROLLBACK
                    // TO then fails with no block to roll back in).
                    if self.rollbacks_to_savepoint > 0 && tag.starts_with(b"ROLLBACK\0") {
                        self.rollbacks_to_savepoint -= 1;
                    } else {
                        self.saw_rollback = true;
                    }
                }
            }
            _ => {}
        }
    }
}
