//! Optimistic transactions (`[routing] optimistic_transactions`): a plain
//! `BEGIN` block starts on a replica fresh for the session, and moves to the
//! primary only when a statement that may write arrives.
//!
//! ORMs wrap every unit of work in `BEGIN` ... `COMMIT` (SQLAlchemy's
//! session, pgjdbc with `autoCommit=false`, Spring's `@Transactional`), and
//! most of those blocks only read. Sending them all to the primary, because
//! a write *may* follow, leaves the replicas idle. Here the block runs on a
//! replica, and the proxy keeps two things: the client's units, for replay
//! (bounded by `optimistic_max_statements` and `optimistic_max_bytes`), and
//! a digest of every byte it passed back to the client. When a unit that
//! may write comes (or the bound is reached, or a replica refuses or
//! fails), the replica's transaction is rolled back, the `BEGIN` and every
//! unit so far are replayed on the primary with their answers swallowed,
//! and the digests are compared:
//! - equal: the primary gave exactly the answers the client already has, so
//!   the block goes on there as if it had started there; the write runs;
//! - different: the client gets SQLSTATE 40001 (`could not serialize
//!   access`) instead of its write, and its transaction is failed on the
//!   primary: it rolls back and retries, as drivers and ORMs do for 40001.
//!   Nothing is written on the basis of answers the primary would not give.
//!
//! Which blocks write is learned by the shape of their first statement
//! (see `crate::shapes`): shapes that usually write start on the primary and
//! pay no replay.

use bytes::{Bytes, BytesMut};

use super::inflight::{Expect, InFlight, Internal};
use super::units::Unit;
use super::{End, Session};
use crate::router::{Reason, Server};

/// FNV-1a, 64 bits: the digest of answers. Not for security: both sides
/// are our servers; it only has to tell different answers apart.
pub const DIGEST_START: u64 = 0xcbf2_9ce4_8422_2325;

pub fn fold(mut digest: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        digest ^= u64::from(b);
        digest = digest.wrapping_mul(0x0100_0000_01b3);
    }
    digest
}

/// The digest of one unit's answers, the same however the bytes are cut
/// into reads: whole 8-byte words are folded at a time (eight times fewer
/// steps than a byte at a time; a replica's large answers pass through
/// it), and the bytes of a word not yet complete wait in `tail`.
#[derive(Debug, Clone, Copy)]
pub struct Digest {
    state: u64,
    tail: u64,
    tail_len: u32,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            state: DIGEST_START,
            tail: 0,
            tail_len: 0,
        }
    }
}

impl Digest {
    pub fn update(&mut self, mut bytes: &[u8]) {
        while self.tail_len != 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            self.push_tail(b);
            bytes = rest;
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.mix(u64::from_le_bytes(w));
        }
        for &b in words.remainder() {
            self.push_tail(b);
        }
    }

    fn push_tail(&mut self, b: u8) {
        self.tail |= u64::from(b) << (8 * self.tail_len);
        self.tail_len += 1;
        if self.tail_len == 8 {
            let word = self.tail;
            (self.tail, self.tail_len) = (0, 0);
            self.mix(word);
        }
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    /// The digest of every byte so far, with how many there were past the
    /// last whole word.
    pub fn finish(mut self) -> u64 {
        let last = self.tail | (u64::from(self.tail_len) << 56);
        self.mix(last);
        self.state
    }
}

/// Where an optimistic block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running on a replica.
    OnReplica,
    /// Moving: the replica's transaction is being rolled back (or the
    /// replica is gone); the replay starts once nothing is in flight.
    Leaving,
    /// The primary is answering the replayed units; `left` still to come.
    Replaying { left: usize },
}

/// Why the block moved to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// A unit that may write.
    Write,
    /// Past `optimistic_max_statements` or `optimistic_max_bytes`.
    Overflow,
    /// The replica refused a unit, or failed.
    Replica,
}

impl Move {
    pub fn as_str(self) -> &'static str {
        match self {
            Move::Write => "write",
            Move::Overflow => "overflow",
            Move::Replica => "replica",
        }
    }
}

/// An optimistic block in progress.
#[derive(Debug)]
pub struct Optimistic {
    /// The client's `BEGIN`, held back by the proxy.
    pub begin: Bytes,
    /// The units run on the replica, in order, for replay.
    pub units: Vec<Unit>,
    /// Bytes of `units`.
    pub bytes: usize,
    /// Digest of every answer byte the client was given in the block.
    pub digest: u64,
    /// Digest of the primary's answers to the replay.
    pub replay_digest: u64,
    pub phase: Phase,
    pub moved: Option<Move>,
    /// The block's shape, for learning which blocks write.
    pub shape: Option<String>,
    /// A `READ ONLY` block: it never moves for a write (the replica fails
    /// one as the primary would), only when its replica refuses a unit or
    /// fails; kept for replay only while it is within bounds.
    pub read_only: bool,
}

