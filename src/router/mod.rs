//! Where a request goes, decided as data before any server is touched.
//!
//! [`facts`] turns a request's SQL into [`UnitFacts`]: is it a read, does
//! it open or close a transaction, what session state does it change.
//! [`decide`] turns those facts and the session's situation into a
//! [`Decision`], and [`pick_replica`] chooses among replicas from their
//! published positions. All of it is pure: tested with plain values.

mod cache;
pub mod classify;
pub mod facts;
pub mod normalize;

use std::time::Duration;

use crate::lsn::Lsn;
use crate::replicas::Positions;
pub use facts::{Effect, UnitFacts};

/// A server a request can go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    Primary,
    Replica(usize),
}

/// Why a request went where it went; a label on metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// It writes, or might: it must run on the primary.
    Write,
    /// Part of a transaction block that runs on the primary.
    Transaction,
    /// The session holds state only the primary has (LISTEN, temp tables...).
    Pinned,
    /// A `/* causeway: primary */` or `/* causeway: replica */` hint.
    Hint,
    /// A read, on a replica that has replayed the session's writes.
    Fresh,
    /// A read of a session that never wrote, on a replica within max lag.
    WithinLag,
    /// A READ ONLY transaction block, on one replica.
    ReadOnlyTransaction,
    /// A read that found no replica fresh enough in time.
    Stale,
    /// A read with no healthy replica at all.
    NoReplica,
    /// A read pipelined behind a request still running on the primary.
    Pipelined,
    /// A read a replica refused (read-only or recovery conflict), re-run.
    Retry,
    /// Changes session state only (SET, PREPARE, ...).
    Session,
    /// A read in a SERIALIZABLE transaction, which a hot standby refuses.
    Serializable,
    /// Part of an optimistic transaction block, on a replica.
    Optimistic,
    /// An optimistic block past its replay bound, moved to the primary.
    OptimisticOverflow,
    /// A block whose shape usually writes: started on the primary.
    LearnedWrite,
    /// A read whose causal LSN cannot be known now (its commit's LSN was
    /// lost with the primary, or the shared causal store does not
    /// answer): only the primary is sure to have the write.
    CausalUnknown,
}

impl Reason {
    /// Every reason, in declaration order: `reason as usize` indexes it.
    pub const ALL: [Reason; 17] = [
        Reason::Write,
        Reason::Transaction,
        Reason::Pinned,
        Reason::Hint,
        Reason::Fresh,
        Reason::WithinLag,
        Reason::ReadOnlyTransaction,
        Reason::Stale,
        Reason::NoReplica,
        Reason::Pipelined,
        Reason::Retry,
        Reason::Session,
        Reason::Serializable,
        Reason::Optimistic,
        Reason::OptimisticOverflow,
        Reason::LearnedWrite,
        Reason::CausalUnknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Write => "write",
            Reason::Transaction => "transaction",
            Reason::Pinned => "pinned",
            Reason::Hint => "hint",
            Reason::Fresh => "fresh",
            Reason::WithinLag => "within_lag",
            Reason::ReadOnlyTransaction => "read_only_transaction",
            Reason::Stale => "stale",
            Reason::NoReplica => "no_replica",
            Reason::Pipelined => "pipelined",
            Reason::Retry => "retry",
            Reason::Session => "session_state",
            Reason::Serializable => "serializable",
            Reason::Optimistic => "optimistic",
            Reason::OptimisticOverflow => "optimistic_overflow",
            Reason::LearnedWrite => "learned_write",
            Reason::CausalUnknown => "causal_unknown",
        }
    }
}

/// What to do when no replica has replayed far enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    /// Wait up to `max_wait_ms` for one to catch up, then use the primary.
    Wait,
    /// Use the primary at once.
    Primary,
    /// Fail the read with an error the client can see.
    Error,
}

/// The routing settings from the config.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub on_stale: OnStale,
    pub max_wait: Duration,
    pub max_lag_bytes: u64,
    pub max_lag_seconds: f64,
}

/// A request's destination before a replica is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Primary(Reason),
    /// A replica that has replayed the session's causal LSN (any within
    /// max lag if it has none), or, when `any_replica`, any healthy
    /// replica at all (a hint). Which one is `pick_replica`'s choice, made
    /// with the causal LSN read then.
    Replica {
        any_replica: bool,
        read_only_block: bool,
    },
}

