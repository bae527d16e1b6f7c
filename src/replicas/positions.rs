//! What the monitor knows of the servers, as plain data: each replica's
//! position and health, the write target, and the timeline history that
//! carries causal LSNs across promotions. Pure: tested with plain values.

use std::time::Instant;

use crate::lsn::Lsn;

/// What the proxy last knew of one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    pub name: String,
    pub address: String,
    /// Answering, and still in recovery (a promoted replica is no replica).
    pub healthy: bool,
    pub replayed: Lsn,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub polled_at: Option<Instant>,
    /// When it last fell behind the primary; `None` while caught up.
    pub behind_since: Option<Instant>,
    /// When its replayed position last moved.
    pub advanced_at: Option<Instant>,
    pub last_error: Option<String>,
    /// Answering and out of recovery: promoted, a primary now.
    pub promoted: bool,
    /// The timeline it follows (its WAL receiver's; else its last
    /// restartpoint's), or, promoted, the one it writes.
    pub timeline: Option<u32>,
    /// Promoted: where its own history provably holds everything before
    /// (see [`Positions::primary_since`]).
    pub since: Option<Lsn>,
}

impl ReplicaStatus {
    /// Behind for a while and not replaying: paused, or stuck. Waiting for
    /// it to catch up within a read's patience is pointless.
    pub fn stalled(&self, now: Instant, patience: std::time::Duration) -> bool {
        let behind_long = self
            .behind_since
            .is_some_and(|since| now.duration_since(since) > patience);
        let still = self
            .advanced_at
            .is_none_or(|at| now.duration_since(at) > patience);
        behind_long && still
    }
}

/// Everything the router needs to choose a replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Positions {
    pub primary_lsn: Lsn,
    /// The configured primary answers and is not in recovery.
    pub primary_healthy: bool,
    /// The configured primary last answered in recovery: a standby now,
    /// where no write may go.
    pub primary_in_recovery: bool,
    /// The timeline the configured primary writes, while it is one.
    pub primary_timeline: Option<u32>,
    /// The configured primary's `pg_last_wal_replay_lsn()`: the end of
    /// the WAL it replayed before taking writes (where its timeline began,
    /// if it was promoted), else its position when polled.
    pub primary_since: Option<Lsn>,
    pub replicas: Vec<ReplicaStatus>,
    /// The timeline writes go to, and the switches seen since start-up.
    pub history: History,
}

/// The write target's timeline as the proxy has followed it.
///
/// A causal LSN is only meaningful on the timeline it was written on.
/// When a promotion starts a new timeline, a write acknowledged on the old
/// one is in the new history only if it ended before the fork; a replica
/// of the new timeline that has replayed past the fork holds every write
/// that survived. So each switch keeps a bound, and an LSN of an earlier
/// epoch is carried into the current one as at most that bound: reads
/// never wait for a position the old timeline reached but the new one
/// never will, and never miss a write that survived.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The write target's timeline; `None` until first seen.
    pub timeline: Option<u32>,
    /// One per switch seen: the new primary's fork point (or, when it
    /// cannot say, its position when first seen, which is past it).
    bounds: Vec<Lsn>,
    /// The timeline of each epoch: the first seen, then one per switch.
    timelines: Vec<u32>,
}

impl History {
    /// How many timeline switches this proxy has seen: the epoch a commit
    /// LSN is tagged with.
    pub fn epoch(&self) -> u32 {
        u32::try_from(self.bounds.len()).unwrap_or(u32::MAX)
    }

    /// The timeline writes of `epoch` went to, if known.
    pub fn timeline_of(&self, epoch: u32) -> Option<u32> {
        self.timelines.get(epoch as usize).copied()
    }

    /// The epoch of a write made on `timeline` (as another proxy names it,
    /// through a shared store): the last epoch on that timeline or before;
    /// a timeline older than any seen is of the first epoch.
    pub fn epoch_of(&self, timeline: u32) -> u32 {
        let later = self.timelines.iter().filter(|&&t| t > timeline).count();
        let epochs = self.timelines.len().max(1);
        u32::try_from(epochs.saturating_sub(later).saturating_sub(1)).unwrap_or(0)
    }