impl Optimistic {
    pub fn new(begin: Bytes, shape: Option<String>) -> Optimistic {
        Optimistic {
            begin,
            units: Vec::new(),
            bytes: 0,
            digest: DIGEST_START,
            replay_digest: DIGEST_START,
            phase: Phase::OnReplica,
            moved: None,
            shape,
            read_only: false,
        }
    }

    /// A `READ ONLY` block on a replica, kept so that it can move to the
    /// primary if the replica fails under it.
    pub fn read_only(begin: Bytes) -> Optimistic {
        Optimistic {
            read_only: true,
            ..Optimistic::new(begin, None)
        }
    }

    /// Whether one more unit of `len` bytes stays within the bounds.
    pub fn has_room(&self, len: usize, max_units: usize, max_bytes: usize) -> bool {
        self.units.len() < max_units && self.bytes + len <= max_bytes
    }

    pub fn record(&mut self, unit: &Unit) {
        self.bytes += unit.bytes.len();
        self.units.push(unit.clone());
    }

    /// Forgets the last unit recorded: the replica refused it, and it will
    /// run again on the primary after the replay.
    pub fn forget_last(&mut self) {
        if let Some(unit) = self.units.pop() {
            self.bytes -= unit.bytes.len();
        }
    }

    /// Adds a finished unit's answer digest to the block's.
    pub fn answered(&mut self, unit_digest: u64) {
        self.digest = fold(self.digest, &unit_digest.to_le_bytes());
    }

    /// Adds a replayed unit's answer digest; true once the last is in.
    pub fn replayed(&mut self, unit_digest: u64) -> bool {
        self.replay_digest = fold(self.replay_digest, &unit_digest.to_le_bytes());
        if let Phase::Replaying { left } = &mut self.phase {
            *left = left.saturating_sub(1);
            return *left == 0;
        }
        false
    }

    pub fn matches(&self) -> bool {
        self.digest == self.replay_digest
    }
}

/// The statement that fails the client's transaction on the primary when
/// the replay's answers differ: an ErrorResponse 40001 and ReadyForQuery
/// 'E', which is also what an extended batch that fails answers.
pub fn mismatch_unit() -> Unit {
    let mut bytes = BytesMut::new();
    crate::protocol::messages::query(
        &mut bytes,
        "DO $causeway$BEGIN RAISE EXCEPTION USING ERRCODE = '40001', \
         MESSAGE = 'could not serialize access due to concurrent update', \
         DETAIL = 'causeway: this transaction read on a replica, and the primary gave other answers when its first write arrived', \
         HINT = 'The transaction might succeed if retried.'; END$causeway$",
    );
    Unit {
        bytes: bytes.freeze(),
        synced: true,
        ..Unit::default()
    }
}

/// What the dispatcher does with the next unit of an optimistic block.
pub enum Step {
    /// Nothing now: answers are still coming.
    Wait,
    /// Look again: the block changed phase.
    Continue,
    /// Send the next unit here.
    Route(Server, Reason),
}

impl Session {
    /// Whether plain blocks may start on a replica.
    pub(super) fn optimistic_enabled(&self) -> bool {
        self.proxy.config.routing.optimistic_transactions
    }

    /// Starts a held-back BEGIN's block on a replica fresh for the session,
    /// unless its shape usually writes (then the primary, reason
    /// `learned_write`) or no replica can take it.
    pub(super) async fn start_optimistic(&mut self, begin: Bytes) -> Result<(Server, Reason), End> {
        let shape = self.queued.front().and_then(|unit| self.shape_of(unit));
        if shape
            .as_deref()
            .is_some_and(|s| self.proxy.shapes.mostly_writes(s))
        {
            crate::metrics::optimistic("started_on_primary", "");
            return Ok((Server::Primary, Reason::LearnedWrite));
        }
        match self.choose_replica(false).await? {
            Some((Server::Replica(i), _)) => {
                self.optimistic = Some(Box::new(Optimistic::new(begin, shape)));
                Ok((Server::Replica(i), Reason::Optimistic))
            }
            _ => Ok((Server::Primary, Reason::Transaction)),
        }
    }