/// What routing needs to know of the session a unit comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionView {
    /// Holds state only its server has (LISTEN, temp table...).
    pub pinned: bool,
    /// Its transactions are SERIALIZABLE by default (setting, role or
    /// database default, or learned from a replica's refusal).
    pub serializable: bool,
    /// `default_transaction_read_only` is on: a plain `BEGIN` opens a
    /// read-only block.
    pub read_only_blocks: bool,
}

impl SessionView {
    /// Whether a block the unit opens is read-only, and so may run on a
    /// replica: declared so, or by the session's default.
    pub fn opens_read_only_block(&self, facts: &UnitFacts) -> bool {
        let declared = facts.begins_read_only();
        let by_default = self.read_only_blocks
            && facts.begin.is_some()
            && !facts.read_write
            && !facts.serializable
            && !facts.ends_tx
            && facts.write_reason.is_none()
            && facts.effects.is_empty();
        (declared || by_default) && !self.serializable
    }
}

/// Routes a unit that starts at rest (no transaction open, not pinned to a
/// server by an open batch).
pub fn decide(facts: &UnitFacts, session: &SessionView) -> Decision {
    if session.pinned || !facts.pins.is_empty() {
        return Decision::Primary(Reason::Pinned);
    }
    match facts.hint {
        Some(facts::Hint::Primary) => return Decision::Primary(Reason::Hint),
        Some(facts::Hint::Replica) if facts.is_read() && !session.serializable => {
            return Decision::Replica {
                any_replica: true,
                read_only_block: false,
            }
        }
        _ => {}
    }
    if session.opens_read_only_block(facts) {
        return Decision::Replica {
            any_replica: false,
            read_only_block: true,
        };
    }
    if facts.is_read() {
        if session.serializable {
            return Decision::Primary(Reason::Serializable);
        }
        return Decision::Replica {
            any_replica: false,
            read_only_block: false,
        };
    }
    if facts.begin.is_some()
        && (facts.serializable || session.serializable)
        && facts.write_reason.is_none()
    {
        Decision::Primary(Reason::Serializable)
    } else if facts.begin.is_some() || facts.ends_tx || facts.set_tx_read_only {
        Decision::Primary(Reason::Transaction)
    } else if facts.write_reason.is_none() {
        Decision::Primary(Reason::Session)
    } else {
        Decision::Primary(Reason::Write)
    }
}

/// Picks a replica that may serve a read: the session's own while it
/// qualifies, else one of those that do. `home` numbers the session
/// (sessions get consecutive numbers): replica `home % replicas` is its own,
/// so sessions spread over the replicas while each keeps to one. Keeping to
/// one reuses the same server connection and spares the proxy cross-CPU
/// wake-ups of alternating backends (measured: round-robin per read added
/// 30 us per read at `-c 1`), and the session's reads never go back in time
/// from one replica to a less advanced one while its own qualifies.
pub fn pick_replica(
    positions: &Positions,
    causal: Option<Lsn>,
    any_replica: bool,
    policy: &Policy,
    home: usize,
) -> Option<(usize, Reason)> {
    let eligible = |r: &crate::replicas::ReplicaStatus| {
        positions.serves(r)
            && (any_replica
                || match causal {
                    Some(lsn) => r.replayed >= lsn,
                    None => {
                        r.lag_bytes <= policy.max_lag_bytes
                            && r.lag_seconds <= policy.max_lag_seconds
                    }
                })
    };
    let own = home % positions.replicas.len().max(1);
    let index = match positions.replicas.get(own) {
        Some(r) if eligible(r) => own,
        _ => {
            let count = positions.replicas.iter().filter(|r| eligible(r)).count();
            if count == 0 {
                return None;
            }
            positions
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| eligible(r))
                .nth(home % count)
                .map(|(i, _)| i)?
        }
    };
    let reason = match (any_replica, causal) {
        (true, _) => Reason::Hint,
        (false, Some(_)) => Reason::Fresh,
        (false, None) => Reason::WithinLag,
    };
    Some((index, reason))
}

/// Whether any replica could serve a read at all, fresh or not.
pub fn any_healthy(positions: &Positions) -> bool {
    positions.replicas.iter().any(|r| positions.serves(r))
}

/// How long a replica may sit behind without replaying before reads stop
/// waiting for it.
pub const STALL: Duration = Duration::from_millis(500);