    /// The LSN a replica of the current timeline must have replayed to
    /// hold a write acknowledged at `lsn` during `epoch`.
    pub fn carry(&self, lsn: Lsn, epoch: u32) -> Lsn {
        self.bounds
            .iter()
            .skip(epoch as usize)
            .fold(lsn, |carried, bound| carried.min(*bound))
    }

    /// Notes the write target's `timeline`; a different one than before
    /// is a switch, bounded by `since`. Returns whether it was one.
    fn follow(&mut self, timeline: u32, since: Lsn) -> bool {
        match self.timeline {
            Some(known) if known == timeline => false,
            None => {
                self.timeline = Some(timeline);
                self.timelines.push(timeline);
                false
            }
            Some(known) => {
                tracing::warn!(from = known, to = timeline, fork = %since, "the primary is on a new timeline: writes acknowledged past the fork may be lost; replicas not on the new timeline get no reads");
                self.bounds.push(since);
                self.timelines.push(timeline);
                self.timeline = Some(timeline);
                crate::metrics::timeline_switch(timeline);
                true
            }
        }
    }
}

/// A causal LSN and the epoch (timeline switches seen) it was written in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    pub lsn: Lsn,
    pub epoch: u32,
}

impl Mark {
    /// The later of two marks: one of a later epoch holds everything an
    /// earlier one carries into it (it was written on the new timeline,
    /// past the fork); within an epoch, the higher LSN.
    pub fn max(self, other: Mark) -> Mark {
        if (other.epoch, other.lsn) > (self.epoch, self.lsn) {
            other
        } else {
            self
        }
    }
}

/// Where writes go, as the servers' own answers say: the primary is
/// whichever server is not in recovery (libpq's `target_session_attrs =
/// read-write`); `[primary]` in the config is only where to look first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget {
    /// The configured primary.
    Configured,
    /// Replica `i`, promoted while the configured primary is gone or in
    /// recovery itself.
    Promoted(usize),
    /// Two servers say they are the primary: writes are refused until one
    /// of them is in recovery again (or gone), never sent to both.
    SplitBrain,
    /// No server says it is the primary: the configured one is a standby
    /// now and no replica is out of recovery.
    Nowhere,
}

impl WriteTarget {
    /// Why writes have nowhere to go, if they have not.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            WriteTarget::SplitBrain => Some("two servers claim to be the primary; writes are refused until one of them is in recovery again"),
            WriteTarget::Nowhere => Some("no server is the primary now: the configured primary is in recovery and no replica has been promoted"),
            WriteTarget::Configured | WriteTarget::Promoted(_) => None,
        }
    }
}

impl Positions {
    /// Whether replica `r` may serve reads now: healthy, and on the
    /// timeline writes go to (a replica left on an old one holds a history
    /// the primary no longer has, and misses everything written since).
    pub fn serves(&self, r: &ReplicaStatus) -> bool {
        r.healthy
            && match (r.timeline, self.history.timeline) {
                (Some(theirs), Some(ours)) => theirs == ours,
                _ => true,
            }
    }

    /// `mark` carried into the current timeline (see [`History`]).
    pub fn carry(&self, mark: Mark) -> Lsn {
        self.history.carry(mark.lsn, mark.epoch)
    }

    /// Follows the write target's timeline after an update. Returns
    /// whether it switched.
    pub(super) fn follow_timeline(&mut self) -> bool {
        let (timeline, since) = match self.write_target() {
            WriteTarget::Configured if self.primary_healthy => {
                (self.primary_timeline, self.primary_since)
            }
            WriteTarget::Promoted(i) => match self.replicas.get(i) {
                Some(r) => (r.timeline, r.since),
                None => return false,
            },
            _ => return false,
        };
        match (timeline, since) {
            (Some(timeline), Some(since)) => self.history.follow(timeline, since),
            _ => false,
        }
    }

    /// Some server takes writes now: the configured primary, or one
    /// promoted replica.
    pub fn has_primary(&self) -> bool {
        match self.write_target() {
            WriteTarget::Configured => self.primary_healthy,
            WriteTarget::Promoted(_) => true,
            WriteTarget::SplitBrain | WriteTarget::Nowhere => false,
        }
    }