    /// A unit at rest that opens a plain block and only reads in it
    /// (`BEGIN` sent in one batch with the first statements).
    pub(super) fn opens_optimistic_block(&self, unit: &Unit) -> bool {
        let facts = &unit.facts;
        self.optimistic_enabled()
            && unit.synced
            && super::units::executes(&unit.bytes)
            && facts.begin == Some(false)
            && !facts.ends_tx
            && !facts.serializable
            && facts.write_reason.is_none()
            && facts.effects.is_empty()
            && facts.pins.is_empty()
            && facts.hint.is_none()
            && self.pinned.is_empty()
            && !self.view().serializable
    }

    /// The shape of a block that starts with `unit`: its first SQL text
    /// after the BEGIN, with literals blanked.
    fn shape_of(&self, unit: &Unit) -> Option<String> {
        let texts = super::units::sql_texts(&unit.bytes);
        let first = texts.into_iter().find(|sql| {
            let head = sql.trim_start().get(..5).unwrap_or("").to_ascii_uppercase();
            head != "BEGIN" && head != "START"
        });
        let sql = match first {
            Some(sql) => sql.to_string(),
            None => {
                let name = unit.uses.first()?;
                self.state.prepared.get(name)?.replay.sql()?.to_string()
            }
        };
        Some(crate::router::normalize::literal_blind_key(&sql).unwrap_or(sql))
    }

    /// The next step of the optimistic block in progress.
    pub(super) async fn optimistic_step(&mut self) -> Result<Step, End> {
        let Some(phase) = self.optimistic.as_ref().map(|b| b.phase) else {
            return Ok(Step::Wait);
        };
        match phase {
            Phase::OnReplica => Ok(self.on_replica_step()),
            Phase::Leaving => {
                if !self.pending.is_empty() {
                    return Ok(Step::Wait);
                }
                self.replay_on_primary().await?;
                Ok(Step::Continue)
            }
            Phase::Replaying { left } if left > 0 || !self.pending.is_empty() => Ok(Step::Wait),
            Phase::Replaying { .. } => {
                let Some(block) = self.optimistic.take() else {
                    return Ok(Step::Continue);
                };
                let why = block.moved.unwrap_or(Move::Write);
                if let Some(shape) = &block.shape {
                    self.proxy.shapes.record(shape, why == Move::Write);
                }
                if block.matches() {
                    crate::metrics::optimistic("matched", why.as_str());
                    let reason = if why == Move::Overflow {
                        Reason::OptimisticOverflow
                    } else {
                        Reason::Transaction
                    };
                    return Ok(Step::Route(Server::Primary, reason));
                }
                crate::metrics::optimistic("mismatched", why.as_str());
                tracing::debug!(
                    "optimistic transaction: the primary's answers differ; failing it with 40001"
                );
                // The client's unit is answered by the 40001 in its place.
                self.queued.pop_front();
                self.queued.push_front(mismatch_unit());
                Ok(Step::Route(Server::Primary, Reason::Transaction))
            }
        }
    }

    /// On the replica: reads stay (and are kept for replay) while there is
    /// room; the end of the block ends it there; anything else moves it.
    fn on_replica_step(&mut self) -> Step {
        let routing = &self.proxy.config.routing;
        let (max_units, max_bytes) = (
            routing.optimistic_max_statements,
            routing.optimistic_max_bytes,
        );
        let replica = match self.current.as_ref().map(|a| a.server) {
            Some(server @ Server::Replica(_)) => Some(server),
            _ => None,
        };
        // One unit at a time: if the replica refuses one, nothing sent
        // behind it may have reached the client.
        if !self.pending.is_empty() || self.open_batch.is_some() {
            return Step::Wait;
        }
        let (Some(unit), Some(block)) = (self.queued.front(), self.optimistic.as_mut()) else {
            return Step::Wait;
        };
        let usable = unit.synced && !unit.retried;
        let ends = usable
            && unit.facts.ends_tx
            && unit.facts.begin.is_none()
            && !unit.facts.writes()
            && unit.facts.effects.is_empty();
        let reads = usable && unit.facts.is_read();
        let room = block.has_room(unit.bytes.len(), max_units, max_bytes);
        if let Some(server) = replica {
            if block.read_only && !unit.retried {
                if usable && (room || ends) {
                    return Step::Route(server, Reason::Transaction);
                }
                // Too long to replay, or cut at a Flush (whose answers
                // come before the Sync that would tell a refusal): the
                // block runs on where it is, as one that cannot move (a
                // replica lost under it now fails it).
                self.optimistic = None;
                return Step::Continue;
            }
            if ends || (reads && room) {
                return Step::Route(server, Reason::Optimistic);
            }
        }
        // Move to the primary.
        let why = if replica.is_none() || unit.retried {
            Move::Replica
        } else if reads {
            Move::Overflow
        } else {
            Move::Write
        };
        block.moved = Some(why);
        block.phase = Phase::Leaving;
        if replica.is_some() {
            self.pending.push_back(Expect::Internal(Internal::Abandon));
            crate::protocol::messages::query(&mut self.to_server, "ROLLBACK");
        }
        Step::Continue
    }