/// Whether waiting could help: some healthy replica is replaying.
pub fn worth_waiting(positions: &Positions, now: std::time::Instant) -> bool {
    positions
        .replicas
        .iter()
        .any(|r| positions.serves(r) && !r.stalled(now, STALL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicas::ReplicaStatus;

    #[test]
    fn reason_all_is_indexed_by_the_reason() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.as_str());
        }
    }

    fn replica(name: &str, healthy: bool, replayed: u64, lag_bytes: u64) -> ReplicaStatus {
        ReplicaStatus {
            name: name.into(),
            address: String::new(),
            healthy,
            replayed: Lsn(replayed),
            lag_bytes,
            lag_seconds: 0.0,
            polled_at: None,
            behind_since: None,
            advanced_at: None,
            last_error: None,
            promoted: false,
            timeline: None,
            since: None,
        }
    }

    #[test]
    fn the_primary_is_whoever_is_out_of_recovery() {
        use crate::replicas::WriteTarget;
        let mut p = positions(vec![
            replica("r0", true, 100, 0),
            replica("r1", true, 100, 0),
        ]);
        assert_eq!(p.write_target(), WriteTarget::Configured);
        p.replicas[1].promoted = true;
        assert_eq!(p.write_target(), WriteTarget::SplitBrain, "both claim it");
        p.primary_healthy = false;
        assert_eq!(p.write_target(), WriteTarget::Promoted(1));
        p.replicas[0].promoted = true;
        assert_eq!(p.write_target(), WriteTarget::SplitBrain, "two promoted");
        p.replicas[0].promoted = false;
        p.replicas[1].promoted = false;
        assert_eq!(
            p.write_target(),
            WriteTarget::Configured,
            "no primary anywhere: try the configured one"
        );
        p.primary_in_recovery = true;
        assert_eq!(
            p.write_target(),
            WriteTarget::Nowhere,
            "the configured one is a standby: no writes at all"
        );
        p.replicas[0].promoted = true;
        assert_eq!(p.write_target(), WriteTarget::Promoted(0));
    }

    fn policy() -> Policy {
        Policy {
            on_stale: OnStale::Wait,
            max_wait: Duration::from_millis(50),
            max_lag_bytes: 1000,
            max_lag_seconds: 1.0,
        }
    }

    fn positions(replicas: Vec<ReplicaStatus>) -> Positions {
        Positions {
            primary_lsn: Lsn(500),
            primary_healthy: true,
            primary_in_recovery: false,
            primary_timeline: None,
            primary_since: None,
            replicas,
            history: Default::default(),
        }
    }

    #[test]
    fn only_replicas_past_the_causal_lsn_qualify() {
        let p = positions(vec![
            replica("r0", true, 100, 400),
            replica("r1", true, 300, 200),
        ]);
        for spread in 0..4 {
            assert_eq!(
                pick_replica(&p, Some(Lsn(200)), false, &policy(), spread),
                Some((1, Reason::Fresh))
            );
        }
        assert_eq!(pick_replica(&p, Some(Lsn(301)), false, &policy(), 0), None);
        assert_eq!(
            pick_replica(&p, Some(Lsn(300)), false, &policy(), 0),
            Some((1, Reason::Fresh))
        );
    }

    #[test]
    fn sessions_spread_over_every_fresh_replica() {
        let p = positions(vec![
            replica("r0", true, 500, 0),
            replica("r1", true, 500, 0),
        ]);
        let picked: Vec<_> = (0..4)
            .filter_map(|s| pick_replica(&p, Some(Lsn(10)), false, &policy(), s))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(picked, vec![0, 1, 0, 1]);
    }

    #[test]
    fn a_session_keeps_to_its_replica_while_it_qualifies() {
        let mut p = positions(vec![
            replica("r0", true, 500, 0),
            replica("r1", true, 500, 0),
            replica("r2", true, 500, 0),
        ]);
        for _ in 0..3 {
            assert_eq!(
                pick_replica(&p, Some(Lsn(10)), false, &policy(), 4),
                Some((1, Reason::Fresh))
            );
        }
        // Its own falls behind: another fresh one, until it catches up.
        p.replicas[1].replayed = Lsn(5);
        let moved = pick_replica(&p, Some(Lsn(10)), false, &policy(), 4);
        assert!(matches!(moved, Some((0 | 2, Reason::Fresh))), "{moved:?}");
        p.replicas[1].replayed = Lsn(20);
        assert_eq!(
            pick_replica(&p, Some(Lsn(10)), false, &policy(), 4),
            Some((1, Reason::Fresh))
        );
    }

    #[test]
    fn unhealthy_replicas_never_qualify() {
        let p = positions(vec![
            replica("r0", false, 900, 0),
            replica("r1", true, 10, 490),
        ]);
        assert_eq!(pick_replica(&p, Some(Lsn(100)), false, &policy(), 0), None);
        assert_eq!(
            pick_replica(&p, None, true, &policy(), 0),
            Some((1, Reason::Hint))
        );
    }

    #[test]
    fn sessions_that_never_wrote_use_max_lag() {
        let p = positions(vec![
            replica("r0", true, 0, 5000),
            replica("r1", true, 400, 100),
        ]);
        assert_eq!(
            pick_replica(&p, None, false, &policy(), 0),
            Some((1, Reason::WithinLag))
        );
        let far = positions(vec![replica("r0", true, 0, 5000)]);
        assert_eq!(pick_replica(&far, None, false, &policy(), 0), None);
    }

    #[test]
    fn paused_replicas_are_not_waited_for() {
        let now = std::time::Instant::now();
        let long_ago = now - Duration::from_secs(5);
        let mut paused = replica("r0", true, 100, 400);
        paused.behind_since = Some(long_ago);
        paused.advanced_at = Some(long_ago);
        assert!(!worth_waiting(&positions(vec![paused.clone()]), now));
        // Just fell behind after a quiet spell: worth a wait.
        let mut fresh_write = paused.clone();
        fresh_write.behind_since = Some(now);
        assert!(worth_waiting(&positions(vec![fresh_write]), now));
        // Behind for long but replaying: worth a wait.
        let mut replaying = paused;
        replaying.advanced_at = Some(now);
        assert!(worth_waiting(&positions(vec![replaying]), now));
    }

    fn session() -> SessionView {
        SessionView::default()
    }

    #[test]
    fn decisions_follow_the_facts() {
        let read = UnitFacts::read();
        assert_eq!(
            decide(&read, &session()),
            Decision::Replica {
                any_replica: false,
                read_only_block: false
            }
        );
        let pinned = SessionView {
            pinned: true,
            ..SessionView::default()
        };
        assert_eq!(decide(&read, &pinned), Decision::Primary(Reason::Pinned));
        let write = UnitFacts::write("insert");
        assert_eq!(decide(&write, &session()), Decision::Primary(Reason::Write));
        let mut hinted = UnitFacts::write("insert");
        hinted.hint = Some(facts::Hint::Replica);
        assert_eq!(
            decide(&hinted, &session()),
            Decision::Primary(Reason::Write)
        );
        let mut hinted = UnitFacts::read();
        hinted.hint = Some(facts::Hint::Primary);
        assert_eq!(decide(&hinted, &session()), Decision::Primary(Reason::Hint));
    }

    #[test]
    fn serializable_never_reaches_a_replica() {
        let serializable = SessionView {
            serializable: true,
            ..SessionView::default()
        };
        let read = UnitFacts::read();
        assert_eq!(
            decide(&read, &serializable),
            Decision::Primary(Reason::Serializable)
        );
        let mut hinted = UnitFacts::read();
        hinted.hint = Some(facts::Hint::Replica);
        assert_eq!(
            decide(&hinted, &serializable),
            Decision::Primary(Reason::Serializable)
        );
        let begin = facts::from_sql("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", &[]);
        assert_eq!(
            decide(&begin, &session()),
            Decision::Primary(Reason::Serializable)
        );
        let begin = facts::from_sql("BEGIN READ ONLY", &[]);
        assert_eq!(
            decide(&begin, &serializable),
            Decision::Primary(Reason::Serializable)
        );
        let begin = facts::from_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", &[]);
        assert!(matches!(
            decide(&begin, &session()),
            Decision::Replica {
                read_only_block: true,
                ..
            }
        ));
    }

    #[test]
    fn read_only_sessions_open_read_only_blocks() {
        let read_only = SessionView {
            read_only_blocks: true,
            ..SessionView::default()
        };
        for sql in [
            "BEGIN ISOLATION LEVEL READ COMMITTED",
            "START TRANSACTION",
            "BEGIN",
        ] {
            let facts = facts::from_sql(sql, &[]);
            assert!(read_only.opens_read_only_block(&facts), "{sql}");
            assert!(!session().opens_read_only_block(&facts), "{sql}");
        }
        for sql in [
            "BEGIN READ WRITE",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "BEGIN; INSERT INTO t VALUES (1)",
        ] {
            let facts = facts::from_sql(sql, &[]);
            assert!(!read_only.opens_read_only_block(&facts), "{sql}");
        }
    }
}