    pub fn write_target(&self) -> WriteTarget {
        let promoted: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.replicas[i].promoted)
            .collect();
        match (self.primary_healthy, promoted.as_slice()) {
            (_, []) if self.primary_in_recovery => WriteTarget::Nowhere,
            (_, []) => WriteTarget::Configured,
            (false, [only]) => WriteTarget::Promoted(*only),
            _ => WriteTarget::SplitBrain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(lsn: u64, epoch: u32) -> Mark {
        Mark {
            lsn: Lsn(lsn),
            epoch,
        }
    }

    #[test]
    fn a_write_of_an_old_timeline_is_carried_by_the_fork() {
        let mut history = History::default();
        assert!(!history.follow(1, Lsn(10)), "the first timeline seen");
        assert_eq!(history.epoch(), 0);
        assert!(history.follow(2, Lsn(500)), "a promotion forked at 500");
        assert_eq!(history.epoch(), 1);
        assert!(!history.follow(2, Lsn(900)), "the same timeline again");
        // Written before the fork: it survived, at its own LSN.
        assert_eq!(history.carry(Lsn(400), 0), Lsn(400));
        // Past the fork: it did not survive, and no replica of the new
        // timeline should be waited for beyond the fork.
        assert_eq!(history.carry(Lsn(700), 0), Lsn(500));
        // Written on the new timeline: as it is.
        assert_eq!(history.carry(Lsn(700), 1), Lsn(700));
        assert!(history.follow(3, Lsn(600)));
        assert_eq!(history.carry(Lsn(700), 0), Lsn(500), "the lowest fork");
        assert_eq!(history.carry(Lsn(700), 1), Lsn(600));
        // Timelines as another proxy names them, back to epochs.
        assert_eq!(history.timeline_of(1), Some(2));
        assert_eq!(
            (1..=4).map(|t| history.epoch_of(t)).collect::<Vec<_>>(),
            vec![0, 1, 2, 2]
        );
        assert_eq!(History::default().epoch_of(7), 0);
    }

    #[test]
    fn a_later_epoch_outranks_a_higher_lsn() {
        assert_eq!(mark(900, 0).max(mark(600, 1)), mark(600, 1));
        assert_eq!(mark(600, 1).max(mark(900, 0)), mark(600, 1));
        assert_eq!(mark(600, 1).max(mark(700, 1)), mark(700, 1));
    }

    fn status(name: &str, healthy: bool, timeline: Option<u32>) -> ReplicaStatus {
        ReplicaStatus {
            name: name.into(),
            address: String::new(),
            healthy,
            replayed: Lsn(100),
            lag_bytes: 0,
            lag_seconds: 0.0,
            polled_at: None,
            behind_since: None,
            advanced_at: None,
            last_error: None,
            promoted: false,
            timeline,
            since: None,
        }
    }

    #[test]
    fn a_promotion_switches_the_timeline_and_drops_replicas_left_behind() {
        let mut p = Positions {
            primary_lsn: Lsn(1000),
            primary_healthy: true,
            primary_in_recovery: false,
            primary_timeline: Some(1),
            primary_since: Some(Lsn(1000)),
            replicas: vec![status("r0", true, Some(1)), status("r1", true, Some(1))],
            history: History::default(),
        };
        assert!(!p.follow_timeline());
        assert_eq!(p.history.timeline, Some(1));
        assert!(p.replicas.iter().all(|r| p.serves(r)));
        // r1 is promoted at 800 and the old primary is gone.
        p.primary_healthy = false;
        p.replicas[1].promoted = true;
        p.replicas[1].healthy = false;
        p.replicas[1].timeline = Some(2);
        p.replicas[1].since = Some(Lsn(800));
        assert!(p.follow_timeline());
        assert_eq!(p.history.timeline, Some(2));
        assert_eq!(p.carry(mark(950, 0)), Lsn(800));
        assert!(!p.serves(&p.replicas[0]), "r0 still follows timeline 1");
        p.replicas[0].timeline = Some(2);
        assert!(p.serves(&p.replicas[0]), "r0 follows the new primary");
        // A replica whose timeline is unknown is not held back by it.
        assert!(p.serves(&status("r2", true, None)));
        assert!(!p.serves(&status("r3", false, Some(2))));
    }
}