    /// Opens the block on the primary and replays its units there, their
    /// answers swallowed and digested.
    async fn replay_on_primary(&mut self) -> Result<(), End> {
        self.attach(Server::Primary).await?;
        let Some(block) = self.optimistic.as_mut() else {
            return Ok(());
        };
        let units = std::mem::take(&mut block.units);
        block.phase = Phase::Replaying { left: units.len() };
        let begin = block.begin.clone();
        crate::metrics::optimistic_replayed(units.len());
        // Settings outside the transaction, as they were when it began.
        self.catch_up_for(&Unit::default(), false)?;
        if !begin.is_empty() {
            self.pending.push_back(Expect::Internal(Internal::Begin));
            self.to_server.extend_from_slice(&begin);
        }
        for unit in units {
            self.catch_up_for(&unit, true)?;
            // The units go in one pipeline: what one prepares, the next
            // may use, before any answer has updated the mirror.
            if let Some(attached) = self.current.as_mut() {
                let made = unit
                    .parses
                    .named()
                    .chain(unit.sql_prepares.iter().map(|(n, p)| (n, p)));
                for (name, prepared) in made {
                    attached.lease.conn.note_statement(name, prepared.hash);
                }
            }
            self.to_server.extend_from_slice(&unit.bytes);
            let mut inflight = InFlight::new(&unit, Server::Primary, false);
            inflight.replay = true;
            inflight.digest = Some(Digest::default());
            self.pending.push_back(Expect::Client(Box::new(inflight)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(pieces: &[&[u8]]) -> u64 {
        let mut d = Digest::default();
        for piece in pieces {
            d.update(piece);
        }
        d.finish()
    }

    #[test]
    fn a_units_digest_does_not_depend_on_how_its_answers_were_read() {
        let answer: Vec<u8> = (0..200u8).collect();
        let whole = digest(&[&answer]);
        for cut in [1, 3, 7, 8, 9, 64, 199] {
            let (a, b) = answer.split_at(cut);
            assert_eq!(digest(&[a, b]), whole, "cut at {cut}");
            let (b, c) = b.split_at(b.len() / 2);
            assert_eq!(digest(&[a, &[], b, c]), whole, "cut at {cut} and after");
        }
        let bytes: Vec<&[u8]> = answer.chunks(1).collect();
        assert_eq!(digest(&bytes), whole);
        // Other bytes, fewer bytes, a trailing zero, a swap: all differ.
        let mut changed = answer.clone();
        changed[100] ^= 0x80;
        assert_ne!(digest(&[&changed]), whole);
        assert_ne!(digest(&[&answer[..199]]), whole);
        assert_ne!(digest(&[b"row 1"]), digest(&[b"row 1\0"]));
        assert_ne!(digest(&[b"ab"]), digest(&[b"ba"]));
        assert_ne!(digest(&[]), digest(&[b"\0"]));
    }

    #[test]
    fn digests_tell_answers_apart_and_replays_complete() {
        assert_ne!(fold(DIGEST_START, b"D1"), fold(DIGEST_START, b"D2"));
        assert_eq!(
            fold(fold(DIGEST_START, b"ab"), b"c"),
            fold(DIGEST_START, b"abc")
        );
        let mut block = Optimistic::new(Bytes::from_static(b"Q"), None);
        block.answered(fold(DIGEST_START, b"row 1"));
        block.answered(fold(DIGEST_START, b"row 2"));
        block.phase = Phase::Replaying { left: 2 };
        assert!(!block.replayed(fold(DIGEST_START, b"row 1")));
        assert!(block.replayed(fold(DIGEST_START, b"row 2")));
        assert!(block.matches());
        let mut other = Optimistic::new(Bytes::new(), None);
        other.answered(fold(DIGEST_START, b"row 1"));
        other.phase = Phase::Replaying { left: 1 };
        assert!(other.replayed(fold(DIGEST_START, b"row 1, changed")));
        assert!(!other.matches());
        assert!(block.has_room(10, 3, 100));
        assert!(!block.has_room(101, 3, 100));
    }
}
